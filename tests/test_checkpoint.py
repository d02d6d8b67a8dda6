"""Checkpoints: which one a resume takes, a damaged one passed over, and writes that survive a power loss."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mp_rl import run
from mp_rl.agent import checkpoint


def _run_folder(tmp_path: Path, **files: int | None) -> Path:
    """A stopped run folder with checkpoints `name=updates` (None: an empty, damaged file)."""
    folder = tmp_path / "run"
    for sub in ("logs", "checkpoints"):
        (folder / sub).mkdir(parents=True)
    (folder / "config.yaml").write_text("{}\n")
    for name, updates in files.items():
        path = folder / "checkpoints" / f"{name.replace('_', '-')}.pt"
        if updates is None:
            path.write_bytes(b"")
        else:
            checkpoint.save(path, {"model": {}, "counters": {"updates": updates}})
    return folder


def test_a_resume_takes_the_most_trained_checkpoint_not_an_older_final(tmp_path):
    """final.pt from a first session (1,000 updates); a resumed session, SIGKILLed, left 9,000 and 10,000."""
    folder = _run_folder(tmp_path, final=1000, update_000009000=9000, update_000010000=10000)
    _, ckpt, state = run.resume_source(folder)
    assert ckpt.name == "update-000010000.pt" and state["counters"]["updates"] == 10000


def test_a_final_at_least_as_trained_as_the_periodic_ones_wins(tmp_path):
    folder = _run_folder(tmp_path, update_000009000=9000, final=9000)
    assert run.resume_source(folder)[1].name == "final.pt"


def test_a_damaged_newest_checkpoint_gives_way_to_a_good_older_one_in_one_line(tmp_path, capsys):
    folder = _run_folder(tmp_path, update_000009000=9000, update_000010000=None)
    _, ckpt, state = run.resume_source(folder)
    assert ckpt.name == "update-000009000.pt" and state["counters"]["updates"] == 9000
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "update-000010000.pt cannot be read" in err[0] and "using update-000009000.pt" in err[0]


def test_only_damaged_checkpoints_refuse_the_resume(tmp_path):
    folder = _run_folder(tmp_path, final=None)
    with pytest.raises(run.StartError, match=r"checkpoint final\.pt cannot be read"):
        run.resume_source(folder)


def test_a_checkpoint_is_fsynced_before_its_rename_and_its_folder_after(tmp_path, monkeypatch):
    synced, real = [], os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "checkpoints" / "update-000000100.pt"
    checkpoint.save(path, {"model": {}, "counters": {"updates": 100}})
    assert len(synced) == 2 and synced[0].endswith(".tmp") and Path(synced[1]) == path.parent
