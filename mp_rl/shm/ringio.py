"""The two hot paths of the replay ring: `RingWriter` (actors) and `RingSampler` (learner).

See `ring.py` for the protocol. Per block a writer makes four ctypes calls (fetch-add, CAS,
store, fetch-add) plus a wakeup; per batch the sampler makes one fetch-add and a wakeup. Every
per-row operation is a vectorised numpy call.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

from mp_rl.shm import atomics, ringmath

if TYPE_CHECKING:
    from mp_rl.shm.ring import ReplayRing

_DRAW_TRIES = 64


class RingClosed(RuntimeError):
    """The ring was closed for shutdown while a caller waited."""


class RingWriter:
    """Writes blocks of rows for one member; `token` (>= 1) marks the leases it holds."""

    def __init__(self, ring: ReplayRing, token: int):
        if token < 1:
            raise ValueError("writer token must be >= 1")
        self.ring, self.token = ring, token
        self.block = ring.spec.block
        self.last_seq = -1

    def _may_insert(self, n: int) -> bool:
        r = self.ring
        return r.closed or r.limit.can_insert(int(r._inserts[0]), int(r._samples[0]), n)

    def write(self, rows: Mapping[str, np.ndarray], timeout: float | None = None) -> bool:
        """Write up to `block` rows. False when the rate limiter held us back for `timeout` seconds.

        Returns True once the rows are in the ring, or voided and counted (the block's lease was
        taken: this writer was lapped by a full capacity_max, or a trim was releasing the block).
        """
        r = self.ring
        n = len(next(iter(rows.values())))
        if not 0 < n <= self.block:
            raise ValueError(f"a write takes 1..{self.block} rows, got {n}")
        if not r.insert_wakeup.wait_for(lambda: self._may_insert(n), 3600.0 if timeout is None else timeout):
            return False
        if r.closed:
            raise RingClosed("replay ring closed")
        seq = atomics.fetch_add(r.cursor_addr, self.block)
        slot = ringmath.slot_of(seq, r.spec.capacity_max)
        lease = r.lease_addr + 8 * (slot // self.block)
        if not atomics.compare_exchange(lease, 0, self.token)[0]:
            atomics.fetch_add(r.tally_addr, n)
            atomics.fetch_add(r.tally_addr + 8, self.block - n)
            self.last_seq = -1
            return True
        stamps = r.stamps[slot : slot + self.block]
        stamps[:] = 0  # the old rows die before the new bytes land
        atomics.fence(atomics.RELEASE)
        for name, dst in r.fields.items():
            dst[slot : slot + n] = rows[name]
        atomics.fence(atomics.RELEASE)  # every byte of the rows is visible before its stamp
        stamps[:n] = np.arange(seq + 1, seq + n + 1)
        atomics.store(lease, 0)
        atomics.fetch_add(r.inserts_addr, n)
        if n < self.block:
            atomics.fetch_add(r.tally_addr + 8, self.block - n)
        r.sample_wakeup.notify()
        self.last_seq = seq
        capacity = r.capacity
        if r.cursor - capacity - r.trim_mark >= max(r.chunk, capacity // 8):  # release in eighths
            r.trim()
        return True


class RingSampler:
    """Draws batches into preallocated tensors (pinned when asked and CUDA is present).

    The returned tensors are reused by the next `sample` call: copy or consume them first.
    """

    def __init__(self, ring: ReplayRing, max_batch: int, pin_memory: bool = False, seed: int | None = None):
        self.ring, self.max_batch = ring, max_batch
        pin = pin_memory and torch.cuda.is_available()
        self.out = {
            name: torch.empty((max_batch, *arr.shape[1:]), dtype=torch.from_numpy(arr[:0]).dtype, pin_memory=pin)
            for name, arr in ring.fields.items()
        }
        self._out_np = {name: t.numpy() for name, t in self.out.items()}
        self.seqs = np.empty(max_batch, dtype=np.int64)
        self.rng = np.random.default_rng(seed)
        self.redraws = 0

    def _may_sample(self, m: int) -> bool:
        r = self.ring
        return r.closed or r.limit.can_sample(int(r._inserts[0]), int(r._samples[0]), m)

    def sample(self, batch: int, timeout: float) -> dict[str, torch.Tensor] | None:
        """A batch of complete rows from the live window, or None if none could be had in `timeout`."""
        if not 0 < batch <= self.max_batch:
            raise ValueError(f"batch must be 1..{self.max_batch}, got {batch}")
        r = self.ring
        deadline = time.monotonic() + timeout
        while True:
            if not r.sample_wakeup.wait_for(lambda: self._may_sample(batch), max(0.0, deadline - time.monotonic())):
                return None
            if r.closed:
                raise RingClosed("replay ring closed")
            if self._fill(batch):
                break
            if time.monotonic() >= deadline:
                return None
        atomics.fetch_add(r.samples_addr, batch)
        r.insert_wakeup.notify()
        return {name: t[:batch] for name, t in self.out.items()}

    def _draw(self, rows: np.ndarray) -> bool:
        """Draw seqs for `rows` until each one's stamp says its slot holds exactly that seq."""
        r, cap_max = self.ring, self.ring.spec.capacity_max
        todo = rows
        for _ in range(_DRAW_TRIES):
            lo, hi = r.window()
            if hi <= lo:
                return False
            self.seqs[todo] = self.rng.integers(lo, hi, size=len(todo))
            todo = todo[r.stamps[self.seqs[todo] % cap_max] != self.seqs[todo] + 1]
            if len(todo) == 0:
                return True
            self.redraws += len(todo)
        return False

    def _fill(self, batch: int) -> bool:
        r, cap_max = self.ring, self.ring.spec.capacity_max
        todo = np.arange(batch)
        for attempt in range(_DRAW_TRIES):
            if not self._draw(todo):
                return False
            slots = self.seqs[todo] % cap_max
            atomics.fence(atomics.ACQUIRE)  # stamps read before the rows they vouch for
            for name, src in r.fields.items():
                if attempt == 0:
                    np.take(src, slots, axis=0, out=self._out_np[name][:batch])
                else:
                    self._out_np[name][todo] = src[slots]
            atomics.fence(atomics.ACQUIRE)  # rows read before the stamps are checked again
            todo = todo[r.stamps[slots] != self.seqs[todo] + 1]  # overwritten while we copied
            if len(todo) == 0:
                return True
            self.redraws += len(todo)
        return False
