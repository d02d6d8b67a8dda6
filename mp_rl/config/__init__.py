"""Run configuration: YAML (safe_load) -> nested frozen pydantic models (`schema`), with `a.b=value`
overrides and one-line errors (`loading`). The resolved config (`dump_config`) is what a run folder keeps.
"""

from mp_rl.config.loading import apply_override, dump_config, load_config
from mp_rl.config.schema import (
    ActorsConfig,
    Config,
    ConfigError,
    EnvConfig,
    EvalConfig,
    LearnerConfig,
    LoggingConfig,
    MonitorConfig,
    ReplayConfig,
    RunConfig,
)

__all__ = [
    "ActorsConfig",
    "Config",
    "ConfigError",
    "EnvConfig",
    "EvalConfig",
    "LearnerConfig",
    "LoggingConfig",
    "MonitorConfig",
    "ReplayConfig",
    "RunConfig",
    "apply_override",
    "dump_config",
    "load_config",
]
