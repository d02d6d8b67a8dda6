"""The replay ring in one process: write/sample, stamps and window, partial blocks, voids, memory."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mp_rl.shm.ring import ReplayRing, RingSpec, Written, rows_like
from mp_rl.shm.segment import PAGE
from mp_rl.shm.sync import RateLimit
from mp_rl.testing import check_rows, checked_spec, make_rows

OPEN = RateLimit(None, 1, 0, 64, 256)


@pytest.fixture
def ring(shm_name):
    r = ReplayRing.create(shm_name("ring"), checked_spec(8192), OPEN)
    yield r
    r.destroy()


def test_written_rows_come_back_whole_and_counted(ring):
    w = ring.writer(token=1)
    for b in range(10):
        assert w.write(make_rows(0, 64 * b, 64))
    s = ring.sampler(max_batch=256, seed=0)
    batch = s.sample(256, timeout=1.0)
    assert check_rows(batch).all()
    seqs = s.seqs[:256]
    assert np.array_equal(batch["obs"][:, 1].numpy().astype(np.int64), seqs)  # writer 0 wrote k == seq
    assert ring.counts()["inserts"] == 640 and ring.counts()["samples"] == 256


def test_uint8_images_stay_uint8(shm_name):
    spec = RingSpec.for_transitions((4, 84, 84), "uint8", capacity_max=2048)
    ring = ReplayRing.create(shm_name("ring"), spec, OPEN)
    try:
        assert ring.fields["obs"].dtype == np.uint8
        rows = rows_like(spec, 64)
        rows["obs"][:] = 200
        ring.writer(1).write(rows)
        batch = ring.sampler(32).sample(32, timeout=1.0)
        assert batch["obs"].dtype.is_floating_point is False and int(batch["obs"].max()) == 200
    finally:
        ring.destroy()


def test_partial_block_pads_and_never_serves_padding(ring):
    w = ring.writer(token=1)
    w.write(make_rows(0, 0, 10))
    c = ring.counts()
    assert (c["cursor"], c["inserts"], c["padding"]) == (64, 10, 54)
    s = ring.sampler(128, seed=0)
    s.sample(128, timeout=1.0)
    assert set(s.seqs[:128].tolist()) <= set(range(10))


def test_sampler_draws_only_inside_the_live_window(ring):
    w = ring.writer(token=1)
    for b in range(64):  # 4096 rows
        w.write(make_rows(0, 64 * b, 64))
    ring.capacity = 1024
    s = ring.sampler(256, seed=0)
    for _ in range(20):
        s.sample(256, timeout=1.0)
        assert s.seqs[:256].min() >= 4096 - 1024


def test_stale_slot_is_rejected_by_its_stamp(ring):
    w = ring.writer(token=1)
    assert w.write(make_rows(0, 0, 64)) is Written.ROWS
    ring.stamps[:64] = 0  # as if a writer were mid-block on every row
    assert ring.sampler(8).sample(8, timeout=0.2) is None


def test_lapped_writer_voids_instead_of_sharing_a_block(ring):
    w = ring.writer(token=1)
    ring.leases[0] = 99  # another writer holds block 0
    assert w.write(make_rows(0, 0, 64)) is Written.VOIDED
    assert w.last_seq == -1
    assert ring.counts()["voided"] == 64 and ring.counts()["inserts"] == 0
    assert ring.void_member(99) == 1 and ring.leases[0] == 0


def test_capacity_is_clamped_to_block_and_reserved_maximum(ring):
    ring.capacity = 1
    assert ring.capacity == ring.spec.block
    ring.capacity = 10**12
    assert ring.capacity == ring.spec.capacity_max


@pytest.mark.parametrize("kind", ["rows", "frames"])
def test_shrinking_capacity_returns_memory(shm_name, kind):
    """Frame rows: the frame areas of the released blocks go too (most of what a frame row costs)."""
    if kind == "rows":
        spec = RingSpec.for_transitions((64,), "float32", capacity_max=65536)
    else:
        spec = RingSpec.for_frames((16, 16), "uint8", 4, 3, capacity_max=65536).normalised()
    ring = ReplayRing.create(shm_name("ring"), spec, OPEN)
    try:
        w, rows = ring.writer(1), rows_like(spec, 64)
        frames = np.ones((spec.frames.area, 16, 16), np.uint8) if spec.frames else None
        for _ in range(spec.capacity_max // 64):
            w.write(rows, frames=frames)
        full = ring.segment.allocated_bytes()
        ring.capacity = 4096
        small = ring.segment.allocated_bytes()
        row = spec.bytes_per_row
        assert full - small >= 0.8 * row * (spec.capacity_max - 4096), (full, small)
        for _ in range(spec.capacity_max // 64):  # keep writing: the trimmed footprint holds
            w.write(rows, frames=frames)
        assert ring.segment.allocated_bytes() <= small + row * 4096 + 64 * PAGE
        s = ring.sampler(256)
        assert s.sample(256, timeout=1.0) is not None
    finally:
        ring.destroy()


def test_attach_by_name_sees_the_same_rows(ring):
    other = ReplayRing.from_manifest(ring.describe())
    try:
        ring.writer(1).write(make_rows(3, 0, 64))
        batch = other.sampler(16).sample(16, timeout=1.0)
        assert check_rows(batch).all() and (batch["obs"][:, 0] == 3).all()
    finally:
        other.close()


def test_write_rejects_oversized_block(ring):
    with pytest.raises(ValueError, match=r"1\.\.64 rows"):
        ring.writer(1).write(make_rows(0, 0, 65))


class SlowRows(dict):
    """Rows whose fields arrive slowly, so a block stays half-written for ~100 ms."""

    def __getitem__(self, key):
        if key != "obs":
            time.sleep(0.025)
        return super().__getitem__(key)


def test_a_block_being_written_is_never_served(shm_name):
    ring = ReplayRing.create(shm_name("ring"), checked_spec(1024), OPEN)
    try:
        w0 = ring.writer(1)
        for b in range(1024 // 64):  # fill every slot with writer 0's rows: seq == k
            w0.write(make_rows(0, 64 * b, 64))
        ring.capacity = 128  # window: the last full block plus the block about to be written
        slow = threading.Thread(target=ring.writer(2).write, args=(SlowRows(make_rows(1, 0, 64)),))
        slow.start()
        s, served_new = ring.sampler(64, seed=0), 0
        while slow.is_alive():
            batch = s.sample(64, timeout=1.0)
            assert check_rows(batch).all(), "served a half-written row"
            seqs, obs = s.seqs[:64], batch["obs"].numpy()
            new = seqs >= 1024
            if ring.stamps[:64].max() == 0:  # still unstamped after the sample returned
                served_new += int(new.sum())
            assert (obs[new, 0] == 1).all() and (obs[new, 1] == seqs[new] - 1024).all()
            assert (obs[~new, 0] == 0).all() and (obs[~new, 1] == seqs[~new]).all(), "served a stale row"
        slow.join()
        assert served_new == 0, "rows of the unfinished block were served"
        s.sample(64, timeout=1.0)
        assert (s.seqs[:64] >= 1024).any()  # once stamped, the block is served
    finally:
        ring.destroy()


def _trim_and_hang(entry: dict, token: int, inside) -> None:
    """A writer whose trim hangs while it releases memory (a large MADV_REMOVE taking long)."""
    ring = ReplayRing.from_manifest(entry)

    def hang(offset: int, nbytes: int) -> None:
        inside.set()
        time.sleep(120)

    ring.segment.release = hang
    w, k = ring.writer(token), 0
    while True:
        w.write(make_rows(token, k, 64))
        k += 64


def test_a_writer_killed_while_trimming_leaves_no_lease_held(shm_name, spawn):
    """The chunk's leases a trim holds belong to the trimmer, so voiding the dead member frees them:
    no block stays leased, later writes are not voided and later trims release memory."""
    ring = ReplayRing.create(shm_name("ring"), checked_spec(8192), OPEN, capacity=2048)
    try:
        inside = spawn.Event()
        p = spawn.Process(target=_trim_and_hang, args=(ring.describe(), 5, inside), daemon=True)
        p.start()
        assert inside.wait(60), "the writer never trimmed"
        p.kill()
        p.join(10)
        ring.void_member(5)
        assert int((ring.leases != 0).sum()) == 0, f"leases still held: {sorted(set(ring.leases[ring.leases != 0]))}"
        voided, trims = ring.counts()["voided"], ring.counts()["trims"]
        w = ring.writer(1)
        for b in range(3 * 8192 // 64):  # three laps of the whole ring
            w.write(make_rows(1, 64 * b, 64))
        assert ring.counts()["voided"] == voided
        assert ring.counts()["trims"] > trims and ring.trim_mark >= ring.cursor - 2048 - ring.chunk - 8192 // 8
    finally:
        ring.destroy()


def test_a_write_that_raises_leaves_no_lease_and_no_row(ring):
    """A field of the wrong shape is refused before anything is reserved; a copy that fails anyway
    (a value numpy cannot store) drops its lease and counts its rows as voided."""
    w = ring.writer(1)
    wide = make_rows(0, 0, 64)
    wide["obs"] = np.zeros((64, 5), np.float32)
    with pytest.raises(ValueError) as e:
        w.write(wide)
    assert int((ring.leases != 0).sum()) == 0 and ring.cursor == 0
    assert "'obs'" in str(e.value)
    bad = make_rows(0, 0, 64)
    bad["obs"] = np.full((64, 4), "x", dtype=object)
    with pytest.raises((TypeError, ValueError)):
        w.write(bad)
    assert int((ring.leases != 0).sum()) == 0 and ring.counts()["voided"] == 64
    assert w.write(make_rows(0, 64, 64)) and ring.counts()["inserts"] == 64
    s = ring.sampler(64, seed=0)
    assert check_rows(s.sample(64, timeout=1.0)).all()
