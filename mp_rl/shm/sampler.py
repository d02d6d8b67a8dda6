"""The learner's side of the replay ring: `RingSampler` draws batches of complete rows, lock-free.

Sample protocol (`RingSampler.sample`): draw seqs in the live window, keep those whose stamp is
exactly seq + 1, fence, gather rows with np.take into preallocated tensors, fence, re-read the
stamps; a row whose stamp changed during the copy was being overwritten and is drawn again. The
writer stamps a row only after its bytes (`ring.py`), and zeroes the stamps before overwriting,
so a row that passes both stamp reads is whole and is the row its seq names. Frame rows rebuild
`obs` and `next_obs` between the same two reads, from frames of the row's own block only
(`frames.py`), so the stamps vouch for those frames too. Per batch the sampler makes one fetch-add
and a wakeup; every per-row operation is vectorised numpy.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mp_rl.shm import atomics
from mp_rl.shm.frames import FrameGather, stack_indices
from mp_rl.shm.ringspec import RingClosed

if TYPE_CHECKING:
    # torch is imported by a sampler's constructor, not with the module: the tools that read the ring
    # (inspect) start without it. The ring constructs its samplers; this module never needs it at run time.
    import torch

    from mp_rl.shm.ring import ReplayRing


class Prioritized(Protocol):
    """How a prioritized sampler draws (the learner's `agent.priorities.Priorities`)."""

    def draw(self, lo: int, hi: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]: ...
    def void(self, seqs: np.ndarray) -> None: ...
    def weights(self, probs: np.ndarray) -> np.ndarray: ...


_DRAW_TRIES = 64


class RingSampler:
    """Draws batches into preallocated tensors (pinned when asked and CUDA is present).

    The returned tensors are reused by the next `sample` call: copy or consume them first.
    """

    def __init__(
        self, ring: ReplayRing, max_batch: int, pin_memory: bool = False, seed: int | None = None,
        priorities: Prioritized | None = None,
    ):  # fmt: skip
        import torch

        self.ring, self.max_batch, self.priorities = ring, max_batch, priorities
        pin = pin_memory and torch.cuda.is_available()
        self.out = {
            f.name: torch.from_numpy(np.empty(0, f.dtype)).new_empty((max_batch, *f.shape), pin_memory=pin)
            for f in ring.spec.batch_fields()
        }
        if priorities is not None:  # each row's importance weight, and its seq for the priority update
            self.out["weight"] = torch.empty(max_batch, dtype=torch.float32, pin_memory=pin)
            self.out["seq"] = torch.empty(max_batch, dtype=torch.int64, pin_memory=pin)
        self._out_np = {name: t.numpy() for name, t in self.out.items()}
        self.frames = FrameGather(ring, max_batch, self._out_np) if ring.spec.frames else None
        # Where each stored field is gathered to: the batch, or (frame rows' positions) the rebuild.
        self._dest = {name: self._out_np[name] for name in ring.fields if name in self._out_np}
        if self.frames is not None:
            self._dest["pos"] = self.frames.pos
        self.seqs = np.empty(max_batch, dtype=np.int64)
        self.probs = np.empty(max_batch, dtype=np.float64)  # prioritized: the probability each row was drawn with
        self.rng = np.random.default_rng(seed)
        self.redraws = 0

    def _may_sample(self, m: int) -> bool:
        r = self.ring
        return r.closed or r.limit.can_sample(r.inserts, r.samples, m)

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
        r.add("samples", batch)
        r.insert_wakeup.notify()
        if self.priorities is not None:
            self._out_np["weight"][:batch] = self.priorities.weights(self.probs[:batch])
            self._out_np["seq"][:batch] = self.seqs[:batch]
        return {name: t[:batch] for name, t in self.out.items()}

    def _draw(self, rows: np.ndarray) -> bool:
        """Draw seqs for `rows` until each one's stamp says its slot holds exactly that seq."""
        r, cap_max = self.ring, self.ring.spec.capacity_max
        todo = rows
        for _ in range(_DRAW_TRIES):
            lo, hi = r.window()
            if hi <= lo:
                return False
            if self.priorities is None:
                self.seqs[todo] = self.rng.integers(lo, hi, size=len(todo))
            else:
                self.seqs[todo], self.probs[todo] = self.priorities.draw(lo, hi, len(todo), self.rng)
            todo = todo[r.stamps[self.seqs[todo] % cap_max] != self.seqs[todo] + 1]
            if len(todo) == 0:
                return True
            if self.priorities is not None:  # their priorities belonged to rows that are gone
                self.priorities.void(self.seqs[todo])
            self.redraws += len(todo)
        return False

    def _fill(self, batch: int) -> bool:
        r, cap_max = self.ring, self.ring.spec.capacity_max
        todo = np.arange(batch)
        for attempt in range(_DRAW_TRIES):
            if not self._draw(todo):
                return False
            slots = self.seqs[todo] % cap_max
            atomics.fence(atomics.ACQUIRE)  # the stamps are read before the rows they vouch for
            for name, src in r.fields.items():
                if attempt == 0:
                    np.take(src, slots, axis=0, out=self._dest[name][:batch])
                else:
                    self._dest[name][todo] = src[slots]
            if self.frames is not None:
                self.frames.gather(slots, todo, whole=attempt == 0)
            atomics.fence(atomics.ACQUIRE)  # the rows are read before the stamps are checked again
            todo = todo[r.stamps[slots] != self.seqs[todo] + 1]  # overwritten while we copied
            if len(todo) == 0:
                return True
            if self.priorities is not None:
                self.priorities.void(self.seqs[todo])
            self.redraws += len(todo)
        return False


def read_rows(ring: ReplayRing, seqs: np.ndarray, scalars: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Copies of the rows `seqs` name, as a batch holds them (frame rows rebuilt), or only their scalar
    fields. Rows whose stamp was not seq + 1 both before and after the copy are left out (the
    sampler's rule, without a draw): safe against a live run. Returns (seqs kept, rows)."""
    slots = seqs % ring.spec.capacity_max
    before = ring.stamps[slots].copy()
    atomics.fence(atomics.ACQUIRE)
    names = [f.name for f in ring.spec.fields if f.shape == () or not scalars]
    rows = {name: ring.fields[name][slots] for name in names}
    if ring.frames is not None and not scalars:
        f = ring.spec.frames
        obs, nxt = stack_indices(slots, rows.pop("pos"), ring.spec.block, f.area, f.stack)
        rows["obs"], rows["next_obs"] = ring.frames[obs], ring.frames[nxt]
    atomics.fence(atomics.ACQUIRE)
    ok = (before == seqs + 1) & (ring.stamps[slots] == seqs + 1)
    return seqs[ok], {name: v[ok] for name, v in rows.items()}
