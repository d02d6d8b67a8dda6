"""A remote actor's link and the ingest, in one process (no Ray): the rows that land are the rows a local
actor writes, backpressure fills the window instead of a queue, a released slot lets its calls out and
nothing lands after, weights cross as one object per version, and a lost ingest detaches the actor."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import pickle
import sys
import threading
import time

import numpy as np
import pytest
import torch

from mp_rl.agent.actor import Actor
from mp_rl.config import load_config
from mp_rl.remote.ingest import PUT_EVERY_S, Ingest
from mp_rl.remote.link import Link, LinkedRun, Transport
from mp_rl.shm.control import State
from mp_rl.shm.manifest import SharedRun
from mp_rl.shm.sampler import read_rows
from mp_rl.shm.sync import RateLimit
from mp_rl.start.preflight import plan


def direct(ingest: Ingest, pool: cf.ThreadPoolExecutor, calls: list | None = None) -> Transport:
    """Calls into `ingest` on a thread each, their arguments serialised at the call as Ray does."""

    def call(method, *args):
        if calls is not None:
            calls.append(method)
        return pool.submit(getattr(ingest, method), *pickle.loads(pickle.dumps(args)))

    def wait(futures, timeout):
        return list(cf.wait(futures, timeout, cf.FIRST_COMPLETED).done)

    return Transport(call, wait, lambda f: f.result())


def make_run(tmp_path, shm_name, cfg, limit=None):
    p = plan(cfg)
    limit = limit or RateLimit(None, 1, 0, p.ring.block, 64)
    (tmp_path / "logs").mkdir(exist_ok=True)
    return SharedRun.create(tmp_path, shm_name("a").split(".")[1], p.ring, limit, p.numel, 4), p


@contextlib.contextmanager
def served(folder, shm_name, cfg=None, limit=None, put=np.copy):
    """A run's segments in `folder`, an ingest attached to them and threads to call it from; all closed after."""
    shared, p = make_run(folder, shm_name, cfg or load_config("configs/smoke.yaml"), limit)
    ingest, pool = Ingest(str(folder), put=put), cf.ThreadPoolExecutor(8)
    try:
        yield shared, p, ingest, pool
    finally:
        ingest.close()
        pool.shutdown()
        shared.close()


CFG = ["env.id=mp_rl.testing:StackedStampFrames", "env.max_episode_steps=25", "env.envs_per_actor=3"]


def rows_of(actor: Actor, shared: SharedRun, steps: int, after=lambda: None) -> dict:
    for _ in range(steps):
        actor.step()
    actor.finish()
    after()
    _, rows = read_rows(shared.ring, np.arange(*shared.ring.window()))
    actor.close()
    return rows


def test_a_linked_actor_lands_byte_for_byte_the_rows_a_local_actor_writes(tmp_path, shm_name):
    """Frame rows (Pong's layout), episodes of every length: the same seed and policy give the same rows."""
    cfg = load_config("configs/smoke.yaml", CFG)
    got = {}
    for how in ("local", "linked"):
        folder = tmp_path / how
        folder.mkdir()
        with served(folder, shm_name, cfg) as (shared, p, ingest, pool):
            torch.manual_seed(0)  # the same policy both times
            if how == "local":
                got[how] = rows_of(Actor(cfg, shared, p.spec, 0, index=0, count=1, seed=3), shared, 400)
                continue
            joined = ingest.join(key=0, host="here")
            link = Link(direct(ingest, pool), key=0, window=4)
            actor = Actor(cfg, LinkedRun(link, shared.ring.spec), p.spec, joined["slot"], index=0, count=1, seed=3)
            got[how] = rows_of(actor, shared, 400, after=link.drain)
            assert shared.control.live_members()[0]["remote"]
            assert ingest.release(0) == joined["slot"] and shared.control.free_slots() == 4
    assert len(got["linked"]["action"]) > 1000
    for name, local in got["local"].items():
        assert np.array_equal(np.sort(local.reshape(len(local), -1), 0),
                              np.sort(got["linked"][name].reshape(len(local), -1), 0)), name  # fmt: skip


def blocked(tmp_path, shm_name):
    """A ring that takes 256 rows and then holds every write (no learner samples)."""
    return served(
        tmp_path, shm_name, limit=RateLimit(1.0, 64, 192, plan(load_config("configs/smoke.yaml")).ring.block, 64)
    )


def block_of(shared: SharedRun, i: int) -> dict[str, np.ndarray]:
    spec = shared.ring.spec
    return {f.name: np.full((spec.block, *f.shape), i, f.dtype) for f in spec.fields}


@pytest.mark.timeout(60)
def test_backpressure_fills_the_window_then_a_released_slot_lets_its_calls_out_and_nothing_lands_after(
    tmp_path, shm_name
):
    with blocked(tmp_path, shm_name) as (shared, _, ingest, pool):
        slot = ingest.join(key=7, host="there")["slot"]
        link = Link(direct(ingest, pool), key=7, window=3)
        sent = 0
        while link.send_block(block_of(shared, sent), None, timeout=0.5):
            sent += 1
            assert sent < 50, "the rate limiter never pushed back"
        limit_rows, block = shared.ring.counts()["inserts"], shared.ring.spec.block
        # The limiter checks before it reserves: writers that pass together may overshoot by a block each.
        assert 256 <= limit_rows <= 256 + 2 * block
        assert len(link.inflight) == 3, "held in the ring: the window is full, no queue grows"
        assert sent == limit_rows // block + 3
        t0 = time.monotonic()
        assert ingest.release(7, "its node died") == slot
        assert time.monotonic() - t0 < 2.0, "its calls waiting in the ring were let out"
        link.reap(5.0)
        link.reap(5.0)
        link.reap(5.0)
        assert not link.inflight and link.stopping and link.state == State.FREE
        assert shared.control.state(slot) == State.FREE and not np.any(shared.ring.leases == slot + 1)
        assert shared.ring.counts()["inserts"] == limit_rows, "nothing landed after the release"
        assert ingest.write(7, block_of(shared, 99), None, link._take_report())["stopping"]  # a late call: go


def test_reports_become_heartbeat_episodes_and_counters_and_the_run_stopping_is_heard(tmp_path, shm_name):
    with served(tmp_path, shm_name) as (shared, _, ingest, pool):
        slot = ingest.join(key=0, host="there")["slot"]
        run = LinkedRun(Link(direct(ingest, pool), key=0), shared.ring.spec)
        run.control.report_episodes(slot, np.array([3.0, 5.0]), np.array([10, 20]))
        run.control.add("env_steps", 300)
        run.link.last_call = 0.0  # a beat is due
        run.control.heartbeat(slot, steps=300, weights=0)
        run.link.drain()
        member = shared.control.live_members()[0]
        assert member["steps"] == 300 and member["remote"] and member["attached"]
        assert shared.control.counters()["env_steps"] == 300
        rows, _ = shared.control.episodes_since(0)
        assert rows[:, 0].tolist() == [3.0, 5.0]
        shared.control.request_stop()
        run.link.drain()
        assert run.control.stopping


def test_weights_cross_as_one_object_per_version_for_every_remote_actor(tmp_path, shm_name):
    puts, objects = [], {}  # a put's reference is its index here
    with served(tmp_path, shm_name, put=lambda a: puts.append(a.copy()) or len(puts) - 1) as (shared, p, ingest, pool):
        links = []
        for key in range(3):
            ingest.join(key=key, host="there")
            t = direct(ingest, pool)
            links.append(Link(Transport(t.call, t.wait, lambda r, t=t: puts[r] if isinstance(r, int) else t.get(r)),
                              key=key))  # fmt: skip
        for version in (1, 2):
            shared.board.publish(torch.full((p.numel,), float(version)))
            time.sleep(PUT_EVERY_S + 0.01)  # the ingest makes at most one object this often
            for link in links:
                link.drain()
                flat = torch.zeros(p.numel)
                assert LinkedRun(link, shared.ring.spec).board.read_into(flat, version - 1) == version
                objects[version] = float(flat[0])
        assert len(puts) == 2, "one object per version, not one per actor"
        assert objects == {1: 1.0, 2: 2.0}


def test_an_ingest_that_is_gone_detaches_the_actor_with_what_it_was_told(tmp_path, shm_name):
    cfg = load_config("configs/smoke.yaml")
    shared, p = make_run(tmp_path, shm_name, cfg)
    dead = threading.Event()

    def call(method, *args):
        f = cf.Future()
        f.set_exception(ConnectionError("ActorDiedError: the actor died unexpectedly")) if dead.is_set() else \
            f.set_result({"stopping": False, "state": int(State.RUNNING), "version": 0, "weights": None})  # fmt: skip
        return f

    link = Link(Transport(call, lambda fs, t: list(fs), lambda f: f.result()), key=0, window=2)
    actor = Actor(cfg, LinkedRun(link, shared.ring.spec), p.spec, 0, index=0, count=1, seed=0)
    try:
        threading.Timer(0.5, dead.set).start()
        t0 = time.monotonic()
        actor.run(run_alive=lambda: link.lost is None)  # returns: nowhere to write
        assert time.monotonic() - t0 < 10 and link.lost and "ActorDiedError" in link.lost
        assert link.sent_blocks > 0
    finally:
        actor.close()
        shared.close()


def test_attach_with_ray_missing_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path):
    from mp_rl import attach

    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra has
    assert attach.main([str(tmp_path), "--ray", "local"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install -e '.[ray]'" in err[0], err


def test_a_slot_released_while_a_call_is_inside_is_kept_until_the_call_leaves(tmp_path, shm_name, monkeypatch):
    """`release` waits for the slot's calls; one still inside after the wait may yet write with the
    slot's token, so the slot stays claimed (no newcomer can share the token) until that call leaves."""
    from mp_rl.remote import ingest as module

    monkeypatch.setattr(module, "RELEASE_WAIT_S", 0.2)
    with served(tmp_path, shm_name) as (shared, _, ingest, pool):
        slot = ingest.join(key=3, host="here")["slot"]
        hold, entered = threading.Event(), threading.Event()

        def stuck_apply(slot_, report):
            entered.set()
            hold.wait(10)

        monkeypatch.setattr(ingest, "_apply", stuck_apply)
        report = {"steps": 0, "weights": 0, "returns": [], "lengths": [], "counters": {}}
        call = pool.submit(ingest.beat, 3, report)
        assert entered.wait(5)
        assert ingest.release(3, "its node died") == slot
        assert shared.control.state(slot) is not State.FREE, "freed with a call inside: two writers, one token"
        hold.set()
        assert call.result(5)["stopping"]  # the call is told to go
        assert shared.control.state(slot) is State.FREE and not ingest.leaving
