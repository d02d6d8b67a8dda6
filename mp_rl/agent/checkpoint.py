"""Checkpoints: written atomically (temp file + rename), read with `torch.load(weights_only=True)`."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from mp_rl.files import private_file
from mp_rl.runfolder import RunFolder


def save(path: Path, payload: dict) -> None:
    """Write `payload` (tensors, state dicts, plain containers) so a reader never sees half a file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with private_file(path) as f:  # owner-only: it holds the model
        torch.save(payload, f)


def load(path: Path) -> dict:
    """Read a checkpoint safely: `weights_only=True` refuses arbitrary pickled objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def policy_weights(state: dict) -> dict:
    """The weights that play: the learner's moving average where the run kept one (`learner.policy_ema`),
    else the online network's. `model` stays the online network: the one a resume trains on."""
    return state.get("policy", state["model"])


class Damaged(ValueError):
    """A checkpoint that cannot be read, or is not one of mp_rl's."""


def load_valid(path: Path) -> dict:
    """`load`, and check the file is an mp_rl checkpoint; `Damaged` (with why) otherwise."""
    try:
        state = load(path)
        if not isinstance(state, dict) or not isinstance(state.get("counters"), dict) or "model" not in state:
            raise ValueError("not an mp_rl checkpoint")
        return state
    except Exception as exc:  # torch raises many kinds on a damaged file: each one means "damaged"
        raise Damaged(f"{type(exc).__name__}: {str(exc)[:100]}") from None


def newest(run_dir: Path) -> tuple[Path, dict, list[tuple[Path, str]]] | None:
    """The most trained readable checkpoint of a run folder: (path, its contents, the damaged ones
    passed over on the way, with why); None when there is no checkpoint at all.

    Most trained is the highest update count, the order in which a run (and every resume of it,
    which continues the count) writes them: periodic ones carry it in their name, `final.pt` inside.
    A final.pt from an earlier session is older than periodic checkpoints a later, killed, session
    wrote, and an empty or damaged newest file gives way to the next one down.
    """
    folder, final_path = RunFolder(run_dir).checkpoints, RunFolder(run_dir).final
    periodic = [p for p in folder.glob("update-*.pt") if re.fullmatch(r"update-\d+", p.stem)]  # no stray names
    periodic.sort(key=lambda p: int(p.stem.split("-")[1]), reverse=True)
    damaged: list[tuple[Path, str]] = []
    final = final_state = None
    if final_path.exists():
        try:
            final, final_state = final_path, load_valid(final_path)
        except Damaged as exc:
            damaged.append((final_path, str(exc)))
    for path in periodic:
        count = int(path.stem.split("-")[1])
        if final_state is not None and int(final_state["counters"].get("updates", 0)) >= count:
            break  # final.pt is at least as trained
        try:
            return path, load_valid(path), damaged
        except Damaged as exc:
            damaged.append((path, str(exc)))
    if final is not None:
        return final, final_state, damaged
    return (None, None, damaged) if damaged else None
