"""The control block: atomic membership claims across processes, counters, targets, stop."""

from __future__ import annotations

import os

from helpers import drain, join_all

from mp_rl.shm.control import ATTACHED, ControlBlock, Kind, State
from mp_rl.testing import claimer_proc


def test_slots_claimed_concurrently_are_never_shared(shm_name, spawn):
    cb = ControlBlock.create(shm_name("control"), max_members=3)
    q = spawn.Queue()
    procs = [spawn.Process(target=claimer_proc, args=(cb.describe(), 300, q)) for _ in range(4)]
    try:
        for p in procs:
            p.start()
        results = drain(q, 4, 60, procs)
        join_all(procs, 30)
        assert sum(len(s) for s in results.values()) > 100
        assert cb.free_slots() == cb.max_members  # every claim was released
    finally:
        cb.destroy()


def test_claim_fills_slots_then_says_so(shm_name):
    cb = ControlBlock.create(shm_name("control"), max_members=2)
    try:
        a, b = cb.claim(Kind.LEARNER), cb.claim(Kind.ACTOR, flags=ATTACHED)
        assert {a, b} == {0, 1}
        try:
            cb.claim(Kind.ACTOR)
            raise AssertionError("a third claim should fail")
        except RuntimeError as exc:
            assert "all 2 member slots are taken" in str(exc)
        members = {m["slot"]: m for m in cb.live_members()}
        assert members[b]["attached"] and members[a]["kind"] == "learner" and members[a]["pid"] == os.getpid()
        assert cb.retire(b) and cb.state(b) == State.RETIRING
        cb.leave(b)
        assert cb.claim(Kind.ACTOR) == b
    finally:
        cb.destroy()


def test_counters_targets_and_stop(shm_name):
    cb = ControlBlock.create(shm_name("control"), max_members=2)
    try:
        cb.add("env_steps", 100)
        cb.add("episodes", 2)
        assert cb.counters()["env_steps"] == 100 and cb.counters()["episodes"] == 2
        cb.report_episode(0, ret=9.5, length=10)
        rows, cursor = cb.episodes_since(0)
        assert rows.tolist() == [[9.5, 10.0, 0.0]] and cursor == 1 and cb.counters()["episodes"] == 3
        assert cb.episodes_since(cursor)[0].size == 0
        cb.set_target("batch_size", 256)
        assert cb.target("batch_size") == 256
        assert not cb.wait_stop(0.01)
        cb.request_stop()
        assert cb.stopping and cb.wait_stop(0.01)
    finally:
        cb.destroy()
