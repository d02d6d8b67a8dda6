"""`manifest.json`: the segments of a run and their layouts, so any process can attach from the run folder.

`SharedRun.create` (the supervisor) makes the three segments and writes the manifest atomically;
`SharedRun.attach(run_dir)` (an actor started by hand, a tool) needs nothing but the folder.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from mp_rl.shm.board import WeightBoard
from mp_rl.shm.control import ControlBlock
from mp_rl.shm.ring import ReplayRing, RingSpec
from mp_rl.shm.segment import PREFIX, SegmentError
from mp_rl.shm.sync import RateLimit

MANIFEST = "manifest.json"


class AttachError(RuntimeError):
    """A run folder cannot be attached to; the message is one line saying why."""


def segment_name(run_id: str, part: str) -> str:
    return f"{PREFIX}{re.sub(r'[^A-Za-z0-9_-]', '_', run_id)}.{part}"


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_manifest(run_dir: str | os.PathLike) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AttachError(f"run folder {run_dir} does not exist")
    path = run_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise AttachError(f"{run_dir} has no {MANIFEST}: not an mp_rl run folder, or the run never started") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AttachError(f"{path} is corrupt: {exc}") from None
    if not isinstance(manifest, dict) or "segments" not in manifest:
        raise AttachError(f"{path} is not an mp_rl manifest")
    return manifest


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

    @classmethod
    def create(
        cls, run_dir: Path, run_id: str, spec: RingSpec, limit: RateLimit, numel: int, max_members: int,
        capacity: int | None = None, info: dict | None = None,
    ) -> SharedRun:  # fmt: skip
        made: list = []
        try:
            # The control block first: it names the owner, so cleanup never takes a run that is
            # still being created for a dead one.
            control = ControlBlock.create(segment_name(run_id, "control"), max_members)
            made.append(control)
            made.append(ReplayRing.create(segment_name(run_id, "ring"), spec, limit, capacity))
            made.append(WeightBoard.create(segment_name(run_id, "board"), numel))
            run = cls(run_id, made[1], made[2], control, owner=True, info=info or {})
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
        if int(manifest.get("owner_uid", -1)) != os.getuid():
            raise AttachError(f"run {manifest.get('run_id')} belongs to another user")
        if not owner_alive(manifest):
            raise AttachError(f"run {manifest.get('run_id')} has ended (its supervisor is gone)")
        seg = manifest["segments"]
        made: list = []
        try:
            made.append(ReplayRing.from_manifest(seg["ring"]))
            made.append(WeightBoard.from_manifest(seg["board"]))
            made.append(ControlBlock.from_manifest(seg["control"]))
        except (SegmentError, KeyError, RuntimeError) as exc:
            for part in made:
                part.close()
            raise AttachError(f"cannot attach to run {manifest.get('run_id')}: {exc}") from None
        return cls(manifest["run_id"], *made, owner=False, info=manifest.get("info", {}))

    def close(self) -> None:
        """Unmap everything; the owner also unlinks every segment."""
        for part in (self.ring, self.board, self.control):
            part.destroy() if self.owner else part.close()

    def __enter__(self) -> SharedRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
