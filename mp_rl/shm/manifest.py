"""`manifest.json`: the segments of a run and their layouts, so any process can attach from the run folder.

`SharedRun.create` (the supervisor) makes the three segments and writes the manifest atomically;
`SharedRun.attach(run_dir)` (an actor started by hand, a tool) needs nothing but the folder.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from mp_rl.files import write_json_atomic
from mp_rl.knobs import Knobs
from mp_rl.runfolder import CONFIG, MANIFEST
from mp_rl.shm.board import WeightBoard
from mp_rl.shm.control import ControlBlock
from mp_rl.shm.ring import ReplayRing, RingSpec
from mp_rl.shm.ringspec import numeric_dtype
from mp_rl.shm.segment import PREFIX, TAG_HEX, Layout, SegmentError, SegmentExists
from mp_rl.shm.sync import RateLimit, RateLimitError


class AttachError(RuntimeError):
    """A run folder cannot be attached to; the message is one line saying why."""


CLASH_TRIES = 3  # random names tried before a start gives up


def _tag() -> str:
    """The random part of a start's segment names (32 bits: not for another user to guess)."""
    return secrets.token_hex(TAG_HEX // 2)


def segment_name(run_id: str, part: str) -> str:
    return f"{PREFIX}{re.sub(r'[^A-Za-z0-9_-]', '_', run_id)}.{part}"


def read_manifest(run_dir: str | os.PathLike) -> dict:
    """The manifest of a run folder, every field type-checked; AttachError (one line) otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AttachError(f"run folder {run_dir} does not exist")
    path = run_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise AttachError(f"{run_dir} has no {MANIFEST}: not an mp_rl run folder, or the run never started") from None
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AttachError(f"{path} cannot be read: {str(exc)[:120]}") from None
    try:
        return _checked(manifest)
    except (KeyError, TypeError, ValueError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)[:160]
        raise AttachError(f"{path} is damaged: {what}") from None


def _checked(m: object) -> dict:
    """Types of every field a reader relies on; layouts recomputed and compared with the recorded ones."""
    _want(m, dict, "the manifest")
    for key, kind in (("run_id", str), ("owner_pid", int), ("owner_started", (int, float)), ("owner_uid", int),
                      ("info", dict), ("segments", dict)):  # fmt: skip
        _want(m[key], kind, key)
    seg, info = m["segments"], m["info"]
    for part in ("ring", "board", "control"):
        _want(seg[part], dict, f"segments.{part}")
        _want(seg[part]["segment"], str, f"segments.{part}.segment")
    spec = RingSpec.from_json(_want(seg["ring"]["spec"], dict, "segments.ring.spec"))
    _rate_limit(seg["ring"]["limit"])
    _same_layout(seg["ring"], spec.layout(), "ring")
    _want(seg["board"]["numel"], int, "segments.board.numel")
    _same_layout(seg["board"], WeightBoard.layout_for(seg["board"]["numel"]), "board")
    members = _want(seg["control"]["max_members"], int, "segments.control.max_members")
    if not 1 <= members <= 65536 or not 1 <= seg["board"]["numel"] <= 2**34:
        raise ValueError("max_members or numel out of range")
    env = _want(info.get("env", {}), dict, "info.env")
    if env:
        _want(env["n_actions"], int, "info.env.n_actions")
        numeric_dtype(env["obs_dtype"])
        if not all(isinstance(d, int) and d > 0 for d in _want(env["obs_shape"], list, "info.env.obs_shape")):
            raise ValueError("info.env.obs_shape must be a list of positive integers")
        scale = env.get("obs_scale")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale <= 1e6:
            raise ValueError("info.env.obs_scale must be a positive number")
    _want(info.get("config", ""), str, "info.config")
    if "knobs" in info:  # the learner and the monitor take their bounds from here
        Knobs.from_json(info["knobs"])
    return m


def _want(value, kind, what: str):
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{what} has the wrong type ({type(value).__name__})")
    return value


def _rate_limit(d: object) -> RateLimit:
    _want(d, dict, "segments.ring.limit")
    for key in ("min_fill", "block", "max_batch"):
        _want(d[key], int, f"segments.ring.limit.{key}")
    _want(d["error_buffer"], (int, float), "segments.ring.limit.error_buffer")
    if d["samples_per_insert"] is not None:
        _want(d["samples_per_insert"], (int, float), "segments.ring.limit.samples_per_insert")
    try:
        return RateLimit(**d)
    except (TypeError, RateLimitError) as exc:
        raise ValueError(f"segments.ring.limit: {exc}") from None


def _same_layout(entry: dict, expected: Layout, part: str) -> None:
    """A layout is recomputed from the spec, never trusted: a mismatch means every offset would be wrong."""
    if entry.get("layout") != expected.to_json():
        raise ValueError(f"segments.{part}.layout does not match the layout its spec gives")


def owner_alive(manifest: dict) -> bool:
    """Is the process that created these segments still the same live process?"""
    try:
        proc = psutil.Process(int(manifest["owner_pid"]))
        return abs(proc.create_time() - float(manifest["owner_started"])) < 1.0
    except (psutil.Error, KeyError, ValueError):
        return False


@dataclass
class SharedRun:
    """The shared segments of one run: ring, weight board, control block."""

    run_id: str
    ring: ReplayRing
    board: WeightBoard
    control: ControlBlock
    owner: bool
    info: dict = field(default_factory=dict)  # what else the run records (env spec, config path)
    run_dir: Path | None = None  # the run folder, absolute: every path the run records resolves from it

    @property
    def config_path(self) -> Path:
        """The run's config.yaml. Recorded relative to the run folder, so it resolves from any directory."""
        return self.run_dir / self.info.get("config", CONFIG)

    @classmethod
    def create(
        cls, run_dir: Path, run_id: str, spec: RingSpec, limit: RateLimit, numel: int, max_members: int,
        capacity: int | None = None, info: dict | None = None,
    ) -> SharedRun:  # fmt: skip
        """Make the run's segments, named `mp_rl.<run_id>-<random>.<part>` (the manifest records the
        names): a name another local user pre-created costs a retry under a new random part, not the start."""
        for _ in range(CLASH_TRIES):
            try:
                return cls._create(
                    run_dir, run_id, f"{run_id}-{_tag()}", spec, limit, numel, max_members, capacity, info
                )
            except SegmentExists as exc:
                taken = exc
        raise SegmentError(
            f"could not create this run's shared memory: {CLASH_TRIES} random names were taken ({taken})"
        )

    @classmethod
    def _create(
        cls, run_dir: Path, run_id: str, names: str, spec: RingSpec, limit: RateLimit, numel: int, max_members: int,
        capacity: int | None, info: dict | None,
    ) -> SharedRun:  # fmt: skip
        made: list = []
        try:
            # The control block first: it names the owner, so cleanup never takes a run that is
            # still being created for a dead one.
            control = ControlBlock.create(segment_name(names, "control"), max_members)
            made.append(control)
            made.append(ReplayRing.create(segment_name(names, "ring"), spec, limit, capacity))
            made.append(WeightBoard.create(segment_name(names, "board"), numel))
            run = cls(run_id, made[1], made[2], control, owner=True, info=info or {}, run_dir=Path(run_dir).resolve())
            run.write_manifest(Path(run_dir))
            return run
        except BaseException:
            for part in made:  # nothing half-made survives a failed start
                part.destroy()
            raise

    def write_manifest(self, run_dir: Path) -> None:
        me = psutil.Process()
        manifest = {
            "run_id": self.run_id,
            "owner_pid": me.pid,
            "owner_started": me.create_time(),
            "owner_uid": os.getuid(),
            "created": time.time(),
            "info": self.info,
            "segments": {
                "ring": {**self.ring.describe(), "layout": self.ring.layout.to_json()},
                "board": {**self.board.describe(), "layout": self.board.layout.to_json()},
                "control": {**self.control.describe()},
            },
        }
        write_json_atomic(run_dir / MANIFEST, manifest)

    @classmethod
    def attach(cls, run_dir: str | os.PathLike) -> SharedRun:
        manifest = read_manifest(run_dir)
        if manifest["owner_uid"] != os.getuid():
            raise AttachError(f"run {manifest['run_id']} belongs to another user")
        if not owner_alive(manifest):
            raise AttachError(f"run {manifest['run_id']} has ended (its supervisor is gone)")
        seg = manifest["segments"]
        made: list = []
        try:
            made.append(ReplayRing.from_manifest(seg["ring"]))
            made.append(WeightBoard.from_manifest(seg["board"]))
            made.append(ControlBlock.from_manifest(seg["control"]))
        except (SegmentError, KeyError, TypeError, ValueError) as exc:
            for part in made:
                part.close()
            raise AttachError(f"cannot attach to run {manifest['run_id']}: {exc}") from None
        info = manifest["info"]
        return cls(manifest["run_id"], *made, owner=False, info=info, run_dir=Path(run_dir).resolve())

    def close(self) -> None:
        """Unmap everything; the owner also unlinks every segment."""
        for part in (self.ring, self.board, self.control):
            part.destroy() if self.owner else part.close()

    def __enter__(self) -> SharedRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
