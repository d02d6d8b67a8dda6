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

from mp_rl import resources
from mp_rl.shm.manifest import SharedRun

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
        if self.handle is None:
            return dict.fromkeys(self.FIELDS)
        n = self.nvml
        try:
            mem = n.nvmlDeviceGetMemoryInfo(self.handle)
            return {
                "gpu_util": n.nvmlDeviceGetUtilizationRates(self.handle).gpu / 100.0,
                "vram_used": int(mem.used),
                "vram_total": int(mem.total),
                "gpu_temp_c": int(n.nvmlDeviceGetTemperature(self.handle, n.NVML_TEMPERATURE_GPU)),
                "gpu_throttle": int(n.nvmlDeviceGetCurrentClocksThrottleReasons(self.handle)),
            }
        except Exception:  # a driver hiccup must not stop the monitor
            return dict.fromkeys(self.FIELDS)


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
    """Rates from the shared counters (deltas between samples), members and their CPU, knob values."""

    def __init__(self, shared: SharedRun) -> None:
        self.shared = shared
        self.last = self._counts()
        self.last_time = time.monotonic()
        self.procs: dict[int, psutil.Process] = {}

    def _counts(self) -> dict[str, int]:
        ring = self.shared.ring.counts()
        return {**self.shared.control.counters(), "inserts": ring["inserts"], "samples": ring["samples"]}

    def _cpu_of(self, pid: int) -> float | None:
        try:
            proc = self.procs.get(pid)
            if proc is None:
                proc = self.procs[pid] = psutil.Process(pid)
                proc.cpu_percent(None)
                return None
            return round(proc.cpu_percent(None) / 100.0, 3)
        except psutil.Error:
            self.procs.pop(pid, None)
            return None

    def sample(self, now: float) -> dict:
        counts, dt = self._counts(), max(now - self.last_time, 1e-6)
        d = {k: counts[k] - self.last[k] for k in counts}
        self.last, self.last_time = counts, now
        control, ring = self.shared.control, self.shared.ring
        members = control.live_members()
        actors = [m for m in members if m["kind"] == "actor"]
        version = self.shared.board.version
        running = sum(m["state"] == "running" for m in actors) or 1
        for m in members:
            m["cpu"] = self._cpu_of(m["pid"]) if m["pid"] else None
        self.procs = {p: proc for p, proc in self.procs.items() if any(m["pid"] == p for m in members)}
        return {
            **{f"{k}_per_s": round(d[k] / dt, 1) for k in ("env_steps", "inserts", "samples", "updates")},
            "learner_wait_frac": round(min(1.0, d["learner_wait_ns"] / 1e9 / dt), 3),
            "actor_blocked_frac": round(min(1.0, d["actor_blocked_ns"] / 1e9 / dt / running), 3),
            "weight_lag": max((version - m["weights"] for m in actors), default=0),
            "actors": sum(not m["attached"] for m in actors),
            "attached": sum(m["attached"] for m in actors),
            "batch_size": control.target("batch_size"),
            "capacity": ring.capacity,
            "replay_size": ring.size(),
            "members": [
                {k: m[k] for k in ("slot", "kind", "pid", "state", "attached", "cpu", "steps")} for m in members
            ],
        }
