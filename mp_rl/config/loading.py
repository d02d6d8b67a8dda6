"""YAML to a `Config`: `a.b=value` overrides, renamed keys, and every error as one line.

`load_config(path, ["learner.batch_size=128"])` applies `a.b=value` overrides (values parsed as
YAML, so `true`, `1e-3`, `[64, 64]` mean what they say) and raises `ConfigError` with one line
naming the key and what is wrong: unknown key (with the nearest valid one), wrong type, out of
range, missing file. The resolved config (`dump_config`) is what a run folder keeps.
"""

from __future__ import annotations

import difflib
import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mp_rl.config.schema import Config, ConfigError


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
