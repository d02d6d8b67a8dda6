"""A ring's live window saved at a clean stop and written back into a new ring: the same rows in the
same order, frames once, the newest that fit a smaller ring, a balanced rate limiter, a refused misfit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mp_rl.shm import ringsave
from mp_rl.shm.ring import ReplayRing
from mp_rl.shm.sampler import read_rows
from mp_rl.shm.sync import RateLimit
from mp_rl.testing import check_frame_rows, check_rows, checked_spec, frame_spec, make_frame_block, make_rows

OPEN = RateLimit(None, 1, 0, 64, 256)


@pytest.fixture
def ring(shm_name):
    """`ring(spec, limit, capacity)`: a new ring, destroyed after the test."""
    made = []

    def make(spec, limit=OPEN, capacity=None) -> ReplayRing:
        made.append(ReplayRing.create(shm_name(f"r{len(made)}"), spec, limit, capacity))
        return made[-1]

    yield make
    for r in made:
        r.destroy()


def _same_rows(src, dst, names=None) -> dict[str, np.ndarray]:
    """Assert `dst` holds `src`'s window row for row, in order (fields `names`, default all); dst's rows."""
    want, got = _rows_in_order(src), _rows_in_order(dst)
    for name in names or want:
        assert np.array_equal(got[name], want[name]), name
    return got


def _rows_in_order(ring) -> dict[str, np.ndarray]:
    return read_rows(ring, np.arange(*ring.window()))[1]


def test_a_saved_window_comes_back_row_for_row_in_order(tmp_path, ring):
    """Capacity 1024 of 4096 after 40 blocks, some partial: the window (not what was trimmed or
    overwritten) is written back whole, oldest first, stamped by the writer protocol."""
    src, dst = ring(checked_spec(4096), capacity=1024), ring(checked_spec(4096), capacity=1024)
    w, k = src.writer(1), 0
    for b in range(40):
        n = 64 - b % 5
        w.write(make_rows(0, k, n))
        k += n
    saved = ringsave.save(src, tmp_path)
    assert saved["rows"] == len(_rows_in_order(src)["obs"]) and (tmp_path / "replay" / "replay.json").exists()
    assert ringsave.load(dst, tmp_path) == saved["rows"]
    _same_rows(src, dst)
    batch = dst.sampler(256, seed=0).sample(256, timeout=1.0)
    assert check_rows(batch).all()


def test_frame_rows_keep_their_frames_once_and_rebuild_the_same_observations(tmp_path, ring):
    src, dst = ring(frame_spec(8192)), ring(frame_spec(8192))
    w = src.writer(1)
    for b in range(30):
        rows, frames = make_frame_block(0, 64 * b, 64 - b % 3)
        w.write(rows, frames=frames)
    saved = ringsave.save(src, tmp_path)
    spec = src.spec
    assert saved["bytes"] < 1.2 * (saved["rows"] * sum(f.row_bytes for f in spec.fields)
                                   + saved["blocks"] * spec.frames.block_bytes) + 8192  # fmt: skip
    assert ringsave.load(dst, tmp_path) == saved["rows"]
    got = _same_rows(src, dst, ("obs", "next_obs", "action", "reward"))
    assert check_frame_rows({k: torch.as_tensor(v) for k, v in got.items()}).all()


def test_a_smaller_ring_takes_the_newest_rows_and_the_rate_limiter_starts_balanced(tmp_path, ring):
    limit = RateLimit(4.0, 256, 2048, 64, 64)
    src, dst = ring(checked_spec(4096)), ring(checked_spec(4096), limit, capacity=512)
    w = src.writer(1)
    for b in range(32):
        w.write(make_rows(0, 64 * b, 64))
    ringsave.save(src, tmp_path)
    assert ringsave.load(dst, tmp_path) == 512
    assert np.array_equal(_rows_in_order(dst)["obs"][:, 1], np.arange(2048 - 512, 2048))  # the newest 512
    d = dst.inserts * 4.0 - dst.samples
    assert d == pytest.approx(limit.min_fill * 4.0)  # the limiter's centre: neither side bursts
    assert limit.can_insert(dst.inserts, dst.samples, 64) and limit.can_sample(dst.inserts, dst.samples, 64)


def test_a_replay_saved_for_another_ring_or_damaged_is_refused(tmp_path, ring):
    src, other = ring(checked_spec(4096)), ring(frame_spec(4096))
    src.writer(1).write(make_rows(0, 0, 64))
    ringsave.save(src, tmp_path)
    with pytest.raises(ringsave.ReplayFileError, match="another ring"):
        ringsave.load(other, tmp_path)
    np.save(tmp_path / "replay" / "blocks.npy", np.array([65]))  # more rows than a block holds
    with pytest.raises(ringsave.ReplayFileError, match="rows"):
        ringsave.load(src, tmp_path)
    np.save(tmp_path / "replay" / "blocks.npy", np.array([64]))
    np.save(tmp_path / "replay" / "obs.npy", np.zeros((64, 5), np.float32))  # another shape
    with pytest.raises(ringsave.ReplayFileError, match="'obs'"):
        ringsave.load(src, tmp_path)
    (tmp_path / "replay" / "reward.npy").write_bytes(b"\x93NUMPY damaged")
    with pytest.raises(ringsave.ReplayFileError, match="cannot be restored"):
        ringsave.load(src, tmp_path)
    assert ringsave.load(src, tmp_path / "nothing saved") == 0
