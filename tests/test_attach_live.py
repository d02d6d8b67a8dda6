"""Actors attached by hand to a live run: they join from the run folder alone, write, show up in the
status line and in tools, detach on Ctrl-C with nothing lost or duplicated, and leave no slot,
segment or process behind; a SIGKILLed one gets its slot back from the supervisor."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from system_helpers import REPO, wait_for

from mp_rl.shm.control import State
from mp_rl.shm.manifest import SharedRun
from mp_rl.shm.sampler import read_rows
from mp_rl.shm.segment import list_segments

pytestmark = pytest.mark.system  # every test here starts the real system

N_STEP, ENVS = 3, 4  # smoke.yaml's n-step and envs per actor
RUN = ["--config", "configs/smoke.yaml", "env.id=mp_rl.testing:CountingEnv", "run.total_env_steps=100000000",
       "run.wall_time_s=600", "replay.capacity=262144", "replay.max_capacity=262144",
       "eval.max_episode_steps=200"]  # fmt: skip


def attach(run_dir, *args: str) -> subprocess.Popen:
    """`python -m mp_rl.attach` in its own session, as a second terminal would run it."""
    cmd = [sys.executable, "-m", "mp_rl.attach", str(run_dir), *args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def attached(run) -> dict:
    return {k: p for k, p in run.members().items() if k.endswith("(attached)")}


def joined(run, proc: subprocess.Popen, n: int) -> dict:
    """The attached actors once `n` are up; an attach that exits first fails the test with what it said."""
    got = attached(run)
    if proc.poll() is not None:
        out, err = proc.communicate()
        raise AssertionError(f"mp_rl.attach exited {proc.returncode}: {err or out}")
    return got if len(got) == n else None


def running_attached(shared: SharedRun) -> list[dict]:
    return [m for m in shared.control.live_members() if m["attached"] and m["state"] == "running"]


def ctrl_c(proc: subprocess.Popen, timeout: float = 30) -> str:
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal does: the whole foreground group
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def rows_by_env(shared: SharedRun, pids: set[int]) -> dict[tuple[int, int], np.ndarray]:
    _, rows = read_rows(shared.ring, np.arange(*shared.ring.window()))
    obs, nxt = rows["obs"], rows["next_obs"]
    mine = np.isin(obs[:, 0].astype(np.int64), list(pids))
    assert np.all(nxt[mine, 2] - obs[mine, 2] == N_STEP), "a row's next_obs is n steps after its obs"
    assert np.all(nxt[mine, :2] == obs[mine, :2]), "a row mixes two environments"
    out = {}
    for pid, uid in {(int(a), int(b)) for a, b in obs[mine, :2]}:
        sel = mine & (obs[:, 0] == pid) & (obs[:, 1] == uid)
        out[(pid, uid)] = np.sort(obs[sel, 2].astype(np.int64))
    return out


@pytest.mark.timeout(240)
def test_two_attached_actors_write_show_up_and_detach_without_losing_a_transition(live):
    run = live(*RUN)
    run.wait_members({"learner", "actor-0"})
    wait_for(lambda: run.metrics() and run.metrics()[-1]["env_steps"] > 0, 60, "the run stepping")
    proc = attach(run.run_dir, "--actors", "2")
    procs = wait_for(lambda: joined(run, proc, 2), 60, "two attached actors")
    pids = {p.pid for p in procs.values()}
    assert all(re.fullmatch(r"actor-\d+ \(attached\)", k) for k in procs)
    wait_for(lambda: run.metrics()[-1].get("attached") == 2, 30, "the status line counting them")
    tool = subprocess.run([sys.executable, "-m", "mp_rl.tools.status", str(run.run_dir), "--json", "--count", "2",
                           "--interval", "0.5"], cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    seen = json.loads(tool.stdout.splitlines()[-1])
    shown = [m for m in seen["members"] if m["attached"]]
    assert {m["pid"] for m in shown} == pids and all(m["steps"] > 0 for m in shown), tool.stderr
    out = ctrl_c(proc)
    assert "detached (exit codes [0, 0])" in out
    wait_for(lambda: not attached(run), 10, "attached processes gone")
    with SharedRun.attach(run.run_dir) as shared:
        assert not [m for m in shared.control.live_members() if m["attached"]], "their slots are free again"
        envs = rows_by_env(shared, pids)
    assert len(envs) == 2 * ENVS
    for key, steps in envs.items():
        assert len(np.unique(steps)) == len(steps), f"{key}: a transition was written twice"
        assert steps[0] == 0 and np.all(np.diff(steps) == 1), f"{key}: a transition is missing"
    logs = "".join(p.read_text() for p in (run.run_dir / "logs").glob("actor-*-attached.log"))
    taken = [int(n) for n in re.findall(r"detached after (\d+) env steps", logs)]
    assert len(taken) == 2
    # Every step is a row, but the last n-1 of each env, whose n-step return was still open at detach.
    assert sum(len(s) for s in envs.values()) == sum(taken) - 2 * ENVS * (N_STEP - 1)
    rc, _, err = run.stop(timeout=30)
    assert rc == 0, err


@pytest.mark.timeout(420)
def test_attach_and_detach_three_times_leaks_no_slot_segment_or_process(live):
    run = live(*RUN)
    run.wait_members({"learner", "actor-0"})
    segments = set(list_segments())
    with SharedRun.attach(run.run_dir) as shared:
        free = shared.control.free_slots()
        for i in range(3):  # a leak shows by the second round: each round reuses the same two slots
            proc = attach(run.run_dir, "--actors", "2")
            wait_for(lambda: len(running_attached(shared)) == 2, 60, f"round {i}: two attached actors running")
            ctrl_c(proc)
            wait_for(lambda: shared.control.free_slots() == free, 10, "slots back")
        assert not attached(run)
    assert set(list_segments()) == segments
    rc, _, err = run.stop(timeout=30)
    assert rc == 0, err


def test_a_sigkilled_attached_actor_gets_its_slot_freed_and_its_block_voided(live):
    run = live(*RUN, "replay.samples_per_insert=null")
    run.wait_members({"learner", "actor-0"})
    proc = attach(run.run_dir)
    with SharedRun.attach(run.run_dir) as shared:
        member = wait_for(lambda: [m for m in running_attached(shared) if m["steps"] > 0], 60, "attached, stepping")
        slot, pid = member[0]["slot"], member[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == 1  # one of its actors did not detach cleanly: say so
        wait_for(lambda: shared.control.state(slot) == State.FREE, 15, "the supervisor freeing the slot")
        assert not np.any(shared.ring.leases == slot + 1), "no block is still reserved for the dead writer"
        for key, steps in rows_by_env(shared, {pid}).items():  # every row it did stamp is whole
            assert np.all(np.diff(steps) == 1), key
    log = (run.run_dir / "logs" / "supervisor.log").read_text()
    assert f"attached actor in slot {slot} (pid {pid}) is gone" in log
    rc, _, err = run.stop(timeout=30)
    assert rc == 0, err


@pytest.mark.parametrize(
    ("args", "needle"),
    [([], "does not exist"), (["--actors", "0"], "at least 1"), (["--cpus", "4096"], "not available")],
)
def test_bad_attach_input_is_one_line_and_exit_2(tmp_path, live, args, needle):
    target = tmp_path / "nope"
    if args:
        run = live(*RUN)
        target = run.run_dir
    proc = attach(target, *args)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_attached_actors_leave_with_the_run_and_cannot_join_an_ended_one_or_overfill_it(live):
    run = live(*RUN)
    run.wait_members({"learner", "actor-0"})
    proc = attach(run.run_dir, "--actors", "1000")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "member slots are free, 1000 asked" in err, err
    staying = attach(run.run_dir)
    wait_for(lambda: attached(run), 60, "an attached actor")
    rc, _, _ = run.stop(timeout=30)
    assert rc == 0
    out, err = staying.communicate(timeout=30)  # nobody pressed Ctrl-C: the run's end is enough
    assert staying.returncode == 0 and "detached" in out, err
    proc = attach(run.run_dir)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "has ended" in err and len(err.strip().splitlines()) == 1, err


def without_torch(*args: str) -> subprocess.CompletedProcess:
    """`python -m args` that must never import torch (the read-only tools; `test_tools_start.py`)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    said = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert done.returncode == 0, "\n".join(said[-20:])
    # importtime indents a nested import ("|     torch"): the module name is what follows the last bar
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported, f"{args[0]} imported torch"
    return done


def test_inspect_reads_a_live_ring_without_touching_it(live):
    """inspect reads rows and stats of a live ring and changes nothing; it, status and cleanup read a live
    run without importing torch."""
    run = live(*RUN)
    wait_for(lambda: run.metrics() and run.metrics()[-1]["replay_size"] > 1000, 60, "rows in the ring")
    done = without_torch("mp_rl.tools.inspect", str(run.run_dir), "--json", "--rows", "3")
    s = json.loads(done.stdout)
    assert s["rows_read"] > 1000 and len(s["rows"]) == 3 and set(s["actions"]) <= {"0", "1"}  # JSON keys
    assert s["reward"]["min"] == pytest.approx(1 + 0.99 + 0.99**2, rel=1e-4)  # CountingEnv: 3-step returns of 1
    assert s["terminal_share"] == 0.0  # its episodes never end
    assert (
        s["rows"][0]["obs"]["head"][2] > s["rows"][-1]["obs"]["head"][2] or s["rows"][0]["seq"] > s["rows"][-1]["seq"]
    )
    text = subprocess.run([sys.executable, "-m", "mp_rl.tools.inspect", str(run.run_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    assert "replay" in text and "newest rows:" in text
    status = without_torch("mp_rl.tools.status", str(run.run_dir), "--json", "--count", "1", "--interval", "0.2")
    assert json.loads(status.stdout)["run_id"] == run.run_id
    assert run.run_id in without_torch("mp_rl.tools.cleanup").stdout
    rc, _, err = run.stop(timeout=30)
    assert rc == 0, err


def stamp(frames: np.ndarray) -> np.ndarray:
    """(uid, episode, step) that `StampFrames` wrote into each frame, shape (..., 3)."""
    code = frames[..., 0, :5].astype(np.int64)
    return np.stack([code[..., 0], code[..., 1] + 256 * code[..., 2], code[..., 3] + 256 * code[..., 4]], axis=-1)


@pytest.mark.timeout(240)
def test_frame_rows_from_a_run_and_an_attached_actor_are_whole_stacks(live):
    """Stacked image observations through the supervisor, the learner, an attached actor and inspect:
    every stack the ring serves is one episode's consecutive frames, its first padded with the reset
    frame, and its next observation 1..n steps later in the same episode."""
    run = live("--config", "configs/smoke.yaml", "env.id=mp_rl.testing:StackedStampFrames", "env.envs_per_actor=2",
               "run.total_env_steps=100000000", "run.wall_time_s=600", "eval.max_episode_steps=50")  # fmt: skip
    run.wait_members({"learner", "actor-0"})
    proc = attach(run.run_dir)
    wait_for(lambda: joined(run, proc, 1), 60, "an attached actor")
    with SharedRun.attach(run.run_dir) as shared:
        assert shared.ring.spec.frames is not None
        wait_for(lambda: shared.control.counters()["updates"] > 20, 120, "the learner training on frame rows")
        wait_for(lambda: [m for m in running_attached(shared) if m["steps"] > 0], 60, "the attached actor stepping")
        ctrl_c(proc)
        _, rows = read_rows(shared.ring, np.arange(*shared.ring.window()))
    obs, nxt = stamp(rows["obs"]), stamp(rows["next_obs"])
    assert len(obs) > 500
    want = np.maximum(obs[:, -1:, 2] - np.arange(3, -1, -1), 0)  # the newest step back, clamped at the reset
    assert (obs[:, :, :2] == obs[:, -1:, :2]).all() and (obs[:, :, 2] == want).all()
    assert (nxt[:, -1, :2] == obs[:, -1, :2]).all() and np.isin(nxt[:, -1, 2] - obs[:, -1, 2], [1, 2, 3]).all()
    cmd = [sys.executable, "-m", "mp_rl.tools.inspect", str(run.run_dir), "--rows", "2"]
    text = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    assert "(frames stored once)" in text and '"shape": [4, 84, 84]' in text, text
    rc, _, err = run.stop(timeout=30)
    assert rc == 0, err
