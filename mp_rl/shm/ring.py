"""The shared-memory replay ring: structure-of-arrays rows, block writers, a lock-free sampler.

Write protocol (`RingWriter.write`), one block of up to `block` rows:
  1. reserve: `fetch_add(cursor, block)` -> first seq; the block's slots follow from seq.
  2. lease: CAS the block's lease word 0 -> writer token. Only a writer lapped by a full
     `capacity_max` (or a trim in progress) finds it taken; it voids its rows (counted) rather than
     share a block. One writer per block at a time is what makes the stamps below a seqlock.
  3. zero the block's stamps, fence, copy the fields (one memcpy per field), fence, then stamp
     each row with seq + 1. The stamp comes *after* the data so a stamped row is a complete row.
  4. release the lease, count the inserts, wake the sampler.
Sample protocol (`RingSampler.sample`): draw seqs in the live window, keep those whose stamp is
exactly seq + 1, fence, gather rows with np.take into preallocated tensors, fence, re-read the
stamps; a row whose stamp changed during the copy was being overwritten and is drawn again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mp_rl.shm import atomics, ringmath
from mp_rl.shm.ringio import RingSampler, RingWriter
from mp_rl.shm.segment import PAGE, Layout, Segment
from mp_rl.shm.sync import RateLimit, Wakeup

TRIM_TOKEN = -1


@dataclass(frozen=True)
class FieldSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def row_bytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.shape, dtype=np.int64)))


@dataclass(frozen=True)
class RingSpec:
    """What a ring stores: named per-row fields, the reserved maximum, the write block size."""

    fields: tuple[FieldSpec, ...]
    capacity_max: int
    block: int = 64

    @classmethod
    def for_transitions(
        cls, obs_shape, obs_dtype, capacity_max: int, block: int = 64, action_dtype="int64"
    ) -> RingSpec:
        """Rows for n-step DQN: obs, action, n-step return, discount (gamma^n, 0 at terminal), next obs."""
        obs = (tuple(obs_shape), np.dtype(obs_dtype).str)
        fields = (
            FieldSpec("obs", *obs),
            FieldSpec("action", (), np.dtype(action_dtype).str),
            FieldSpec("reward", (), "<f4"),
            FieldSpec("discount", (), "<f4"),
            FieldSpec("next_obs", *obs),
        )
        return cls(fields, capacity_max, block)

    @property
    def chunk(self) -> int:
        return ringmath.chunk_rows(self.block, [8] + [f.row_bytes for f in self.fields], PAGE)

    def normalised(self) -> RingSpec:
        cap = ringmath.round_capacity_max(self.capacity_max, self.chunk)
        return RingSpec(self.fields, cap, self.block)

    def layout(self) -> Layout:
        cap = self.capacity_max
        words = [(name, "<i8", (8,)) for name in ("cursor", "window", "inserts", "samples", "tally")]
        wakes = [("wake_sample", "<i4", (16,)), ("wake_insert", "<i4", (16,))]
        rows = [("stamps", "<i8", (cap,)), ("leases", "<i8", (cap // self.block,))]
        data = [(f"f_{f.name}", f.dtype, (cap, *f.shape)) for f in self.fields]
        return Layout.build(words + wakes + rows + data)

    def to_json(self) -> dict:
        fields = [{"name": f.name, "shape": list(f.shape), "dtype": f.dtype} for f in self.fields]
        return {"fields": fields, "capacity_max": self.capacity_max, "block": self.block}

    @classmethod
    def from_json(cls, d: dict) -> RingSpec:
        fields = tuple(FieldSpec(f["name"], tuple(f["shape"]), f["dtype"]) for f in d["fields"])
        return cls(fields, int(d["capacity_max"]), int(d["block"]))


class ReplayRing:
    """A ring in one shared segment. `create` owns it; `attach` joins from any process.

    >>> from mp_rl.shm.ring import rows_like
    >>> spec = RingSpec.for_transitions((4,), "float32", capacity_max=4096)
    >>> ring = ReplayRing.create("mp_rl.doctest.ring", spec, RateLimit(None, 1, 0, 64, 32))
    >>> ring.writer(token=1).write(rows_like(spec, 64))
    True
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
        self._window, self._tally = v["window"], v["tally"]  # window: [capacity, trim, closed]
        self._inserts, self._samples, self._cursor = v["inserts"], v["samples"], v["cursor"]
        self.cursor_addr = atomics.address_of(v["cursor"])
        self.trim_addr = atomics.address_of(v["window"], 1)
        self.inserts_addr = atomics.address_of(v["inserts"])
        self.samples_addr = atomics.address_of(v["samples"])
        self.tally_addr = atomics.address_of(v["tally"])  # [voided rows, padding rows, trims]
        self.lease_addr = atomics.address_of(self.leases)
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
        return cls(spec, limit, Segment.attach(name))

    def describe(self) -> dict:
        """The manifest entry another process needs to attach."""
        return {"segment": self.segment.name, "spec": self.spec.to_json(), "limit": self.limit.to_json()}

    @classmethod
    def from_manifest(cls, entry: dict) -> ReplayRing:
        limit = RateLimit(**entry["limit"])
        return cls.attach(entry["segment"], RingSpec.from_json(entry["spec"]), limit)

    def close_waiters(self) -> None:
        """Mark the ring closed and wake every sleeper (shutdown); waits then return at once."""
        self._window[2] = 1
        self.sample_wakeup.notify()
        self.insert_wakeup.notify()

    @property
    def closed(self) -> bool:
        return bool(self._window[2])

    def close(self) -> None:
        self.stamps = self.leases = self.fields = None  # drop views so the mapping can go
        self._window = self._tally = self._inserts = self._samples = self._cursor = None
        self.segment.close()

    def destroy(self) -> None:
        """Owner: close and unlink."""
        self.close()
        self.segment.unlink()

    # --- state --------------------------------------------------------------------------------
    # Aligned 8-byte loads are atomic on the architectures we run on; numpy reads them directly.
    @property
    def cursor(self) -> int:
        return int(self._cursor[0])

    @property
    def capacity(self) -> int:
        return int(self._window[0])

    @capacity.setter
    def capacity(self, rows: int) -> None:
        """Resize the live window (any process). Shrinking releases the memory behind it."""
        rows = int(min(max(rows, self.spec.block), self.spec.capacity_max))
        self._window[0] = rows
        atomics.fence()
        self.trim()

    @property
    def trim_mark(self) -> int:
        return int(self._window[1])

    def window(self) -> tuple[int, int]:
        return ringmath.window(self.cursor, self.capacity, self.trim_mark)

    def counts(self) -> dict[str, int]:
        t = self._tally
        return dict(
            cursor=self.cursor, inserts=int(self._inserts[0]), samples=int(self._samples[0]),
            voided=int(t[0]), padding=int(t[1]), trims=int(t[2]), capacity=self.capacity,
        )  # fmt: skip

    def size(self) -> int:
        lo, hi = self.window()
        return hi - lo

    def writer(self, token: int) -> RingWriter:
        return RingWriter(self, token)

    def sampler(self, max_batch: int, pin_memory: bool = False, seed: int | None = None) -> RingSampler:
        return RingSampler(self, max_batch, pin_memory, seed)

    # --- memory -------------------------------------------------------------------------------
    def trim(self) -> int:
        """Release the chunks behind the live window; return rows released. Safe from any process."""
        cursor, capacity, old = self.cursor, self.capacity, self.trim_mark
        new = ringmath.trim_target(cursor, capacity, self.chunk)
        if new <= old or not atomics.compare_exchange(self.trim_addr, old, new)[0]:
            return 0  # nothing to do, or another process claimed this range
        released = 0
        for seq0 in ringmath.chunks_to_release(old, new, cursor, self.spec.capacity_max, self.chunk):
            released += self._release_chunk(seq0, new)
        atomics.fetch_add(self.tally_addr + 16, 1)
        return released

    def _release_chunk(self, seq0: int, limit: int) -> int:
        slot0 = ringmath.slot_of(seq0, self.spec.capacity_max)
        block = self.spec.block
        first, nblocks = slot0 // block, self.chunk // block
        claimed = 0
        try:
            for b in range(first, first + nblocks):
                if not atomics.compare_exchange(self.lease_addr + 8 * b, 0, TRIM_TOKEN)[0]:
                    return 0  # a writer is inside: leave this chunk for later
                claimed += 1
            # With every lease held no writer is inside; a stamp above `limit` is a fresh row.
            if int(self.stamps[slot0 : slot0 + self.chunk].max()) > limit:
                return 0
            for name in ["stamps"] + [f"f_{f.name}" for f in self.spec.fields]:
                spec = self.layout[name]
                row = spec.nbytes // self.spec.capacity_max
                self.segment.release(spec.offset + slot0 * row, self.chunk * row)
            return self.chunk
        finally:
            for b in range(first, first + claimed):
                atomics.store(self.lease_addr + 8 * b, 0)

    def void_member(self, token: int) -> int:
        """Free the leases a dead writer held (its rows were never stamped); return how many."""
        held = np.flatnonzero(self.leases == token)
        for b in held:
            atomics.compare_exchange(self.lease_addr + 8 * int(b), token, 0)
        return len(held)


def rows_like(spec: RingSpec, n: int) -> dict[str, np.ndarray]:
    """Zero rows shaped for `spec` (tests and examples)."""
    return {f.name: np.zeros((n, *f.shape), dtype=f.dtype) for f in spec.fields}
