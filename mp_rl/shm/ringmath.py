"""Pure index arithmetic of the replay ring, kept apart so property tests can hammer it.

Sequence numbers (seq) grow forever; the slot of seq is `seq % capacity_max`. Writers reserve
whole blocks, so with `capacity_max % block == 0` a block never wraps. The live window is
`[max(cursor - capacity, trim), cursor)`: the newest `capacity` rows, minus rows already released.
"""

from __future__ import annotations

import math


def window(cursor: int, capacity: int, trim: int) -> tuple[int, int]:
    """The seqs the sampler may draw: [lo, hi)."""
    return max(cursor - capacity, trim, 0), cursor


def slot_of(seq: int, capacity_max: int) -> int:
    return seq % capacity_max


def chunk_rows(block: int, row_bytes: list[int], page: int, block_bytes: tuple[int, ...] = ()) -> int:
    """Smallest row count that is a whole number of blocks and of pages for every array.

    Releasing memory works in chunks of this many rows: a chunk of every per-row array (`row_bytes`
    a row) and of every per-block array (`block_bytes` a block) then starts and ends on page
    boundaries, so madvise frees exactly that chunk and nothing beside it.
    """
    rows = block
    for nbytes in row_bytes:
        rows = math.lcm(rows, page // math.gcd(page, nbytes))
    for nbytes in block_bytes:
        rows = math.lcm(rows, block * (page // math.gcd(page, nbytes)))
    return rows


def round_capacity_max(capacity_max: int, chunk: int) -> int:
    return max(chunk, -(-capacity_max // chunk) * chunk)


def trim_target(cursor: int, capacity: int, chunk: int) -> int:
    """New trim mark: every seq below it is outside the window, rounded down to a chunk."""
    return max(0, (cursor - capacity) // chunk * chunk)


def chunks_to_release(trim: int, new_trim: int, cursor: int, capacity_max: int, chunk: int) -> range:
    """First seqs of the chunks that [trim, new_trim) releases.

    Seqs below `cursor - capacity_max` share their slots with newer seqs, so only the last
    `capacity_max` seqs before the cursor are considered; each slot is visited at most once.
    """
    lo = max(trim, -(-(cursor - capacity_max) // chunk) * chunk)
    return range(lo, new_trim, chunk)
