"""The weight board: the learner's parameters as one flat float32 vector in two slots (a seqlock).

Publish v: mark slot v % 2 odd (2v - 1), copy, mark it even (2v), then set `version` to v.
Read: take `version`, check its slot's mark is 2v, copy the slot into the caller's flat parameter
tensor, and re-check the mark. Two slots mean a publisher writing v + 1 never touches the slot a
reader is copying v from; only a publisher two versions ahead mid-copy forces a retry. Readers take
no lock and never block the publisher; a torn copy is never kept (it is retried).

On CUDA, `pin()` registers both host slots with cudaHostRegister so the device-to-host copy of a
publish is one DMA straight into shared memory, with no staging buffer.

A network that grows (`agent.growth`) changes its parameter count and layout. The board is laid out
for the largest network the plan allows, and each slot carries the shape of the weights in it: a few
integers (`SHAPE_WORDS`; the first is their count) written with the weights, before the slot's even
mark. A reader names the shape it can take; a slot of another shape is never copied
(`read_into` returns what it had), so the reader rebuilds its network for `latest_shape()` and reads
again: no policy ever holds a mix of two layouts.

torch is imported where a tensor is first needed, not with the module: the tools that only read a
run's counters (status, inspect, cleanup, attach's own process) attach the board without it, and so
start in a fraction of a second instead of the seconds torch's import takes.
"""

from __future__ import annotations

import time
from functools import cached_property
from typing import TYPE_CHECKING

from mp_rl.shm import atomics
from mp_rl.shm.segment import Layout, Segment

if TYPE_CHECKING:
    import torch
    from torch import nn

SHAPE_WORDS = 16  # per slot: the weights' parameter count, then up to 15 integers describing their layout


def flatten_parameters(module: nn.Module) -> torch.Tensor:
    """Re-home every parameter of `module` as a view of one flat float32 tensor; return it.

    Afterwards one `flat.copy_(src)` updates every parameter: pickup is one memcpy.
    """
    import torch

    params = list(module.parameters())
    device = params[0].device
    flat = torch.empty(sum(p.numel() for p in params), dtype=torch.float32, device=device)
    offset = 0
    for p in params:
        n = p.numel()
        flat[offset : offset + n].copy_(p.data.reshape(-1))
        p.data = flat[offset : offset + n].view_as(p.data)
        offset += n
    return flat


class WeightBoard:
    """Two-slot seqlock of `numel` float32 values in a named segment."""

    def __init__(self, segment: Segment, numel: int):
        self.segment, self.numel = segment, numel
        self.layout = self.layout_for(numel)
        v = self.layout.views(segment.buf)
        self._words, self._marks, self._shapes = v["words"], v["marks"], v["shapes"]
        self.version_addr = atomics.address_of(v["words"])
        self.mark_addr = [atomics.address_of(v["marks"], 0), atomics.address_of(v["marks"], 8)]
        self._slot_arrays = v["slots"]
        self._pinned = False
        self._pending: tuple[int, torch.cuda.Event] | None = None  # a CUDA publish whose copy is in flight
        self.retries = 0

    @cached_property
    def slots(self) -> list[torch.Tensor]:
        """The two slots as tensors over the shared memory (no copy), made on first use."""
        import torch

        return [torch.from_numpy(self._slot_arrays[i]) for i in range(2)]

    @staticmethod
    def layout_for(numel: int) -> Layout:
        # The two marks sit on separate cache lines; each slot starts on a page.
        return Layout.build([("words", "<i8", (8,)), ("marks", "<i8", (16,)), ("shapes", "<i8", (2, SHAPE_WORDS)),
                             ("slots", "<f4", (2, numel))])  # fmt: skip

    @classmethod
    def create(cls, name: str, numel: int) -> WeightBoard:
        return cls(Segment.create(name, cls.layout_for(numel).size), numel)

    @classmethod
    def attach(cls, name: str, numel: int) -> WeightBoard:
        return cls(Segment.attach(name, cls.layout_for(numel).size), numel)

    def describe(self) -> dict:
        return {"segment": self.segment.name, "numel": self.numel}

    @classmethod
    def from_manifest(cls, entry: dict) -> WeightBoard:
        return cls.attach(entry["segment"], int(entry["numel"]))

    @property
    def version(self) -> int:
        return atomics.load(self.version_addr)

    def pin(self) -> bool:
        """Register the host slots as pinned memory (CUDA only); True if they are now pinned.

        cudaHostRegister on the shared mapping itself: the publish's device-to-host copy is then one
        DMA straight into shared memory. Flag 1 is cudaHostRegisterPortable (pinned for every context).
        """
        import torch

        if self._pinned or not torch.cuda.is_available():
            return self._pinned
        ptr, nbytes = self.slots[0].data_ptr(), 2 * self.numel * 4
        err = int(torch.cuda.cudart().cudaHostRegister(ptr, nbytes, 1))
        self._pinned = err == 0 and self.slots[0].is_pinned() and self.slots[1].is_pinned()
        return self._pinned

    def unpin(self) -> None:
        if self._pinned:
            import torch

            torch.cuda.cudart().cudaHostUnregister(self.slots[0].data_ptr())
            self._pinned = False

    def publish(self, flat: torch.Tensor, shape: tuple[int, ...] = ()) -> int:
        """Copy `flat` (CPU or CUDA, float32) into the board as the next version; return it."""
        self.begin_publish(flat, shape)
        return self.flush()

    def begin_publish(self, flat: torch.Tensor, shape: tuple[int, ...] = ()) -> int:
        """Start publishing `flat` as the next version; return that version.

        From the CPU the copy is done on return. From CUDA the device-to-host copy is queued on the
        current stream (after the updates that produced `flat`, before the ones that will change it)
        and the slot is marked complete later, by `poll` once its event has fired or by `flush`: the
        learner never waits for the copy. At most one publish is in flight; starting another first
        completes the previous one, since the next version's slot is the one readers use now.
        `shape` describes a network that may change its layout (at most `SHAPE_WORDS - 1` integers).
        """
        n = flat.numel()
        if n > self.numel or len(shape) >= SHAPE_WORDS:
            raise ValueError(f"weight board: {n:,} parameters of shape {shape} do not fit {self.numel:,}")
        self.flush()
        v = self.version + 1
        s = v % 2
        atomics.store(self.mark_addr[s], 2 * v - 1)  # odd: readers keep out of this slot
        # Full fence: the copy's plain stores must not become visible before the odd mark. On arm64
        # a seq-cst store is a one-way barrier (stlr): it holds back what came before, not what follows.
        atomics.fence()
        self._shapes[s] = 0
        self._shapes[s, : len(shape) + 1] = (n, *shape)  # inside the odd window, like the weights
        if flat.is_cuda:
            import torch

            self.slots[s][:n].copy_(flat.detach(), non_blocking=self._pinned)
            done = torch.cuda.Event()
            done.record()
            self._pending = (v, done)
        else:
            self.slots[s][:n].copy_(flat.detach())
            self._complete(v)
        return v

    def poll(self) -> int:
        """Complete an in-flight publish whose copy has landed, without waiting; return the version."""
        if self._pending is not None and self._pending[1].query():
            self._complete(self._pending[0])
        return self.version

    def flush(self) -> int:
        """Wait for an in-flight publish's copy (if any) and complete it; return the version."""
        if self._pending is not None:
            self._pending[1].synchronize()  # the DMA must land before the slot is marked complete
            self._complete(self._pending[0])
        return self.version

    def _complete(self, v: int) -> None:
        self._pending = None
        atomics.fence()  # full fence: every byte of the copy is visible before the even mark
        atomics.store(self.mark_addr[v % 2], 2 * v)
        atomics.store(self.version_addr, v)

    def latest_shape(self) -> tuple[int, ...]:
        """The shape published with the newest version: its parameter count first (a reader rebuilds its
        network for it when it differs from its own; `read_into` checks it again under the seqlock)."""
        for _ in range(1000):
            v = self.version
            s = v % 2
            mark = atomics.load(self.mark_addr[s])
            shape = self._shapes[s].copy()
            atomics.fence()
            if mark == 2 * v and atomics.load(self.mark_addr[s]) == mark:
                return _shape(shape)
        raise TimeoutError("weight board: no stable shape")

    def read_into(self, flat: torch.Tensor, have: int = 0, timeout: float = 1.0, shape: tuple[int, ...] = ()) -> int:
        """Copy the newest complete version into `flat` if it is newer than `have`; return the version held.

        `flat` is typically `flatten_parameters(policy)`, so this updates the policy in place. A
        copy that raced a publisher is retried at once; only if none succeeds within `timeout`
        (a publisher two versions ahead during every copy) is TimeoutError raised, and `flat` must
        then be treated as garbage. A version of another shape than `(flat.numel(), *shape)` is not
        copied: `have` comes back, and the caller rebuilds for `latest_shape()`.
        """
        deadline = time.monotonic() + timeout
        want = (flat.numel(), *shape)
        while True:
            v = self.version
            if v <= have:
                return have
            s = v % 2
            mark = atomics.load(self.mark_addr[s])  # seq-cst load (ldar): the copy's loads cannot rise above it
            if mark == 2 * v:
                if not _fits(_shape(self._shapes[s]), want):
                    atomics.fence()  # the shape was read inside the window: another layout, not a torn one
                    if atomics.load(self.mark_addr[s]) == mark:
                        return have
                    continue
                flat.copy_(self.slots[s][: want[0]])
                # Full fence: the copy's plain loads complete before the re-check. An acquire load alone
                # (ldar on arm64) lets earlier plain loads be satisfied after it: a torn copy could pass.
                atomics.fence()
                if atomics.load(self.mark_addr[s]) == mark:
                    return v
            self.retries += 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"weight board: no stable version within {timeout}s")

    def close(self) -> None:
        self.flush()
        self.unpin()
        # Every view of the mapping is dropped before it goes: a numpy view does not pin an mmap, and one
        # kept past close() would read freed pages.
        self.slots = self._slot_arrays = self._words = self._marks = self._shapes = None
        self.segment.close()

    def destroy(self) -> None:
        self.close()
        self.segment.unlink()


def _fits(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """A slot's shape against a reader's: the counts equal, and the layouts too where both name one."""
    return got[0] == want[0] and (len(got) == 1 or len(want) == 1 or got == want)


def _shape(words) -> tuple[int, ...]:
    """A slot's shape words as published: the count, then the layout's integers (trailing zeros dropped)."""
    out = [int(x) for x in words]
    while len(out) > 1 and out[-1] == 0:
        out.pop()
    return tuple(out)
