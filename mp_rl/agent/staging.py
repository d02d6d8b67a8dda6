"""Batches onto the learner's device and TD errors back to the host, without the learner waiting.

The learner's update loop must never synchronise with the device: on a GPU each wait costs a full
round trip through the launch queue, which caps a small network's update rate far below what the
GPU can do. So every host<->device transfer here is asynchronous and completed by events:
- `Prefetcher`: a thread samples the next batch into pinned memory and copies it to the device on a
  side stream, overlapping the learner's compute; the learner's stream waits on the copy's event.
- `Staged`: the same without a thread (`learner.prefetch: false`): two pinned sampler buffers
  alternate, and a buffer is refilled only once the copy out of it has been seen complete.
- `PendingPriorities`: TD errors copied back into pinned host memory as they are produced and
  handed to the sum tree when their event has fired, a few updates later (Ape-X's priorities lag
  far more than that). On the CPU all of this is immediate.
"""

from __future__ import annotations

import collections
import queue
import threading

import torch

from mp_rl.shm.manifest import SharedRun
from mp_rl.shm.ring import RingClosed

PREFETCH_BUFFERS = 3  # filled by the thread, waiting in the hand-over, in use by the learner
STAGED_BUFFERS_CUDA = 2  # one refilled while the copy out of the other may still be in flight


def host_buffers(prefetch: bool, cuda: bool) -> int:
    """Sampler buffers the learner's feed allocates, each of the largest batch (pinned on CUDA).
    The budget prices what this says (`start.budget`), so the two cannot drift apart."""
    return PREFETCH_BUFFERS if prefetch else (STAGED_BUFFERS_CUDA if cuda else 1)


def device_batches(prefetch: bool) -> int:
    """Batches alive on the device at once: the one trained on, and with prefetch the next one staged."""
    return 2 if prefetch else 1


class Prefetcher:
    """A thread that samples the next batch (into pinned memory on CUDA) and stages it on the device.

    Three sampler buffers rotate: one being filled, one waiting in the hand-over queue, one in use
    by the learner, so a buffer is never refilled while the learner still reads it. On CUDA the copy
    runs on its own stream and the learner's stream waits on its event.
    """

    def __init__(
        self, shared: SharedRun, max_batch: int, device: torch.device, batch_size, seed: int, priorities=None
    ):  # fmt: skip
        self.ring, self.device, self.batch_size = shared.ring, device, batch_size
        pin = device.type == "cuda"
        n = host_buffers(True, pin)
        self.samplers = [shared.ring.sampler(max_batch, pin, seed + i, priorities) for i in range(n)]
        self.stream = torch.cuda.Stream(device) if pin else None
        self.handoff: queue.Queue = queue.Queue(maxsize=1)
        self.stopped = threading.Event()
        # Started by the first `get`, not here: a resume restores the learner (and reprioritizes the
        # restored replay) after construction, and no batch may be drawn before that.
        self.thread = threading.Thread(target=self._loop, name="prefetch", daemon=True)

    def _loop(self) -> None:
        i = 0
        try:
            while not self.stopped.is_set():
                batch = self.samplers[i % len(self.samplers)].sample(self.batch_size(), timeout=0.25)
                if batch is None:
                    continue
                item = self._to_device(batch)
                while not self.stopped.is_set():
                    try:
                        self.handoff.put(item, timeout=0.25)
                        break
                    except queue.Full:
                        continue
                i += 1
        except RingClosed:
            self.stopped.set()

    def _to_device(self, batch: dict[str, torch.Tensor]):
        if self.stream is None:
            return batch, None
        with torch.cuda.stream(self.stream):
            moved = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            done = torch.cuda.Event()
            done.record(self.stream)
        done.synchronize()  # the pinned buffer may be refilled two batches from now; be sure it is read
        return moved, done

    def get(self, timeout: float) -> dict[str, torch.Tensor] | None:
        if self.thread.ident is None and not self.stopped.is_set():
            self.thread.start()
        try:
            batch, done = self.handoff.get(timeout=timeout)
        except queue.Empty:
            return None
        if done is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            for t in batch.values():
                t.record_stream(stream)
        return batch

    def close(self) -> None:
        self.stopped.set()
        if self.thread.ident is not None:
            self.thread.join(timeout=2.0)


class Staged:
    """Samples on the learner's thread; on CUDA two pinned buffers alternate (see the module doc)."""

    def __init__(self, shared: SharedRun, max_batch: int, device: torch.device, batch_size, seed: int, priorities):
        self.device, self.batch_size = device, batch_size
        self.cuda = device.type == "cuda"
        n = host_buffers(False, self.cuda)
        self.samplers = [shared.ring.sampler(max_batch, self.cuda, seed + i, priorities) for i in range(n)]
        self.copied: list[torch.cuda.Event | None] = [None] * n
        self.i = 0

    def get(self, timeout: float) -> dict[str, torch.Tensor] | None:
        i = self.i % len(self.samplers)
        if self.copied[i] is not None:
            # The non-blocking copy out of this pinned buffer was queued two batches ago; it has long
            # landed in practice, but refilling the buffer before it has would corrupt that batch.
            self.copied[i].synchronize()
        batch = self.samplers[i].sample(self.batch_size(), timeout=timeout)
        if batch is None:
            return None
        self.i += 1
        if not self.cuda:
            return batch
        moved = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        self.copied[i] = torch.cuda.Event()
        self.copied[i].record()
        return moved

    def close(self) -> None:
        pass


class PendingPriorities:
    """TD errors on their way back to the sum tree (see the module doc)."""

    def __init__(self, priorities, device: torch.device):
        self.priorities, self.cuda = priorities, device.type == "cuda"
        self.pending: collections.deque = collections.deque()

    def push(self, seq: torch.Tensor, td: torch.Tensor) -> None:
        if not self.cuda:
            self.priorities.update(seq.numpy(), td.float().numpy())
            return
        # Pinned destinations from torch's caching host allocator: reused only once the copies that
        # used them are done, so a fresh pair per update costs no allocation in the steady state.
        host_seq = torch.empty(seq.shape, dtype=seq.dtype, pin_memory=True)
        host_td = torch.empty(td.shape, dtype=torch.float32, pin_memory=True)
        host_seq.copy_(seq, non_blocking=True)
        host_td.copy_(td.float(), non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self.pending.append((host_seq, host_td, done))
        self.drain()

    def drain(self, wait: bool = False) -> None:
        """Apply every batch whose copy has landed (all of them, waiting, with `wait`), oldest first."""
        while self.pending and (wait or self.pending[0][2].query()):
            host_seq, host_td, done = self.pending.popleft()
            done.synchronize()
            self.priorities.update(host_seq.numpy(), host_td.numpy())
