"""Attaching from an unrelated process that has only the run folder; clear errors otherwise."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import torch
from helpers import drain, join_all

from mp_rl.shm import AttachError, RateLimit, Segment, SharedRun, list_segments, manifest
from mp_rl.shm.manifest import segment_name
from mp_rl.testing import attached_actor_proc, check_rows, checked_spec


@pytest.fixture
def run(tmp_path, shm_name):
    run_id = shm_name("x").split(".")[1]
    shared = SharedRun.create(
        tmp_path, run_id, checked_spec(8192), RateLimit(None, 1, 0, 64, 64), numel=1000, max_members=8
    )
    yield shared
    shared.close()


def test_segments_are_owner_only_and_listed_in_the_manifest(run, tmp_path):
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    names = [entry["segment"] for entry in manifest["segments"].values()]
    assert set(names) <= set(list_segments())
    for name in names:
        assert stat.S_IMODE(os.stat(Segment.path(name)).st_mode) == 0o600
    ring_layout = {a["name"] for a in manifest["segments"]["ring"]["layout"]}
    assert {"stamps", "f_obs", "f_next_obs", "cursor"} <= ring_layout


def test_a_process_with_only_the_run_folder_joins_writes_and_leaves(run, tmp_path, spawn):
    run.board.publish(torch.full((1000,), 7.0))
    q = spawn.Queue()
    p = spawn.Process(target=attached_actor_proc, args=(str(tmp_path), q))
    p.start()
    slot, version, value, members = drain(q, 1, 60, [p])["attached"]
    join_all([p], 30)
    assert version == 1 and value == 7.0
    assert any(m["slot"] == slot and m["attached"] for m in members)
    assert run.control.counters()["env_steps"] == 256 and run.ring.counts()["inserts"] == 256
    assert check_rows(run.ring.sampler(64).sample(64, timeout=1.0)).all()
    assert run.control.live_members() == []  # it left its slot


@pytest.mark.system
def test_an_unrelated_interpreter_attaches_and_leaves_the_segments_alone(run, tmp_path):
    """A fresh `python -c` (not spawned by us): no resource-tracker warning, and our segments survive it."""
    code = (
        "import sys; from mp_rl.shm import SharedRun; r = SharedRun.attach(sys.argv[1]); "
        "print(r.ring.capacity, r.board.numel); r.close()"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(run.ring.capacity), "1000"]
    assert out.stderr == ""  # in particular no "resource_tracker: leaked shared_memory" warning
    assert run.ring.segment.name in list_segments()


def test_attach_errors_are_one_clear_line(tmp_path, run):
    with pytest.raises(AttachError, match="does not exist"):
        SharedRun.attach(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AttachError, match=r"no manifest\.json"):
        SharedRun.attach(empty)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    dead = tmp_path / "dead"
    dead.mkdir()
    (dead / "manifest.json").write_text(json.dumps({**manifest, "owner_pid": 2**22 + 7}))
    with pytest.raises(AttachError, match="has ended"):
        SharedRun.attach(dead)
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({**manifest, "owner_uid": 12345}))
    with pytest.raises(AttachError, match="another user"):
        SharedRun.attach(other)


def test_a_failed_create_leaves_nothing_behind(tmp_path, shm_name, monkeypatch):
    run_id = shm_name("x").split(".")[1]
    monkeypatch.setattr(manifest, "_tag", lambda: "t")  # the same name at every try
    squatter = Segment.create(segment_name(f"{run_id}-t", "ring"), 4096)  # the second segment cannot be made
    try:
        before = set(list_segments())
        with pytest.raises(Exception, match="already exists"):
            SharedRun.create(tmp_path, run_id, checked_spec(4096), RateLimit(None, 1, 0, 64, 64), 10, 4)
        assert set(list_segments()) == before  # the control block it had made is gone again
        assert not (tmp_path / "manifest.json").exists()
    finally:
        squatter.close()
        squatter.unlink()


def test_a_name_someone_took_costs_a_retry_under_another_random_part(tmp_path, shm_name, monkeypatch):
    run_id = shm_name("x").split(".")[1]
    tags = iter(["first", "second"])
    monkeypatch.setattr(manifest, "_tag", lambda: next(tags))
    squatter = Segment.create(segment_name(f"{run_id}-first", "control"), 4096)  # another user got there first
    try:
        run = SharedRun.create(tmp_path, run_id, checked_spec(4096), RateLimit(None, 1, 0, 64, 64), 10, 4)
        try:
            names = json.loads((tmp_path / "manifest.json").read_text())["segments"]
            assert names["control"]["segment"] == segment_name(f"{run_id}-second", "control")
            assert SharedRun.attach(tmp_path).ring.segment.name == segment_name(f"{run_id}-second", "ring")
        finally:
            run.close()
    finally:
        squatter.close()
        squatter.unlink()
