"""Wakeups (futex) across processes, and the Reverb-style rate limiter."""

from __future__ import annotations

import time

import pytest
from helpers import drain, join_all
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mp_rl.shm import atomics
from mp_rl.shm.ring import ReplayRing
from mp_rl.shm.segment import Segment
from mp_rl.shm.sync import RateLimit, RateLimitError, Wakeup
from mp_rl.testing import checked_spec, sampler_proc, waiter_proc, writer_proc


def test_a_sleeping_process_is_woken_promptly(shm_name, spawn):
    seg = Segment.create(shm_name("wake"), 4096)
    q = spawn.Queue()
    p = spawn.Process(target=waiter_proc, args=({"segment": seg.name}, 30.0, q))
    p.start()
    try:
        wake = Wakeup(seg.address)
        deadline = time.monotonic() + 20
        while atomics.load32(wake.waiters_addr) == 0:  # wait until the child is really asleep
            assert time.monotonic() < deadline, "waiter never went to sleep"
            time.sleep(0.005)
        atomics.store(seg.address + 8, 1)
        t_set = time.monotonic()
        wake.notify()
        ok, t_woke = drain(q, 1, 20, [p])["waiter"]
        join_all([p], 20)
        assert ok and t_woke - t_set < 0.05, f"woke after {t_woke - t_set:.4f}s"
    finally:
        seg.close()
        seg.unlink()


def test_a_wait_with_nobody_writing_times_out(shm_name):
    seg = Segment.create(shm_name("wake"), 4096)
    try:
        t0 = time.monotonic()
        assert Wakeup(seg.address).wait_for(lambda: False, 0.2) is False
        assert 0.19 <= time.monotonic() - t0 < 1.0
    finally:
        seg.close()
        seg.unlink()


def test_a_deadlocking_setting_is_refused_at_construction():
    with pytest.raises(RateLimitError, match="at least 288"):
        RateLimit(samples_per_insert=8, min_fill=1000, error_buffer=100, block=64, max_batch=64)
    with pytest.raises(RateLimitError):
        RateLimit(samples_per_insert=-1, min_fill=10, error_buffer=1e9, block=64, max_batch=64)


@settings(max_examples=1000)
@example(spi=1.0, min_fill=1, block=4, batch=1, slack=1.0, inserts=0, samples=0)  # min_fill below one block
@given(
    st.floats(0.01, 64), st.integers(1, 10_000), st.integers(1, 256), st.integers(1, 1024),
    st.floats(1.0, 4.0), st.integers(0, 10**6), st.integers(0, 10**7),
)  # fmt: skip
def test_an_accepted_setting_never_blocks_both_sides(spi, min_fill, block, batch, slack, inserts, samples):
    limit = RateLimit(spi, min_fill, slack * (block * spi + batch) / 2, block, batch)
    assert limit.can_insert(inserts, samples, block) or limit.can_sample(inserts, samples, batch)


def test_the_limiter_holds_the_ratio_between_real_processes(shm_name, spawn):
    limit = RateLimit(samples_per_insert=2.0, min_fill=512, error_buffer=512, block=64, max_batch=128)
    ring = ReplayRing.create(shm_name("ring"), checked_spec(65536), limit)
    q = spawn.Queue()
    entry = ring.describe()
    procs = [spawn.Process(target=writer_proc, args=(entry, w, 150, [64], q)) for w in range(2)]
    procs.append(spawn.Process(target=sampler_proc, args=(entry, 128, 90.0, q, True)))
    try:
        for p in procs:
            p.start()
        drain(q, 2, 90, procs)
        ring.close_waiters()
        _samples, torn, _, violations = drain(q, 1, 90, procs)["sampler"]
        join_all(procs, 30)
        c = ring.counts()
        assert torn == 0 and violations == 0
        # Writers finished only because the sampler kept up: D ended inside the error buffer.
        d = c["inserts"] * 2.0 - c["samples"]
        assert limit.min_diff - 128 <= d <= limit.max_diff + 2 * 64 * 2.0, c
    finally:
        ring.close_waiters()
        ring.destroy()


def test_a_writer_ahead_of_the_sampler_blocks_until_sampling(shm_name):
    limit = RateLimit(samples_per_insert=1.0, min_fill=64, error_buffer=128, block=64, max_batch=64)
    ring = ReplayRing.create(shm_name("ring"), checked_spec(4096), limit)
    try:
        from mp_rl.shm.ring import Written
        from mp_rl.testing import make_rows

        w = ring.writer(1)
        k = 0
        while (done := w.write(make_rows(0, k, 64), timeout=0.05)) is Written.ROWS:
            k += 64
        assert done is Written.HELD and k < 4096, "the limiter never held the writer back"
        assert ring.sampler(64).sample(64, timeout=1.0) is not None
        assert w.write(make_rows(0, k, 64), timeout=1.0) is Written.ROWS  # sampling made room
    finally:
        ring.destroy()
