"""Checkpoints: written atomically (temp file + rename), read with `torch.load(weights_only=True)`."""

from __future__ import annotations

from pathlib import Path

import torch

from mp_rl.shm.manifest import private_file


def save(path: Path, payload: dict) -> None:
    """Write `payload` (tensors, state dicts, plain containers) so a reader never sees half a file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with private_file(path) as f:  # owner-only: it holds the model
        torch.save(payload, f)


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
