"""Checkpoints: written atomically (temp file + rename), read with `torch.load(weights_only=True)`."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save(path: Path, payload: dict) -> None:
    """Write `payload` (tensors, state dicts, plain containers) so a reader never sees half a file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)  # it holds the model
    with os.fdopen(fd, "wb") as f:
        torch.save(payload, f)
    os.replace(tmp, path)


def load(path: Path) -> dict:
    """Read a checkpoint safely: `weights_only=True` refuses arbitrary pickled objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def latest(run_dir: Path) -> Path | None:
    """The checkpoint to resume from: `final.pt`, else the newest periodic one."""
    folder = Path(run_dir) / "checkpoints"
    final = folder / "final.pt"
    if final.exists():
        return final
    periodic = sorted(folder.glob("update-*.pt"), key=lambda p: p.stat().st_mtime)
    return periodic[-1] if periodic else None
