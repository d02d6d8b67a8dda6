"""The shared-memory replay ring: structure-of-arrays rows, block writers, a lock-free sampler.

Sequence numbers (seq) grow forever; the slot of seq is `seq % capacity_max` (see `ringmath`). The
live window is `[max(cursor - capacity, trim), cursor)`.

Write protocol (`RingWriter.write`), one block of up to `block` rows:
  1. reserve: `fetch_add(cursor, block)` -> first seq; the block's slots follow from seq.
  2. lease: CAS the block's lease word 0 -> writer token. Only a writer lapped by a full
     `capacity_max` (or a trim in progress) finds it taken; it voids its rows (counted) rather than
     share a block. One writer per block at a time is what makes the stamps below a seqlock.
  3. zero the block's stamps, fence, copy the fields (one memcpy per field; frame rows also fill
     the block's frame area, `frames.py`), fence, then stamp each row with seq + 1. The stamp comes
     *after* the data so a stamped row is a complete row.
  4. release the lease, count the inserts, wake the sampler.
The sample protocol, the reader's side of these stamps, is written beside its code in `sampler.py`.
Trim protocol (`ReplayRing.trim`): one trimmer at a time (a CAS on the trimmer word); each chunk
behind the window is released only while the trimmer holds every lease in it; the trim mark moves
up to the first chunk it could not take, so that chunk is revisited by the next trim.

Per block a writer makes four ctypes calls (fetch-add, CAS, store, fetch-add) plus a wakeup. Every
per-row operation is vectorised numpy.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import numpy as np

from mp_rl.shm import atomics, ringmath
from mp_rl.shm.ringspec import FieldSpec, RingClosed, RingSpec, rows_like
from mp_rl.shm.sampler import Prioritized, RingSampler
from mp_rl.shm.segment import Segment
from mp_rl.shm.sync import RateLimit, Wakeup

__all__ = ["FieldSpec", "ReplayRing", "RingClosed", "RingSampler", "RingSpec", "RingWriter", "Written", "rows_like"]

_WINDOW = ("capacity", "trim", "closed", "trimmer")  # words of the `window` array

TRIM_TOKEN = -1  # the token of a trim by a process that writes no rows (the supervisor's capacity moves)
_TALLIES = ("voided", "padding", "trims")  # rows voided, padding rows of partial blocks, trims done


class Written(enum.IntEnum):
    """What `RingWriter.write` did with a block. HELD is falsy, so `while not w.write(...)` waits."""

    HELD = 0  # the rate limiter held the block back for the whole timeout: nothing written, try again
    ROWS = 1  # the rows are in the ring, stamped
    VOIDED = 2  # the block's lease was taken (lapped, or a trim releasing it): the rows were dropped, counted


class ReplayRing:
    """A ring in one shared segment. `create` owns it; `attach` joins from any process.

    >>> spec = RingSpec.for_transitions((4,), "float32", capacity_max=4096)
    >>> ring = ReplayRing.create("mp_rl.doctest.ring", spec, RateLimit(None, 1, 0, 64, 32))
    >>> ring.writer(token=1).write(rows_like(spec, 64))
    <Written.ROWS: 1>
    >>> ring.sampler(max_batch=32).sample(32, timeout=1.0)["obs"].shape
    torch.Size([32, 4])
    >>> ring.destroy()
    """

    def __init__(self, spec: RingSpec, limit: RateLimit, segment: Segment):
        self.spec, self.limit, self.segment = spec, limit, segment
        self.layout = spec.layout()
        v = self.layout.views(segment.buf)
        self.stamps, self.leases = v["stamps"], v["leases"]
        self.fields = {f.name: v[f"f_{f.name}"] for f in spec.fields}
        self.frames = v["frames"] if spec.frames else None  # every block's frame area, back to back
        self._window, self._tally = v["window"], v["tally"]
        self._inserts, self._samples, self._cursor = v["inserts"], v["samples"], v["cursor"]
        self._addr = {name: atomics.address_of(v[name]) for name in ("cursor", "inserts", "samples", "tally")}
        self._trim_addr = atomics.address_of(v["window"], _WINDOW.index("trim"))
        self._trimmer_addr = atomics.address_of(v["window"], _WINDOW.index("trimmer"))
        self._lease_addr = atomics.address_of(self.leases)
        self.sample_wakeup = Wakeup(atomics.address_of(v["wake_sample"]))
        self.insert_wakeup = Wakeup(atomics.address_of(v["wake_insert"]))
        self.chunk = spec.chunk

    # --- lifecycle ----------------------------------------------------------------------------
    @classmethod
    def create(cls, name: str, spec: RingSpec, limit: RateLimit, capacity: int | None = None) -> ReplayRing:
        spec = spec.normalised()
        ring = cls(spec, limit, Segment.create(name, spec.layout().size))
        ring.capacity = capacity or spec.capacity_max
        return ring

    @classmethod
    def attach(cls, name: str, spec: RingSpec, limit: RateLimit) -> ReplayRing:
        return cls(spec, limit, Segment.attach(name, spec.layout().size))

    def describe(self) -> dict:
        """The manifest entry another process needs to attach."""
        return {"segment": self.segment.name, "spec": self.spec.to_json(), "limit": self.limit.to_json()}

    @classmethod
    def from_manifest(cls, entry: dict) -> ReplayRing:
        limit = RateLimit(**entry["limit"])
        return cls.attach(entry["segment"], RingSpec.from_json(entry["spec"]), limit)

    def close_waiters(self) -> None:
        """Mark the ring closed and wake every sleeper (shutdown); waits then return at once."""
        self._window[_WINDOW.index("closed")] = 1
        self.sample_wakeup.notify()
        self.insert_wakeup.notify()

    @property
    def closed(self) -> bool:
        return bool(self._window[_WINDOW.index("closed")])

    def close(self) -> None:
        self.stamps = self.leases = self.fields = self.frames = None  # drop views so the mapping can go
        self._window = self._tally = self._inserts = self._samples = self._cursor = None
        self.segment.close()

    def destroy(self) -> None:
        """Owner: close and unlink."""
        self.close()
        self.segment.unlink()

    # --- counters and window ------------------------------------------------------------------
    # Aligned 8-byte loads are atomic on the architectures we run on; numpy reads them directly.
    @property
    def cursor(self) -> int:
        return int(self._cursor[0])

    @property
    def inserts(self) -> int:
        return int(self._inserts[0])

    @property
    def samples(self) -> int:
        return int(self._samples[0])

    def add(self, name: str, n: int) -> None:
        """Add to `inserts` or `samples`: only the writer and the sampler do."""
        atomics.fetch_add(self._addr[name], n)

    def tally(self, name: str, n: int) -> None:
        """Count `n` rows (or events) under one of `voided`, `padding`, `trims`."""
        atomics.fetch_add(self._addr["tally"] + 8 * _TALLIES.index(name), n)

    @property
    def capacity(self) -> int:
        return int(self._window[0])

    @capacity.setter
    def capacity(self, rows: int) -> None:
        """Resize the live window (any process). Shrinking releases the memory behind it."""
        rows = int(min(max(rows, self.spec.block), self.spec.capacity_max))
        self._window[0] = rows
        atomics.fence()  # the new capacity is visible before the trim that acts on it
        self.trim()

    @property
    def trim_mark(self) -> int:
        return int(self._window[_WINDOW.index("trim")])

    def window(self) -> tuple[int, int]:
        return ringmath.window(self.cursor, self.capacity, self.trim_mark)

    def counts(self) -> dict[str, int]:
        tallies = {name: int(self._tally[i]) for i, name in enumerate(_TALLIES)}
        return dict(cursor=self.cursor, inserts=self.inserts, samples=self.samples, **tallies, capacity=self.capacity)

    def size(self) -> int:
        lo, hi = self.window()
        return hi - lo

    def writer(self, token: int) -> RingWriter:
        return RingWriter(self, token)

    def sampler(
        self, max_batch: int, pin_memory: bool = False, seed: int | None = None, priorities: Prioritized | None = None
    ) -> RingSampler:
        return RingSampler(self, max_batch, pin_memory, seed, priorities)

    # --- leases -------------------------------------------------------------------------------
    def _reserve(self, rows: int) -> int:
        """Take the next `rows` seqs for one writer: one fetch-add; the first seq taken."""
        return atomics.fetch_add(self._addr["cursor"], rows)

    def _take_lease(self, block: int, token: int) -> bool:
        return atomics.compare_exchange(self._lease_addr + 8 * block, 0, token)[0]

    def _drop_lease(self, block: int) -> None:
        atomics.store(self._lease_addr + 8 * block, 0)

    def void_member(self, token: int) -> int:
        """Free the leases (and a trim) a dead writer held; its rows were never stamped. Returns how many."""
        held = np.flatnonzero(self.leases == token)
        for b in held:
            atomics.compare_exchange(self._lease_addr + 8 * int(b), token, 0)
        atomics.compare_exchange(self._trimmer_addr, token, 0)
        return len(held)

    # --- memory -------------------------------------------------------------------------------
    def trim(self, token: int = TRIM_TOKEN) -> int:
        """Release the chunks behind the live window; return rows released. Safe from any process.

        One trimmer at a time: another process already trimming makes this a no-op. The mark moves
        only up to the first chunk whose leases were busy, so that chunk is released next time."""
        if not atomics.compare_exchange(self._trimmer_addr, 0, token)[0]:
            return 0
        try:
            cursor, old = self.cursor, self.trim_mark
            new = ringmath.trim_target(cursor, self.capacity, self.chunk)
            if new <= old:
                return 0
            released, mark = 0, new
            for seq0 in ringmath.chunks_to_release(old, new, cursor, self.spec.capacity_max, self.chunk):
                done = self._release_chunk(seq0, new, token)
                if done is None:  # a writer is inside: come back to this chunk
                    mark = seq0
                    break
                released += done
            atomics.store(self._trim_addr, mark)
            self.tally("trims", 1)
            return released
        finally:
            atomics.store(self._trimmer_addr, 0)

    def _release_chunk(self, seq0: int, limit: int, token: int) -> int | None:
        """Rows released; 0 when the slots already hold newer rows; None when a lease was busy.

        The chunk's leases are taken with the trimmer's own token: a writer killed inside a long
        release leaves them under its token, and voiding the dead member frees them with the rest."""
        slot0 = ringmath.slot_of(seq0, self.spec.capacity_max)
        block = self.spec.block
        first, nblocks = slot0 // block, self.chunk // block
        claimed = 0
        try:
            for b in range(first, first + nblocks):
                if not self._take_lease(b, token):
                    return None
                claimed += 1
            # With every lease held no writer is inside; a stamp above `limit` is a fresh row.
            if int(self.stamps[slot0 : slot0 + self.chunk].max()) > limit:
                return 0
            for name in ["stamps"] + [f"f_{f.name}" for f in self.spec.fields]:
                spec = self.layout[name]
                row = spec.nbytes // self.spec.capacity_max
                self.segment.release(spec.offset + slot0 * row, self.chunk * row)
            if self.spec.frames is not None:
                area = self.spec.frames.block_bytes
                self.segment.release(self.layout["frames"].offset + first * area, nblocks * area)
            return self.chunk
        finally:
            for b in range(first, first + claimed):
                self._drop_lease(b)


class RingWriter:
    """Writes blocks of rows for one member; `token` (>= 1) marks the leases it holds."""

    def __init__(self, ring: ReplayRing, token: int):
        if token < 1:
            raise ValueError("writer token must be >= 1")
        self.ring, self.token = ring, token
        self.block = ring.spec.block
        self.last_seq = -1

    def _check_shapes(self, rows: Mapping[str, np.ndarray], n: int, frames: np.ndarray | None) -> None:
        spec = self.ring.spec
        for f in spec.fields:
            got = np.shape(rows[f.name])
            if got != (n, *f.shape):
                raise ValueError(
                    f"field {f.name!r}: rows of shape {got}, the ring stores ({n}, {', '.join(map(str, f.shape))})"
                )
        if frames is not None and tuple(frames.shape[1:]) != tuple(spec.frames.shape):
            raise ValueError(f"frames of shape {tuple(frames.shape[1:])}, the ring stores {tuple(spec.frames.shape)}")

    def _may_insert(self, n: int) -> bool:
        r = self.ring
        return r.closed or r.limit.can_insert(r.inserts, r.samples, n)

    def write(
        self, rows: Mapping[str, np.ndarray], timeout: float | None = None, frames: np.ndarray | None = None,
        limited: bool = True,
    ) -> Written:  # fmt: skip
        """Write up to `block` rows (and, frame rows, the block's frames: up to `area` of them, from
        position 0). `Written.HELD` (falsy) when the rate limiter held us back for `timeout` seconds;
        `ROWS` once the rows are in the ring; `VOIDED` when they were dropped and counted (the block's
        lease was taken: this writer was lapped by a full capacity_max, or a trim was releasing it).
        """
        r = self.ring
        n = len(rows[r.spec.fields[0].name])
        if not 0 < n <= self.block:
            raise ValueError(f"a write takes 1..{self.block} rows, got {n}")
        if (frames is None) != (r.frames is None) or (frames is not None and len(frames) > r.spec.frames.area):
            raise ValueError("frame rows need their block's frames (at most one area), other rows none")
        self._check_shapes(rows, n, frames)  # before the lease: a copy that raised would keep it
        # `limited=False` (a saved replay restored before any sample) passes the rate limiter by.
        if limited and not r.insert_wakeup.wait_for(
            lambda: self._may_insert(n), 3600.0 if timeout is None else timeout
        ):
            return Written.HELD
        if r.closed:
            raise RingClosed("replay ring closed")
        seq = r._reserve(self.block)
        slot = ringmath.slot_of(seq, r.spec.capacity_max)
        lease = slot // self.block
        if not r._take_lease(lease, self.token):
            r.tally("voided", n)
            r.tally("padding", self.block - n)
            self.last_seq = -1
            return Written.VOIDED
        stamps = r.stamps[slot : slot + self.block]
        stamps[:] = 0  # the old rows die before the new bytes land
        atomics.fence(atomics.RELEASE)  # the zeroed stamps are visible before any new byte
        try:
            for name, dst in r.fields.items():
                dst[slot : slot + n] = rows[name]
            if frames is not None:  # the block's own area: only rows of this block ever read it
                area = r.spec.frames.area
                r.frames[lease * area : lease * area + len(frames)] = frames
            atomics.fence(atomics.RELEASE)  # every byte of the rows is visible before its stamp
            stamps[:n] = np.arange(seq + 1, seq + n + 1)
        except BaseException:  # e.g. a value numpy cannot cast: the block stays unstamped, the lease goes
            r.tally("voided", n)
            r.tally("padding", self.block - n)
            raise
        finally:
            r._drop_lease(lease)
        r.add("inserts", n)
        if n < self.block:
            r.tally("padding", self.block - n)
        r.sample_wakeup.notify()
        self.last_seq = seq
        capacity = r.capacity
        if r.cursor - capacity - r.trim_mark >= max(r.chunk, capacity // 8):  # release in eighths
            r.trim(self.token)
        return Written.ROWS
