"""Run configuration: YAML (safe_load) -> nested frozen pydantic models, one description per field.

`load_config(path, ["learner.batch_size=128"])` applies `a.b=value` overrides (values parsed as
YAML, so `true`, `1e-3`, `[64, 64]` mean what they say) and raises `ConfigError` with one line
naming the key and what is wrong: unknown key (with the nearest valid one), wrong type, out of
range, missing file. The resolved config (`dump_config`) is what a run folder keeps.
"""

from __future__ import annotations

import difflib
import reprlib
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """Bad configuration input; str() is the one line to show the user."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


Auto = Literal["auto"]
Width = Annotated[int, Field(ge=1, le=65536)]  # one layer's units
Count = Annotated[int, Field(ge=0, le=10**9)]


class RunConfig(_Section):
    name: str = Field(
        "run", pattern=r"^[A-Za-z0-9_-]{1,40}$", description="Run name: folder suffix and process titles."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Base random seed; actor i uses seed + i.")
    runs_dir: str = Field("runs", description="Folder that holds one sub-folder per run.")
    total_env_steps: int = Field(1_000_000, ge=1, description="Stop after this many environment steps.")
    wall_time_s: float | None = Field(None, gt=0, description="Stop after this many seconds (null: no limit).")
    target_return: float | None = Field(None, description="Stop once the greedy evaluation mean reaches this.")
    serial: bool = Field(False, description="Run actor, learner and monitor in one process (debugging, tests).")
    autotune: bool = Field(
        False,
        description="Search envs per actor, actors and batch size for the most env steps/s at the start "
        "(cached per machine and config: a cached start only re-checks its point).",
    )
    pin_cpus: bool = Field(
        False, description="Pin the learner to the last usable CPU and actor i to CPU i of the rest (wrapping)."
    )
    save_replay: bool | None = Field(
        None,
        description="At a clean stop write the replay's live window into the run folder, for --resume "
        "(null: when it takes at most half the free disk).",
    )
    stop_deadline_s: float = Field(5.0, gt=0, description="Seconds for children to stop before terminate, then kill.")
    heartbeat_timeout_s: float = Field(30.0, gt=0, description="A member silent this long is hung: killed, restarted.")
    max_restarts: int = Field(
        5, ge=0, description="Restarts allowed per actor slot before the run stops with an error."
    )


# `env.register` is the name users expect; it shadows ABCMeta.register, which no config ever calls.
warnings.filterwarnings("ignore", message='Field name "register" in "EnvConfig" shadows', category=UserWarning)


class EnvConfig(_Section):
    id: str = Field(
        "CartPole-v1", min_length=1, max_length=200,
        description="Gymnasium id ('module:EnvId' imports module first), or 'module:Class'.",
    )  # fmt: skip
    kwargs: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], Any] = Field(
        default_factory=dict, max_length=64, description="Keyword arguments for the environment's constructor."
    )
    register: str | None = Field(
        None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="'package.module:function' called before the env is made (it registers ids).",
    )  # fmt: skip
    backend: Literal["gymnasium", "envpool"] = Field(
        "gymnasium",
        description="gymnasium: a vector env in the actor's process; envpool: EnvPool's C++ threads (the envpool "
        "extra; Atari and classic control), two pools per actor stepped alternately.",
    )
    envpool_threads: int = Field(1, ge=1, le=64, description="EnvPool threads per pool (an actor has two pools).")
    envs_per_actor: int = Field(8, ge=1, le=1024, description="Environments per actor, stepped as one vector env.")
    frame_stack: int = Field(4, ge=1, le=16, description="Frames stacked per observation (Atari ids only).")
    noop_max: int = Field(30, ge=0, le=1000, description="Up to this many no-op steps at each reset (Atari ids only).")
    max_episode_steps: int | None = Field(
        None, ge=1, description="Truncate episodes at this length (null: the env's own)."
    )


class ActorsConfig(_Section):
    count: int | Auto = Field(2, description="Actor processes: a number, or 'auto' for the monitor to choose.")
    initial_count: int | None = Field(
        None, ge=1, description="With count 'auto': actors to start with (null: what fits)."
    )
    max_count: int = Field(64, ge=1, le=4096, description="Upper bound on actors (clamped to usable CPUs).")
    eps_base: float = Field(
        0.4, ge=0, le=1, description="Ape-X epsilon base: explorer i of N uses eps ** (1 + alpha*i/(N-1))."
    )
    eps_alpha: float = Field(7.0, ge=0, description="Ape-X epsilon exponent spread.")
    eps_per: Literal["env", "actor"] = Field(
        "env", description="Who gets one Ape-X epsilon: every env of every actor (env), or each actor's envs together."
    )
    sync_every: int = Field(400, ge=1, description="Env steps between weight pickups from the board.")
    torch_threads: int = Field(
        1, ge=1, le=256, description="torch threads per actor (1: N actors do not oversubscribe)."
    )
    block: int = Field(64, ge=1, le=65536, description="Transitions per ring write (one atomic reservation each).")

    @model_validator(mode="after")
    def _count_range(self) -> ActorsConfig:
        if self.count != "auto" and not 1 <= self.count <= self.max_count:
            raise ValueError(f"count: must be 'auto' or 1..max_count ({self.max_count}), got {self.count}")
        return self


class ReplayConfig(_Section):
    capacity: int | Auto = Field(100_000, description="Live replay rows: a number, or 'auto' for the monitor.")
    initial_capacity: int | None = Field(
        None, ge=64, description="With capacity 'auto': rows to start with (null: a quarter of available memory)."
    )
    min_capacity: int = Field(10_000, ge=64, description="With capacity 'auto': the smallest the monitor may choose.")
    max_capacity: int = Field(
        1_000_000,
        ge=1024,
        le=10**9,
        description="Rows reserved up front (pages commit on first touch): the most the monitor may choose.",
    )
    min_fill: int = Field(1_000, ge=1, description="Rows in the ring before the learner samples.")
    samples_per_insert: float | None = Field(
        8.0, gt=0, description="Replay ratio held by the rate limiter (null: off)."
    )
    error_buffer: float | None = Field(
        None, gt=0, description="Rate limiter slack in samples (null: 4x the deadlock-free minimum)."
    )
    prioritized: bool = Field(False, description="Prioritized replay (Schaul et al.): draw rows by TD error.")
    alpha: float = Field(0.6, ge=0, le=1, description="Prioritized: how much priorities count (0: uniform).")
    beta0: float = Field(0.4, ge=0, le=1, description="Prioritized: importance-weight exponent at the start.")
    beta_steps: int = Field(
        100_000, ge=1, le=10**12, description="Prioritized: updates over which beta anneals linearly to 1."
    )
    priority_eps: float = Field(1e-6, gt=0, le=1, description="Prioritized: added to |TD error|, so none is 0.")
    frames_once: bool = Field(
        True, description="Store each frame of stacked observations once (about 1/7 of the memory for Atari)."
    )
    n_step: int = Field(3, ge=1, le=100, description="Steps in the n-step return.")
    gamma: float = Field(0.99, gt=0, le=1, description="Discount factor.")

    @model_validator(mode="after")
    def _capacity_range(self) -> ReplayConfig:
        if self.capacity != "auto" and not 1024 <= self.capacity <= self.max_capacity:
            raise ValueError(
                f"capacity: must be 'auto' or 1024..max_capacity ({self.max_capacity}), got {self.capacity}"
            )
        return self


class LearnerConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' picks CUDA when present.")
    batch_size: int | Auto = Field(64, description="Rows per update: 8..2048, or 'auto' for the monitor.")
    max_batch_size: int = Field(2048, ge=8, le=65536, description="Largest batch the monitor may choose.")
    initial_batch_size: int = Field(64, ge=8, le=65536, description="With batch_size 'auto': the batch to start with.")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate.")
    grad_clip: float = Field(10.0, gt=0, description="Gradient-norm clip.")
    target_update: int = Field(1000, ge=0, description="Hard target copy every N updates (0: Polyak with tau).")
    tau: float = Field(0.005, gt=0, le=1, description="Polyak rate when target_update is 0.")
    dueling: bool = Field(True, description="Dueling value/advantage head.")
    algo: Literal["dqn", "qr_dqn", "iqn"] = Field(
        "dqn",
        description="dqn: Double DQN; qr_dqn: quantile regression (Dabney et al. 2018); iqn: implicit quantiles "
        "(Dabney et al. 2018, sampled fractions, cosine embedding); all with Double DQN's action choice.",
    )
    n_quantiles: int = Field(
        50, ge=2, le=512, description="qr_dqn: quantiles of each action's return; iqn: fractions sampled per row."
    )
    iqn_merge: Literal["head", "hidden"] = Field(
        "head",
        description="iqn: where the fraction embedding multiplies in: the features the head reads (cheap: only the "
        "head runs per fraction), or those the last hidden layer reads (after a CNN's convolutions, as the paper).",
    )
    munchausen: bool = Field(
        False,
        description="Munchausen targets (Vieillard et al. 2020): a soft, entropy-regularised target plus the scaled "
        "log-policy of the action taken; for dqn, qr_dqn and iqn.",
    )
    munchausen_alpha: float = Field(0.9, ge=0, le=1, description="munchausen: the log-policy bonus's scale.")
    munchausen_tau: float = Field(0.03, gt=0, le=10, description="munchausen: the softmax policy's temperature.")
    munchausen_clip: float = Field(-1.0, lt=0, description="munchausen: the log-policy bonus's lower clip.")
    network: Literal["auto", "nature_cnn", "small_cnn", "impala_cnn", "mlp"] = Field(
        "auto",
        description="auto: Nature CNN for >= 36x36 images, small CNN for smaller ones, MLP for the rest; "
        "impala_cnn (by choice): the Impala ResNet with an adaptive max-pool, any image size.",
    )
    spectral_norm: bool = Field(
        False, description="impala_cnn: spectral normalization of the residual blocks' convolutions (as BTR)."
    )
    hidden: Annotated[tuple[Width, ...], Field(min_length=1, max_length=8)] | Auto = Field(
        (128, 128),
        description="MLP hidden sizes (vector observations), or 'auto': the largest the learner can update at the "
        "rate the replay ratio needs, from 1 x 16 up to 5 x 2048 (the plan says why).",
    )
    cnn_scale: Annotated[float, Field(ge=0.125, le=8)] | Auto = Field(
        1.0,
        description="Width multiplier of the CNNs' layers, or 'auto': chosen like hidden 'auto' (0.25 .. 4).",
    )
    grow: Literal["off", "auto"] = Field(
        "off",
        description="auto: the monitor widens the network (x2 a step, the learned function kept exactly) toward "
        "its kind's shipped size while memory allows, and beyond it while the learner waits for data; it narrows "
        "it under memory pressure and undoes a resize that cost throughput or learning; within 16..2048 units a "
        "layer, cnn_scale 0.25..4, and what the budget fits.",
    )
    amp: bool = Field(True, description="Mixed precision on CUDA (bf16 where supported, else fp16 + scaler).")
    amp_dtype: Literal["auto", "bfloat16", "float16"] = Field(
        "auto", description="With amp on CUDA: auto is bf16 where the GPU supports it, else fp16 with a loss scaler."
    )
    publish_every: int = Field(10, ge=1, description="Updates between weight publishes.")
    stats_every: int = Field(
        100, ge=1, description="Updates between reads of loss / mean Q / |TD| to the host (each one device sync)."
    )
    prefetch: bool = Field(True, description="Sample the next batch in a thread while the GPU trains.")
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = Field(
        "none",
        description="torch.compile the loss (forward and backward) with this mode; reduce-overhead also captures "
        "it in CUDA graphs on CUDA. Off by default: measure with benchmarks.learner first.",
    )

    @model_validator(mode="after")
    def _batch_range(self) -> LearnerConfig:
        if self.batch_size != "auto" and not 8 <= self.batch_size <= self.max_batch_size:
            raise ValueError(
                f"batch_size: must be 'auto' or 8..max_batch_size ({self.max_batch_size}), got {self.batch_size}"
            )
        if self.spectral_norm and self.network != "impala_cnn":
            raise ValueError(f"spectral_norm: only impala_cnn has it, and network is {self.network}")
        if self.grow == "auto" and self.network == "impala_cnn":
            # Its residual blocks add a stack's input to its output: not the chain of layers growth widens.
            raise ValueError("grow: auto widens chains of layers; impala_cnn's residual blocks are not one")
        return self


class EvalConfig(_Section):
    episodes: int = Field(20, ge=1, le=1000, description="Greedy episodes per evaluation.")
    every_s: float = Field(20.0, gt=0, description="Seconds between evaluations (run in the supervisor).")
    max_episode_steps: int = Field(
        27_000, ge=1, description="Steps after which an evaluation episode is cut (envs without a time limit)."
    )


class MonitorConfig(_Section):
    enabled: bool = Field(True, description="Run the resource monitor.")
    interval_s: float = Field(0.1, gt=0, le=60, description="Seconds between samples of the machine.")
    cooldown_s: float = Field(30.0, ge=0, description="Seconds between two moves of the knobs.")
    decide_every_s: float = Field(1.0, gt=0, le=600, description="Seconds between two rounds of decisions.")
    window_s: float = Field(3.0, gt=0, le=600, description="Seconds of history averaged for a decision.")
    history_s: float = Field(300.0, gt=0, description="Seconds of snapshots kept (trends).")
    bottleneck: float = Field(0.85, gt=0, le=1, description="A resource busier than this is a bottleneck.")
    potential: float = Field(0.70, gt=0, le=1, description="Busier than this: a potential bottleneck.")
    headroom: float = Field(0.50, gt=0, le=1, description="Less busy than this: room to grow.")
    starved: float = Field(0.20, ge=0, le=1, description="Learner waiting for data this share of time: starved.")
    blocked: float = Field(0.20, ge=0, le=1, description="Actors held by the rate limiter this share: blocked.")
    hysteresis: float = Field(0.05, ge=0, le=0.5, description="Margin a threshold needs to reverse a knob.")
    worse: float = Field(0.05, ge=0, le=1, description="Throughput drop after a move that undoes it.")


class LoggingConfig(_Section):
    status_every_s: float = Field(5.0, gt=0, description="Seconds between status lines.")
    checkpoint_every: int = Field(10_000, ge=1, description="Updates between checkpoints.")
    tensorboard: bool = Field(False, description="Also write TensorBoard events (needs tensorboard).")
    torch_profile: bool = Field(False, description="Profile the learner with torch.profiler (into <run>/profile).")
    torch_profile_schedule: tuple[Count, Count, Count] = Field(
        (100, 20, 50), description="torch.profiler window in updates: wait, warmup, active (then it stops)."
    )


class Config(_Section):
    run: RunConfig = RunConfig()
    env: EnvConfig = EnvConfig()
    actors: ActorsConfig = ActorsConfig()
    replay: ReplayConfig = ReplayConfig()
    learner: LearnerConfig = LearnerConfig()
    eval: EvalConfig = EvalConfig()
    monitor: MonitorConfig = MonitorConfig()
    logging: LoggingConfig = LoggingConfig()


def _model_at(path: tuple) -> type[BaseModel] | None:
    model: Any = Config
    for key in path:
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


_SHORT = reprlib.Repr()  # an alias bomb's value stays one short line (keyword arguments need Python 3.12)
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 2, 60, 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 4
_BRANCHES = ("int", "float", "literal['auto']", "function-after[_count_range()]")


def _where(err: dict) -> tuple:
    """The key an error is about: pydantic's location without its union-branch tags (`int`, `float`),
    except for the last part of an unknown key, which is what the user typed (it may be `int`)."""
    loc = err["loc"]
    keep_last = err["type"] == "extra_forbidden"
    return tuple(p for i, p in enumerate(loc)
                 if not _branch(p) or (keep_last and i == len(loc) - 1))  # fmt: skip


def _branch(part: object) -> bool:
    """A union-branch tag in pydantic's location (`int`, `tuple[constrained-int, ...]`), not a key."""
    return part in _BRANCHES or (isinstance(part, str) and part.startswith(("tuple[", "function-after[")))


def _one_line(exc: ValidationError) -> str:
    errors = exc.errors()
    locs = [_where(e) for e in errors]
    err, loc = errors[0], locs[0]
    key = ".".join(str(p) for p in loc) or "config"
    others = len(set(locs)) - 1
    more = f" (and {others} more)" if others else ""
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        near = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields) if parent else [], n=1)
        hint = f"; did you mean '{'.'.join(map(str, (*loc[:-1], near[0])))}'?" if near else ""
        return f"{key}: unknown key{hint}{more}"
    msg = err["msg"].removeprefix("Value error, ")
    if ":" in msg.split(" ")[0]:  # our validators name the field themselves
        return f"{'.'.join(map(str, loc))}.{msg}{more}" if loc else f"{msg}{more}"
    if sum(1 for other in locs if other == loc) > 1:  # a union such as int | 'auto': say both
        msg = "should be a number or 'auto'"
    got = "" if err["type"] == "missing" else f" (got {_SHORT.repr(err['input'])})"
    return f"{key}: {msg}{got}{more}"


def apply_override(raw: dict, override: str) -> None:
    """Apply one `a.b=value` override to the raw mapping (value parsed as YAML)."""
    key, sep, text = override.partition("=")
    parts = _renamed_key(key.strip().split("."))
    if not sep or not all(parts):
        raise ConfigError(f"override {override!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except (yaml.YAMLError, ValueError):  # not YAML (or a date that is no date): take it as a string
        value = text
    except RecursionError:
        raise ConfigError(f"override {key.strip()!r}: the value is nested too deeply") from None
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


# Keys spelled otherwise before each knob's triple read `<knob>`, `initial_<knob>`, `min_<knob>`,
# `max_<knob>`: a run folder's config.yaml from then still loads (for --resume and evaluate).
RENAMED = {("actors", "initial"): ("actors", "initial_count"), ("replay", "capacity_max"): ("replay", "max_capacity"),
           ("monitor", "capacity_min"): ("replay", "min_capacity")}  # fmt: skip


def _renamed(raw: dict) -> None:
    """A config file's old keys under their new names; ConfigError when it gives both spellings."""
    for (section, old), (new_section, new) in RENAMED.items():
        node = raw.get(section)
        if not isinstance(node, dict) or old not in node:
            continue
        target = raw.get(new_section)
        if target is None:
            target = raw[new_section] = {}
        if not isinstance(target, dict):
            continue  # the section's own error says what is wrong with it
        if new in target:
            raise ConfigError(f"{section}.{old} and {new_section}.{new}: the same key twice ({old} is its old name)")
        target[new] = node.pop(old)


def _renamed_key(parts: list[str]) -> list[str]:
    """An override's key under its new name (`replay.capacity_max=...` sets replay.max_capacity)."""
    return list(RENAMED.get(tuple(parts), parts)) if len(parts) == 2 else parts


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read, override and validate a config; raises ConfigError with one line on bad input."""
    raw: Any = {}
    if path is not None:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc.__class__.__name__}") from None
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where else ""
            raise ConfigError(f"config file {path} is not valid YAML{line}") from None
        except RecursionError:
            raise ConfigError(f"config file {path} is nested too deeply to be a config") from None
        except ValueError as exc:  # a scalar YAML cannot build, such as the date 2024-13-45
            raise ConfigError(f"config file {path} holds a value YAML cannot read: {str(exc)[:80]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path}: expected a mapping of sections, got {type(raw).__name__}")
    _renamed(raw)
    for override in overrides:
        apply_override(raw, override)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    except RecursionError:
        raise ConfigError("config: nested too deeply") from None


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what the run folder keeps; loads back to an equal Config)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
