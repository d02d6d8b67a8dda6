"""Property tests for the ring's index arithmetic and window logic."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mp_rl.shm import ringmath
from mp_rl.shm.segment import PAGE

row_bytes = st.lists(st.integers(1, 100_000), min_size=1, max_size=6)
blocks = st.sampled_from([1, 8, 32, 64, 100, 128])


@given(blocks, row_bytes, st.lists(st.integers(1, 10**6), max_size=2))
def test_chunk_is_whole_blocks_and_whole_pages_for_every_array(block, sizes, per_block):
    chunk = ringmath.chunk_rows(block, sizes, PAGE, tuple(per_block))
    assert chunk % block == 0
    assert all(chunk * nbytes % PAGE == 0 for nbytes in sizes)
    assert all(chunk // block * nbytes % PAGE == 0 for nbytes in per_block)


@given(st.integers(0, 10**12), st.integers(1, 10**7), st.integers(0, 10**12))
def test_window_is_the_newest_capacity_rows_minus_released(cursor, capacity, trim):
    trim = min(trim, cursor)
    lo, hi = ringmath.window(cursor, capacity, trim)
    assert hi == cursor
    assert hi - lo <= capacity
    assert lo >= trim and lo >= 0


@given(st.integers(0, 10**9), st.integers(1, 64), blocks)
def test_block_aligned_reservations_never_wrap(block_index, chunks, block):
    capacity_max = ringmath.round_capacity_max(chunks * block * 3, block)
    seq = block_index * block
    slot = ringmath.slot_of(seq, capacity_max)
    assert slot + block <= capacity_max


@given(st.integers(0, 10**9), st.integers(64, 10**6), st.integers(1, 40), st.integers(0, 10**9))
def test_released_chunks_never_touch_the_live_window(cursor, capacity, chunks_max, trim):
    chunk = 1024
    capacity_max = chunks_max * chunk
    capacity = min(capacity, capacity_max)
    trim = min(trim, cursor) // chunk * chunk
    new = ringmath.trim_target(cursor, capacity, chunk)
    released = list(ringmath.chunks_to_release(trim, new, cursor, capacity_max, chunk))
    for seq0 in released:
        assert (
            seq0 % chunk == 0 and seq0 + chunk <= cursor - capacity
        )  # wholly behind the window, and less than capacity_max
        assert seq0 >= cursor - capacity_max  # behind the cursor: so no live seq shares its slot
    assert len({ringmath.slot_of(s, capacity_max) for s in released}) == len(released)  # ... each slot once
