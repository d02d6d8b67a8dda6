"""What this process may use: CPUs (affinity and cgroup v2 cpu.max) and memory (cgroup memory.max)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import psutil

CGROUP = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """CPUs allowed by cgroup v2 `cpu.max` ("quota period"), None when unlimited or absent."""
    text = _read(root / "cpu.max")
    if not text or text.startswith("max"):
        return None
    quota, period = text.split()[:2]
    return int(quota) / int(period)


def usable_cpus(root: Path = CGROUP) -> int:
    """CPUs this process can really use: the affinity mask, capped by the cgroup quota."""
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root)
    return max(1, min(cpus, math.floor(limit))) if limit else cpus


def cgroup_memory_limit(root: Path = CGROUP) -> int | None:
    text = _read(root / "memory.max")
    return None if not text or text == "max" else int(text)


def available_memory(root: Path = CGROUP) -> int:
    """Bytes that can still be committed: system available, capped by the cgroup's headroom."""
    avail = psutil.virtual_memory().available
    limit = cgroup_memory_limit(root)
    used = _read(root / "memory.current")
    if limit is not None and used is not None:
        avail = min(avail, max(0, limit - int(used)))
    return avail
