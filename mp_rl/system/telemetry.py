"""One place for what every view of a run computes: counter deltas, rates, time fractions, weight lag,
per-process CPU. The status line, the monitor, `tools.status` and the profiling benchmark all read
a run through `Rates` and `ProcessCpu`, so they can never disagree on what a figure means.

>>> counts = iter([{"env_steps": 0, "learner_wait_ns": 0}, {"env_steps": 500, "learner_wait_ns": 3 * 10**9}])
>>> clock = iter([0.0, 2.0])
>>> r = Rates(lambda: next(counts), clock=lambda: next(clock))
>>> d = r.update(); d.per_s("env_steps"), d.fraction("learner_wait_ns")
(250.0, 1.0)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

from mp_rl.shm.manifest import SharedRun

RATES = ("env_steps", "inserts", "samples", "updates")  # the counters shown as per-second rates


def run_counts(shared: SharedRun) -> dict[str, int]:
    """Every counter of a run in one dict: the control block's and the ring's."""
    return {**shared.control.counters(), **shared.ring.counts()}


@dataclass(frozen=True)
class Delta:
    """What the counters did between two looks `dt` seconds apart."""

    change: dict[str, int]
    dt: float

    def per_s(self, key: str) -> float | None:
        return None if self.dt <= 0 else self.change[key] / self.dt

    def fraction(self, ns_key: str, over: int = 1) -> float | None:
        """Share of the interval spent in a nanosecond counter, per one of `over` processes, in [0, 1]."""
        if self.dt <= 0:
            return None
        return min(1.0, max(0.0, self.change[ns_key] / 1e9 / self.dt / max(1, over)))

    def rates(self) -> dict[str, float | None]:
        """`<counter>_per_s` for the standard rates, rounded for display."""
        return {f"{k}_per_s": _round(self.per_s(k)) for k in RATES if k in self.change}


class Rates:
    """Deltas between successive looks at a counter source (`run_counts` bound to a run, usually)."""

    def __init__(self, read: Callable[[], dict[str, int]], clock: Callable[[], float] = time.monotonic):
        self.read, self.clock = read, clock
        self.last = read()
        self.last_time = clock()

    @classmethod
    def of(cls, shared: SharedRun) -> Rates:
        return cls(lambda: run_counts(shared))

    def update(self) -> Delta:
        now, counts = self.clock(), self.read()
        delta = Delta({k: counts[k] - self.last.get(k, 0) for k in counts}, now - self.last_time)
        self.last, self.last_time = counts, now
        return delta


class ProcessCpu:
    """CPU of processes by pid, as a fraction of one core since the previous look (None on the first)."""

    def __init__(self) -> None:
        self.procs: dict[int, psutil.Process] = {}

    def __call__(self, pid: int) -> float | None:
        if not pid:
            return None
        try:
            proc = self.procs.get(pid)
            if proc is None:
                proc = self.procs[pid] = psutil.Process(pid)
                proc.cpu_percent(None)  # the first call only sets the reference point
                return None
            return round(proc.cpu_percent(None) / 100.0, 3)
        except psutil.Error:
            self.procs.pop(pid, None)
            return None

    def keep(self, pids: Iterable[int]) -> None:
        """Forget processes that are no longer members."""
        alive = set(pids)
        self.procs = {p: proc for p, proc in self.procs.items() if p in alive}


def weight_lag(version: int, members: list[dict]) -> int:
    """How many versions the furthest-behind actor is from the board's newest."""
    return max((version - m["weights"] for m in members if m["kind"] == "actor"), default=0)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)
