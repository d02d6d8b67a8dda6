"""Many writer processes x many blocks with checksummed rows and a concurrent sampler.

Proves: no torn or stale row is ever sampled, no seq is lost or duplicated, counters add up;
then the same while another process raises and lowers the live capacity. Each test runs on whole
rows and on frame rows, whose every rebuilt frame names the block and position it must come from.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import drain, join_all

from mp_rl.shm.ring import ReplayRing
from mp_rl.shm.sampler import read_rows
from mp_rl.shm.sync import RateLimit
from mp_rl.testing import checked_spec, frame_spec, make_rows, resizer_proc, row_ids, sampler_proc, writer_proc

SIZES = [64, 64, 17, 64, 1, 64, 40]
# Writers may run at most ~4096 sample-units ahead, so they cannot finish unless the sampler is
# sampling while they write: the concurrency these tests claim is guaranteed, not hoped for.
PACED = RateLimit(samples_per_insert=0.5, min_fill=512, error_buffer=4096, block=64, max_batch=128)


def seq_map(records: dict[int, list]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Sorted arrays seq -> (writer, k) of every row written (not voided); and the voided row count."""
    seqs, ws, ks, voided = [], [], [], 0
    for w, recs in records.items():
        for first, k0, n in recs:
            if first < 0:
                voided += n
                continue
            seqs.append(np.arange(first, first + n))
            ws.append(np.full(n, w))
            ks.append(np.arange(k0, k0 + n))
    seqs, ws, ks = (np.concatenate(a) for a in (seqs, ws, ks))
    order = np.argsort(seqs)
    return seqs[order], ws[order], ks[order], voided


def verify(ring: ReplayRing, records: dict, sampled: tuple) -> None:
    samples, torn, rows, _ = sampled
    assert torn == 0, f"{torn} torn rows sampled"
    seqs, ws, ks, voided = seq_map(records)
    assert len(np.unique(seqs)) == len(seqs), "a seq was handed to two writes"
    # Every sampled row is exactly the row written for the seq it was drawn as: never stale.
    assert len(rows) > 0
    at = np.searchsorted(seqs, rows[:, 0])
    assert (seqs[at] == rows[:, 0]).all(), "sampled a seq nobody wrote"
    assert (ws[at] == rows[:, 1]).all() and (ks[at] == rows[:, 2]).all(), "sampled a stale or foreign row"
    c = ring.counts()
    assert c["inserts"] == len(seqs) and c["voided"] == voided
    assert c["cursor"] == c["inserts"] + c["voided"] + c["padding"], c
    assert c["samples"] == samples
    # No seq lost: every written seq inside the final live window is stamped and intact.
    lo, hi = ring.window()
    live = seqs[(seqs >= lo) & (seqs < hi)]
    kept, got = read_rows(ring, live)
    assert len(kept) == len(live), "a written seq inside the window is missing"
    writer, k = row_ids(got)
    assert (writer == ws[(seqs >= lo) & (seqs < hi)]).all() and (k == ks[(seqs >= lo) & (seqs < hi)]).all()


def run_stress(spawn, ring: ReplayRing, writers: int, blocks: int, extra=(), timeout: float = 90.0):
    q = spawn.Queue()
    entry = ring.describe()
    procs = [
        spawn.Process(target=writer_proc, args=(entry, w, blocks, SIZES, q), name=f"writer-{w}") for w in range(writers)
    ]
    procs.append(spawn.Process(target=sampler_proc, args=(entry, 128, timeout, q), name="sampler"))
    procs += [spawn.Process(target=fn, args=(entry, *args), name=fn.__name__) for fn, args in extra]
    for p in procs:
        p.start()
    try:
        records = drain(q, writers, timeout, procs)
        ring.close_waiters()  # writers are done: let the sampler finish
        sampled = drain(q, 1, timeout, procs)["sampler"]
        join_all(procs, timeout)
    finally:
        ring.close_waiters()
    return records, sampled


SPECS = pytest.mark.parametrize("spec", [checked_spec, frame_spec], ids=["rows", "frames"])


@SPECS
def test_many_writers_and_a_sampler_never_tear_lose_or_duplicate(shm_name, spawn, spec):
    ring = ReplayRing.create(shm_name("ring"), spec(65536), PACED)
    try:
        records, sampled = run_stress(spawn, ring, writers=4, blocks=150)
        verify(ring, records, sampled)
        assert ring.window() == (0, ring.cursor)  # nothing wrapped: every written row is still there
    finally:
        ring.destroy()


@SPECS
def test_capacity_raised_and_lowered_under_load_serves_only_live_complete_rows(shm_name, spawn, spec):
    ring = ReplayRing.create(shm_name("ring"), spec(16384), PACED)
    try:
        resize = (resizer_proc, ([2048, 16384, 4096, 12000, 1024], 0.03, 4.0))
        records, sampled = run_stress(spawn, ring, writers=3, blocks=400, extra=[resize])
        verify(ring, records, sampled)
        assert ring.counts()["trims"] > 0, "capacity moves should have released memory"
    finally:
        ring.destroy()


@pytest.mark.parametrize("capacity_max", [4096])
def test_wrapping_many_times_keeps_counts(shm_name, capacity_max):
    ring = ReplayRing.create(shm_name("ring"), checked_spec(capacity_max), RateLimit(None, 1, 0, 64, 128))
    try:
        w, k = ring.writer(1), 0
        for i in range(400):
            n = SIZES[i % len(SIZES)]
            w.write(make_rows(0, k, n))
            k += n
        c = ring.counts()
        assert c["cursor"] == c["inserts"] + c["padding"] and c["inserts"] == k
        assert ring.cursor > 4 * capacity_max
    finally:
        ring.destroy()


@SPECS
def test_hot_window_where_every_draw_races_a_writer(shm_name, spawn, spec):
    """A 1024-row ring kept full: the oldest rows in the window are overwritten while being read."""
    ring = ReplayRing.create(shm_name("ring"), spec(1024), PACED)
    try:
        records, sampled = run_stress(spawn, ring, writers=3, blocks=1500)
        verify(ring, records, sampled)
    finally:
        ring.destroy()
