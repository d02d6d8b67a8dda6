"""What the monitor measures: the machine (psutil, cgroup v2, nvidia-ml-py) and the pipeline (the control block).

A source is anything with `sample(now) -> dict`; the monitor merges a machine source and a pipeline
source into one flat snapshot. Tests inject fakes; a GPU-less machine gives null GPU fields.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil

from mp_rl.shm.manifest import SharedRun
from mp_rl.start import resources
from mp_rl.system.telemetry import ProcessCpu, Rates, weight_lag

# Testing hook: a JSON file {"total": bytes, "available": bytes} that replaces the memory reading,
# so a test can simulate RAM pressure without starving the machine it runs on.
FAKE_MEMORY_ENV = "MP_RL_FAKE_MEMORY"


class Gpu:
    """nvidia-ml-py for device 0; every field None when there is no driver or no device."""

    FIELDS = ("gpu_util", "vram_used", "vram_total", "gpu_temp_c", "gpu_throttle")

    def __init__(self) -> None:
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no library, no driver, no device: the fields stay null
            self.handle = None

    def sample(self) -> dict:
        """Each field read on its own: a query a device or driver does not support (temperature on
        some virtual GPUs, a renamed throttle call) nulls that field only."""
        if self.handle is None:
            return dict.fromkeys(self.FIELDS)
        n, h = self.nvml, self.handle
        mem = _try(lambda: n.nvmlDeviceGetMemoryInfo(h))
        util = _try(lambda: n.nvmlDeviceGetUtilizationRates(h).gpu)
        reasons = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            n, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        return {
            "gpu_util": None if util is None else util / 100.0,
            "vram_used": None if mem is None else int(mem.used),
            "vram_total": None if mem is None else int(mem.total),
            "gpu_temp_c": _try(lambda: int(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))),
            "gpu_throttle": _try(lambda: int(reasons(h))) if reasons else None,
        }


def _try(read):
    try:
        return read()
    except Exception:  # a driver hiccup or an unsupported query must not stop the monitor
        return None


class MachineSource:
    """CPU per core and in total (against what the container may use), RAM, GPU."""

    def __init__(self, cgroup: Path = resources.CGROUP) -> None:
        self.cgroup = cgroup
        self.cores = sorted(os.sched_getaffinity(0))
        self.gpu = Gpu()
        self.quota = resources.cgroup_cpu_limit(cgroup)
        self.last_usage = self._cgroup_usage()
        self.last_time = time.monotonic()
        psutil.cpu_percent(percpu=True)  # the first call only sets the reference point

    def _cgroup_usage(self) -> float | None:
        try:
            for line in (self.cgroup / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec"):
                    return int(line.split()[1]) / 1e6
        except OSError:
            pass
        return None

    def _memory(self) -> tuple[int, int]:
        fake = os.environ.get(FAKE_MEMORY_ENV)
        if fake:
            try:
                d = json.loads(Path(fake).read_text())
                return int(d["total"]), int(d["available"])
            except (OSError, ValueError, KeyError):
                pass
        total = psutil.virtual_memory().total
        limit = resources.cgroup_memory_limit(self.cgroup)
        return (min(total, limit) if limit else total), resources.available_memory(self.cgroup)

    def sample(self, now: float) -> dict:
        per_core = psutil.cpu_percent(percpu=True)
        mine = [per_core[c] / 100.0 for c in self.cores if c < len(per_core)]
        usable = resources.usable_cpus(self.cgroup)
        busy_cores = sum(mine)
        usage = self._cgroup_usage()
        if self.quota and usage is not None and self.last_usage is not None:  # a quota: what we used of it
            busy_cores = (usage - self.last_usage) / max(now - self.last_time, 1e-6)
        self.last_usage, self.last_time = usage, now
        total, available = self._memory()
        return {
            "cpu_per_core": [round(x, 3) for x in mine],
            "cpu_busy": round(min(1.0, busy_cores / usable), 3),
            "usable_cpus": usable,
            "cpu_quota": self.quota,
            "ram_total": total,
            "ram_available": available,
            "ram_headroom": round(available / total, 4) if total else None,
            **self.gpu.sample(),
        }


class PipelineSource:
    """Rates from the shared counters (`telemetry`), members and their CPU, knob values."""

    def __init__(self, shared: SharedRun) -> None:
        self.shared = shared
        self.rates = Rates.of(shared)
        self.cpu = ProcessCpu()
        self.episode_cursor = shared.control.episodes_since(0)[1]  # episodes from now on

    def sample(self, now: float) -> dict:
        delta = self.rates.update()
        episodes, self.episode_cursor = self.shared.control.episodes_since(self.episode_cursor)
        control, ring = self.shared.control, self.shared.ring
        members = control.live_members()
        actors = [m for m in members if m["kind"] == "actor"]
        running = sum(m["state"] == "running" for m in actors)
        for m in members:
            m["cpu"] = self.cpu(m["pid"])
        self.cpu.keep(m["pid"] for m in members)
        return {
            **{k: v or 0.0 for k, v in delta.rates().items()},
            "learner_wait_frac": round(delta.fraction("learner_wait_ns") or 0.0, 3),
            "actor_blocked_frac": round(delta.fraction("actor_blocked_ns", over=running) or 0.0, 3),
            "weight_lag": weight_lag(self.shared.board.version, members),
            "actors": sum(not m["attached"] for m in actors),
            "attached": sum(m["attached"] for m in actors),
            "batch_size": control.target("batch_size"),
            "capacity": ring.capacity,
            "replay_size": ring.size(),
            "episode_returns": [round(float(r), 3) for r in episodes[:, 0]],  # the window's median judges a resize
            "members": [
                {k: m[k] for k in ("slot", "kind", "pid", "state", "attached", "cpu", "steps")} for m in members
            ],
        }
