"""Defects found by review, each pinned by a test: actors held by the rate limiter, attached slots,
restart decay, damaged manifests, trim revisits, planted segment files, owner-only run folders,
evaluation that a second Ctrl-C can skip."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from system_helpers import wait_for

from mp_rl.agent import actor as actor_module
from mp_rl.agent.actor import Actor
from mp_rl.agent.evaluation import Cancelled, greedy_returns
from mp_rl.agent.models import build_q_network
from mp_rl.config import load_config
from mp_rl.shm import AttachError, RateLimit, Segment, SegmentError, SharedRun
from mp_rl.shm.control import ATTACHED, Kind, State
from mp_rl.shm.ring import ReplayRing, rows_like
from mp_rl.shm.ringspec import RingSpec
from mp_rl.start.preflight import new_run_dir, plan
from mp_rl.system.crew import Crew, Member, reap_attached
from mp_rl.testing import checked_spec

DEAD_PID = 2**22 + 13
HELD = RateLimit(samples_per_insert=3000.0, min_fill=64, error_buffer=96_100, block=64, max_batch=32)


@pytest.fixture
def held_run(tmp_path, shm_name):
    """A run whose rate limiter holds every actor after its first block (nobody samples)."""
    cfg = load_config("configs/smoke.yaml", ["env.id=mp_rl.testing:CountingEnv", f"run.runs_dir={tmp_path}"])
    p = plan(cfg)
    shared = SharedRun.create(tmp_path, shm_name("x").split(".")[1], p.ring, HELD, p.numel, 8)
    yield cfg, p, shared
    shared.close()


def actor_thread(cfg, p, shared, run_alive=None) -> tuple[Actor, int, threading.Thread]:
    slot = shared.control.claim(Kind.ACTOR)
    actor = Actor(cfg, shared, p.spec, slot, index=0, count=1, seed=0)
    thread = threading.Thread(target=actor.run, kwargs={"run_alive": run_alive}, daemon=True)
    thread.start()
    return actor, slot, thread


def test_an_actor_held_by_the_rate_limiter_keeps_beating_and_leaves_when_retired(held_run, monkeypatch):
    cfg, p, shared = held_run
    monkeypatch.setattr(actor_module, "RETIRE_GRACE_S", 1.0)  # the rule, not the production wait
    actor, slot, thread = actor_thread(cfg, p, shared)
    try:
        wait_for(lambda: actor.held_since is not None, 10, "the actor held by the rate limiter")
        before = shared.ring.inserts
        time.sleep(2.5)  # held all along: nobody samples
        assert shared.ring.inserts == before and thread.is_alive()
        assert shared.control.heartbeat_age(slot) < 1.5, "a held actor went silent: it would be killed as hung"
        shared.control.retire(slot)
        thread.join(actor_module.RETIRE_GRACE_S + 3)
        assert not thread.is_alive(), "a retired actor stayed in the blocked loop"
    finally:
        shared.control.request_stop()
        thread.join(5)
        actor.close()


def test_an_attached_actor_held_by_the_rate_limiter_leaves_when_its_run_is_gone(held_run):
    cfg, p, shared = held_run
    gone = threading.Event()
    actor, _, thread = actor_thread(cfg, p, shared, run_alive=lambda: not gone.is_set())
    try:
        wait_for(lambda: actor.held_since is not None, 10, "the actor held by the rate limiter")
        gone.set()  # its supervisor was SIGKILLed: no stop flag will ever come
        thread.join(3)
        assert not thread.is_alive(), "an attached actor outlived its run inside the blocked loop"
    finally:
        shared.control.request_stop()
        thread.join(5)
        actor.close()


def test_a_silent_attached_actor_keeps_its_slot_while_its_process_lives(held_run):
    _, _, shared = held_run
    alive = shared.control.claim(Kind.ACTOR, pid=os.getpid(), flags=ATTACHED)
    dead = shared.control.claim(Kind.ACTOR, pid=DEAD_PID, flags=ATTACHED)
    time.sleep(0.05)
    silent = reap_attached(shared, ours=set(), timeout=0.01, silent=set())
    assert shared.control.state(alive) is State.RUNNING, "a live process's slot was freed: two writers, one token"
    assert shared.control.state(dead) is State.FREE
    assert silent == {os.getpid()}


def test_a_slot_claimed_again_after_the_snapshot_is_not_freed_from_it(held_run, monkeypatch):
    """The old attached actor leaves and a new member claims its slot between the supervisor's look
    and its pid check: the newcomer keeps its slot and its lease."""
    from mp_rl.system import crew

    _, _, shared = held_run
    old = shared.control.claim(Kind.ACTOR, pid=DEAD_PID, flags=ATTACHED)
    newcomer = {}

    def alive_after_a_swap(pid: int) -> bool:  # the old one left; a new member took its slot and writes
        shared.control.leave(old)
        newcomer["slot"] = shared.control.claim(Kind.ACTOR, pid=os.getpid(), flags=ATTACHED)
        assert shared.ring._take_lease(0, newcomer["slot"] + 1)
        return False  # the snapshot's pid is dead

    monkeypatch.setattr(crew.forks, "running", alive_after_a_swap)
    crew.reap_attached(shared, ours=set(), timeout=60.0, silent=set())
    assert newcomer["slot"] == old and shared.control.state(old) is State.RUNNING
    assert int(shared.ring.leases[0]) == old + 1, "the newcomer's lease was voided"
    shared.ring._drop_lease(0)
    shared.control.leave(old)


class FakeProcess:
    exitcode = None

    def is_alive(self) -> bool:
        return True


def test_restart_counts_are_forgiven_after_a_healthy_period(held_run, tmp_path):
    _, p, shared = held_run
    crew = Crew(p, tmp_path, shared)
    slot = shared.control.claim(Kind.ACTOR, pid=os.getpid())
    healthy = Member(Kind.ACTOR, slot, 0, FakeProcess(), restarts=4, started=time.monotonic() - 200)
    recent = Member(Kind.ACTOR, slot, 1, FakeProcess(), restarts=4, started=time.monotonic() - 5)
    for m in (healthy, recent):
        crew.members = {slot: m}
        shared.control.heartbeat(slot)
        crew.check_members()
    assert healthy.restarts == 0 and recent.restarts == 4


def test_a_retired_members_slot_taken_by_a_newcomer_is_not_cleared(held_run, tmp_path):
    """A retiring actor leaves its slot and exits; before the watch loop sees the exit an attached
    actor claims that slot and writes: the crew's clean-up must not void its lease or free its slot."""
    _, p, shared = held_run
    crew = Crew(p, tmp_path, shared)
    m = crew._claim(Member(Kind.ACTOR, -1, 0, FakeProcess()))
    crew.members = {m.slot: m}
    shared.control.leave(m.slot)  # the retiring actor's own exit
    newcomer = shared.control.claim(Kind.ACTOR, pid=os.getpid(), flags=ATTACHED)
    assert newcomer == m.slot and shared.ring._take_lease(0, newcomer + 1)
    crew._retired(m)
    assert shared.control.state(newcomer) is State.RUNNING and int(shared.ring.leases[0]) == newcomer + 1
    shared.ring._drop_lease(0)
    shared.control.leave(newcomer)


# --- manifest.json is checked, never trusted -------------------------------------------------------
@pytest.fixture
def manifest_run(tmp_path, shm_name):
    shared = SharedRun.create(tmp_path, shm_name("x").split(".")[1], checked_spec(8192),
                              RateLimit(None, 1, 0, 64, 64), numel=1000, max_members=8)  # fmt: skip
    yield tmp_path, json.loads((tmp_path / "manifest.json").read_text())
    shared.close()


def damaged(tmp_path, manifest: dict, change) -> str:
    folder = tmp_path / f"damaged{len(list(tmp_path.glob('damaged*')))}"
    folder.mkdir()
    m = json.loads(json.dumps(manifest))
    change(m)
    (folder / "manifest.json").write_text(json.dumps(m))
    return str(folder)


def _halve(m: dict, relayout: bool) -> None:
    spec = m["segments"]["ring"]["spec"]
    spec["capacity_max"] //= 2
    if relayout:  # a crafted one: the layout recomputed to match the lie; only the segment's size tells
        m["segments"]["ring"]["layout"] = RingSpec.from_json(spec).layout().to_json()


CHANGES = {
    "an object dtype": lambda m: m["segments"]["ring"]["spec"]["fields"][0].update(dtype="|O"),
    "a halved capacity_max": lambda m: _halve(m, relayout=False),
    "a halved capacity_max with its layout to match": lambda m: _halve(m, relayout=True),
    "a shifted offset": lambda m: m["segments"]["ring"]["layout"][-1].update(offset=64),
    "a string pid": lambda m: m.update(owner_pid="12"),
    "a string numel": lambda m: m["segments"]["board"].update(numel="1000"),
    "a list of segments": lambda m: m.update(segments=[]),
    "no ring": lambda m: m["segments"].pop("ring"),
    "a bad rate limit": lambda m: m["segments"]["ring"]["limit"].update(block="x"),
    "knobs without a batch": lambda m: m["info"].update(knobs={"actors": {"start": 1, "lo": 1, "hi": 1, "auto": 0}}),
    "a knob outside its bounds": lambda m: m["info"].update(
        knobs={k: {"start": 9, "lo": 1, "hi": 4, "auto": True} for k in ("actors", "batch_size", "capacity")}
    ),
}


@pytest.mark.parametrize("what", list(CHANGES))
def test_a_damaged_manifest_is_one_attach_error(manifest_run, what):
    tmp_path, manifest = manifest_run
    with pytest.raises(AttachError) as err:
        SharedRun.attach(damaged(tmp_path, manifest, CHANGES[what])).close()
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


@pytest.mark.system
def test_the_tools_say_one_line_and_exit_2_on_a_damaged_manifest(manifest_run):
    tmp_path, manifest = manifest_run
    folder = damaged(tmp_path, manifest, CHANGES["an object dtype"])
    for tool in ("mp_rl.tools.status", "mp_rl.tools.inspect"):
        done = subprocess.run([sys.executable, "-m", tool, folder], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "damaged" in done.stderr and "Traceback" not in done.stderr


# --- smaller defects -------------------------------------------------------------------------------
def test_a_chunk_skipped_for_a_held_lease_is_released_by_the_next_trim(shm_name):
    spec = RingSpec.for_transitions((64,), "float32", capacity_max=65536)
    ring = ReplayRing.create(shm_name("ring"), spec, RateLimit(None, 1, 0, 64, 64), capacity=65536)
    try:
        w, rows = ring.writer(1), rows_like(spec, 64)
        for _ in range(spec.capacity_max // 64):
            w.write(rows)
        held = (ring.chunk * 2) // spec.block  # a block inside the third chunk: a writer sits in it
        assert ring._take_lease(held, 99)
        ring.capacity = 4096  # trims: stops at the held chunk
        kept = ring.segment.allocated_bytes()
        ring._drop_lease(held)
        for _ in range(ring.chunk // 64):  # one more chunk of writes: the next trim comes round
            w.write(rows)
        row = sum(f.row_bytes for f in spec.fields) + 8
        assert kept - ring.segment.allocated_bytes() >= 0.9 * row * ring.chunk * (spec.capacity_max // ring.chunk - 3)
    finally:
        ring.destroy()


def test_attach_refuses_a_symlink_or_a_fifo_planted_under_a_segment_name(shm_name, tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"\0" * 4096)
    link, fifo = shm_name("link"), shm_name("fifo")
    os.symlink(target, Segment.path(link))
    os.mkfifo(Segment.path(fifo), 0o600)
    try:
        with pytest.raises(SegmentError, match="cannot be opened"):
            Segment.attach(link)
        with pytest.raises(SegmentError, match="not a regular file"):
            Segment.attach(fifo)
    finally:
        os.unlink(Segment.path(link))
        os.unlink(Segment.path(fifo))


def test_a_run_folder_and_what_it_holds_are_owner_only(tmp_path):
    cfg = load_config("configs/smoke.yaml", [f"run.runs_dir={tmp_path}"])
    folder = new_run_dir(cfg)
    from mp_rl.agent import checkpoint
    from mp_rl.files import write_json_atomic

    checkpoint.save(folder / "checkpoints" / "final.pt", {"x": 1})
    write_json_atomic(folder / "summary.json", {})
    for path in (folder, folder / "logs", folder / "checkpoints"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in (folder / "checkpoints" / "final.pt", folder / "summary.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    shutil.rmtree(folder)


def test_an_evaluation_in_progress_stops_when_cancelled():
    cfg = load_config("configs/smoke.yaml")
    policy = build_q_network((4,), 2, (8,), False)
    calls = iter(range(10**9))
    with pytest.raises(Cancelled):
        greedy_returns(policy, cfg.env, 4, seed=0, max_steps=10**6, cancelled=lambda: next(calls) >= 3)
    assert np.isfinite(greedy_returns(policy, cfg.env, 2, seed=0, max_steps=5)).all()


@pytest.mark.system
@pytest.mark.timeout(120)
def test_the_real_system_never_kills_an_actor_held_by_the_rate_limiter(live):
    """The review's case: a replay ratio the learner cannot reach holds the actor for good."""
    run = live("--config", "configs/smoke.yaml", "run.heartbeat_timeout_s=3", "replay.samples_per_insert=3000",
               "run.total_env_steps=100000000", "run.wall_time_s=600")  # fmt: skip
    run.wait_members({"learner", "actor-0"})
    wait_for(lambda: run.metrics() and run.metrics()[-1]["updates"] > 0, 60, "the learner training")
    time.sleep(8)  # well past the heartbeat timeout, held all along
    log = (run.run_dir / "logs" / "supervisor.log").read_text()
    assert "silent" not in log and "restart" not in log, log
    rc, _, err = run.stop(timeout=30)
    assert rc == 0, err
