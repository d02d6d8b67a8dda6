"""Cross-process wakeups (a futex generation word) and the Reverb-style rate limiter.

A `Wakeup` is two int32 words in shared memory: a generation counter that wakers bump and
sleepers futex-wait on, and a count of sleepers so a waker with nobody to wake skips the syscall.
Why that is race-free: a sleeper increments `waiters` and reads `gen` *before* re-checking its
condition; a waker changes the state, then increments `gen`, then reads `waiters`. All four are
sequentially consistent atomics, so either the sleeper sees the new state, or the waker sees the
sleeper, or the futex sees `gen` changed and returns at once. No sleeps, no polling.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from mp_rl.shm import atomics


class Wakeup:
    """Sleep until a predicate holds; woken by `notify` from any process that maps the words."""

    def __init__(self, addr: int):
        self.gen_addr = addr
        self.waiters_addr = addr + 4

    def notify(self) -> None:
        atomics.fetch_add32(self.gen_addr, 1)
        if atomics.load32(self.waiters_addr) > 0:
            atomics.futex_wake(self.gen_addr)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Return True once `predicate()` holds, False if `timeout` seconds pass first."""
        if predicate():
            return True
        deadline = time.monotonic() + timeout
        atomics.fetch_add32(self.waiters_addr, 1)
        try:
            while True:
                gen = atomics.load32(self.gen_addr)
                if predicate():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                atomics.futex_wait(self.gen_addr, gen, remaining)
        finally:
            atomics.fetch_add32(self.waiters_addr, -1)


class RateLimitError(ValueError):
    """A rate-limiter setting that could deadlock or is meaningless."""


@dataclass(frozen=True)
class RateLimit:
    """Samples-per-insert with an error buffer, as in Reverb's SampleToInsertRatio.

    With D = inserts * samples_per_insert - samples, an insert of n rows is allowed while
    D + n * spi <= min_fill * spi + error_buffer, and a sample of m rows while inserts >= min_fill
    and D - m >= min_fill * spi - error_buffer; below min_fill inserts always pass.
    `samples_per_insert=None` never blocks inserts
    (sampling still waits for `min_fill`).

    >>> lim = RateLimit(samples_per_insert=4.0, min_fill=1000, error_buffer=4096, block=64, max_batch=256)
    >>> lim.can_insert(inserts=0, samples=0, n=64), lim.can_sample(inserts=0, samples=0, m=32)
    (True, False)
    """

    samples_per_insert: float | None
    min_fill: int
    error_buffer: float
    block: int
    max_batch: int

    def __post_init__(self) -> None:
        if self.min_fill < 1:
            raise RateLimitError("min_fill must be at least 1")
        if self.samples_per_insert is None:
            return
        if not (self.samples_per_insert > 0 and math.isfinite(self.samples_per_insert)):
            raise RateLimitError(f"samples_per_insert must be a positive number, got {self.samples_per_insert}")
        # Both sides blocked at once needs D > max_diff - block*spi and D < min_diff + max_batch: the
        # window between the limits must fit one block of inserts plus one batch of samples.
        need = (self.block * self.samples_per_insert + self.max_batch) / 2
        if self.error_buffer < need:
            raise RateLimitError(
                f"error_buffer {self.error_buffer:g} could deadlock: with samples_per_insert="
                f"{self.samples_per_insert:g}, block={self.block} and batch up to {self.max_batch} "
                f"it must be at least {need:g}"
            )

    @property
    def min_diff(self) -> float:
        return self.min_fill * (self.samples_per_insert or 0.0) - self.error_buffer

    @property
    def max_diff(self) -> float:
        return self.min_fill * (self.samples_per_insert or 0.0) + self.error_buffer

    def can_insert(self, inserts: int, samples: int, n: int) -> bool:
        # Below min_fill inserts always pass (the sampler cannot run yet, so nothing else could
        # unblock them). At or above it, if an insert is blocked then D > max_diff - n*spi, and
        # with 2*error_buffer >= n*spi + m that gives D - m >= min_diff: the sampler may go.
        if self.samples_per_insert is None or inserts < self.min_fill:
            return True
        return (inserts + n) * self.samples_per_insert - samples <= self.max_diff

    def can_sample(self, inserts: int, samples: int, m: int) -> bool:
        if inserts < self.min_fill:
            return False
        if self.samples_per_insert is None:
            return True
        return inserts * self.samples_per_insert - samples - m >= self.min_diff

    def to_json(self) -> dict:
        return dict(
            samples_per_insert=self.samples_per_insert,
            min_fill=self.min_fill,
            error_buffer=self.error_buffer,
            block=self.block,
            max_batch=self.max_batch,
        )
