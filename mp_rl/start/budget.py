"""The budget: RAM, VRAM and CPU of every component of a run at an operating point, before it starts.

`Budget.lines(point)` is the plan `python -m mp_rl.plan` prints and preflight checks: a line per
component (replay, each actor, the learner, the weight board, the control block, the monitor, the
supervisor with its evaluator, the members' fork server, the resource tracker). Resident bytes are
private memory (RssAnon + RssFile, `footprint`); shared bytes are what the component puts in /dev/shm,
counted once.

The estimates are what the code allocates, priced per byte, on top of measured per-role bases:
- an actor: its envs (measured), the n-step builder's arrays, its network and a copy for pickups;
- the learner: online, target, gradient, Adam's two moments and the publish buffer (6 copies of the
  parameters), the activations one batch keeps for backward (every layer's output, twice: the values
  and their gradients), and the sampler's batch buffers (as many as `agent.staging` allocates);
- the replay: its header plus capacity x bytes per row (pages commit on first touch: a live window
  of that many rows is what it holds).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import psutil
import torch

from mp_rl.agent import staging
from mp_rl.agent.envspec import EnvSpec
from mp_rl.config import Config
from mp_rl.shm.board import WeightBoard
from mp_rl.shm.control import ControlBlock
from mp_rl.shm.ring import RingSpec
from mp_rl.start import resources
from mp_rl.start.footprint import Bases, EnvCost, NetCost
from mp_rl.system import forks

HEADROOM = 0.9  # a plan may use this share of available memory / VRAM; the rest is the system's


@dataclass(frozen=True)
class Point:
    """An operating point: the values of the knobs the budget depends on."""

    actors: int
    envs_per_actor: int
    batch: int
    capacity: int


@dataclass(frozen=True)
class Line:
    """One component: how many of it, and each one's resident, shared and GPU bytes and CPU cores."""

    name: str
    count: int
    ram: int
    shm: int = 0
    vram: int = 0
    cpu: float = 0.0
    note: str = ""

    @property
    def memory(self) -> int:
        return self.count * (self.ram + self.shm)


@dataclass(frozen=True)
class Limits:
    """The machine as mp_rl sees it: what affinity and cgroups allow, and the GPU's memory."""

    cpus: int
    affinity: int
    cgroup_cpus: float | None
    ram: int
    available: int
    cgroup_memory: int | None
    gpu: str | None
    vram: int | None
    cublas_workspace: int = 0  # one cuBLAS workspace on that GPU (`cublas_workspace`)

    @classmethod
    def current(cls, device: str) -> Limits:
        gpu = vram = None
        workspace = 0
        if device == "cuda":
            p = torch.cuda.get_device_properties(0)
            gpu, vram, workspace = p.name, int(p.total_memory), cublas_workspace(p.major)
        return cls(resources.usable_cpus(), len(os.sched_getaffinity(0)), resources.cgroup_cpu_limit(),
                   psutil.virtual_memory().total, resources.available_memory(), resources.cgroup_memory_limit(),
                   gpu, vram, workspace)  # fmt: skip

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def cublas_workspace(major: int, config: str | None = None) -> int:
    """Bytes of one cuBLAS workspace as torch sizes it: CUBLAS_WORKSPACE_CONFIG (":KiB:count" pairs, summed)
    or torch's default, 32 MiB from Hopper (compute capability 9) on and 4 MiB x 2 + 16 KiB x 8 before.

    >>> cublas_workspace(9) // 2**20, cublas_workspace(8), cublas_workspace(8, ":4096:8") // 2**20
    (32, 8519680, 32)
    """
    config = os.environ.get("CUBLAS_WORKSPACE_CONFIG") if config is None else config
    pairs = re.findall(r":(\d+):(\d+)", config or "")
    if pairs:
        return sum(int(kib) * int(count) for kib, count in pairs) * 1024
    return 4096 * 8 * 1024 if major >= 9 else (4096 * 2 + 16 * 8) * 1024


def learner_device(cfg: Config) -> str:
    """Where the learner will train: `auto` is CUDA when torch sees a device."""
    want = cfg.learner.device
    return "cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available()) else "cpu"


def _nbytes(obj) -> int:
    return sum(v.nbytes for v in vars(obj).values() if isinstance(v, np.ndarray))


class Budget:
    """Prices every component of one config on one machine; `lines(point)` at any operating point."""

    def __init__(self, cfg: Config, spec: EnvSpec, ring: RingSpec, net: NetCost, bases: Bases, env: EnvCost,
                 limits: Limits, max_members: int):  # fmt: skip
        self.cfg, self.spec, self.ring, self.net, self.bases, self.env = cfg, spec, ring, net, bases, env
        self.limits, self.max_members = limits, max_members
        self.largest_net = net  # the largest network `learner.grow` may reach (the plan's "at most")
        self.board_numel = net.numel  # the weight board holds it
        self.device = "cuda" if limits.vram is not None else "cpu"
        self.batch_row = sum(f.row_bytes for f in ring.batch_fields())  # one sampled transition
        self._builders: dict[int, int] = {}

    # --- the components ------------------------------------------------------------------------
    def builder_bytes(self, envs: int) -> int:
        """The n-step builder an actor keeps per lane (EnvPool actors: two lanes of half the envs)."""
        if envs not in self._builders:
            from mp_rl.agent.actor import Actor

            lanes = [envs - envs // 2, envs // 2] if self.cfg.env.backend == "envpool" and envs > 1 else [envs]
            self._builders[envs] = sum(_nbytes(Actor._builder(self.cfg, self.ring, self.spec, n)) for n in lanes)
        return self._builders[envs]

    def actor(self, envs: int) -> Line:
        c = self.cfg
        stage = c.actors.block * sum(f.row_bytes for f in self.ring.fields)  # the one partial block an actor packs
        ram = self.bases.member("actor") + self.env.first + envs * self.env.each + 8 * self.net.numel
        ram += self.builder_bytes(envs) + stage
        envpool = c.env.backend == "envpool"
        cpu = 1.0 + 0.4 * c.env.envpool_threads if envpool else 1.0  # 1.38 cores measured at 1 thread a pool
        return Line("actor", 1, ram, cpu=cpu, note=f"{envs} envs ({c.env.backend})")

    def activations(self, batch: int, half: bool) -> int:
        """Bytes a batch's training step holds: every layer's output and its gradient, the float inputs
        of obs and next_obs."""
        per = 2 * self.net.activations * (2 if half else 4) + 2 * 4 * self.net.inputs
        return batch * per

    def learner(self, batch: int) -> Line:
        lc = self.cfg.learner
        params = 6 * 4 * self.net.numel  # online, target, gradient, Adam m and v, the publish buffer (CPU)
        priorities = 16 * (1 << max(0, (self.ring.capacity_max - 1).bit_length())) if self.cfg.replay.prioritized else 0
        cuda = self.device != "cpu"
        host, device = staging.host_buffers(lc.prefetch, cuda), staging.device_batches(lc.prefetch)
        if not cuda:
            ram = self.bases.member("learner") + params + self.activations(batch, False) + host * batch * self.batch_row
            return Line("learner", 1, ram + priorities, cpu=1.0, note=f"batch {batch}, cpu")
        # CUDA: pinned batches are allocated (and locked) whole, at the largest batch the monitor may pick.
        base = self.bases.member("learner_cuda" if self.bases.learner_cuda else "learner")
        ram = base + host * lc.max_batch_size * self.batch_row + 4 * self.net.numel + priorities
        # On the device: no publish buffer (the publish copies the parameters' own flat tensor to the
        # pinned board), but a cuBLAS workspace per thread that multiplies: the update's own, and
        # autograd's device thread, which runs the backward (torch keeps one per thread and stream).
        params = 5 * 4 * self.net.numel + 2 * self.limits.cublas_workspace
        vram = params + self.activations(batch, lc.amp) + device * batch * self.batch_row
        return Line("learner", 1, ram, vram=vram, cpu=1.0, note=f"batch {batch}, cuda")

    def replay(self, capacity: int) -> Line:
        header = self.ring.layout()["stamps"].offset  # counters and wake words, before the first row
        shm = header + math.ceil(capacity * self.ring.bytes_per_row)
        return Line("replay", 1, 0, shm=shm, note=f"{capacity:,} rows x {self.ring.bytes_per_row:,.0f} B")

    def lines(self, p: Point) -> list[Line]:
        b, c = self.bases, self.cfg
        actor = self.actor(p.envs_per_actor)
        # The evaluator plays each of its episodes in an env of one vector env, one forward pass for all.
        n = c.eval.episodes
        evaluator = b.supervisor + self.env.first + n * self.env.each + 8 * self.net.numel
        evaluator += n * 4 * (self.net.inputs + self.net.activations)
        out = [
            self.replay(p.capacity),
            dataclasses.replace(actor, count=p.actors),
            self.learner(p.batch),
            Line("weight board", 1, 0, shm=WeightBoard.layout_for(self.board_numel).size,
                 note=f"{self.board_numel:,} parameters, two slots"),
            Line("control block", 1, 0, shm=ControlBlock.layout_for(self.max_members).size),
            Line("supervisor + evaluator", 1, evaluator, cpu=0.1, note=f"status, metrics, {n} greedy envs"),
            Line("resource tracker", 1, b.bare, note="multiprocessing's helper process"),
        ]  # fmt: skip
        if forks.method() == "forkserver":
            out.insert(-1, Line("fork server", 1, b.server, note="the members' parent: torch imported once"))
        if c.monitor.enabled:
            monitor = b.member("imported")
            out.insert(5, Line("monitor", 1, monitor, cpu=0.05, note=f"samples every {c.monitor.interval_s:g} s"))
        return out

    def grown(self) -> Budget:
        """This budget with the network at the largest size growth may reach (the plan's "at most")."""
        out = copy.copy(self)
        out.net = self.largest_net
        return out

    # --- totals and fit -------------------------------------------------------------------------
    def memory(self, p: Point) -> int:
        return sum(line.memory for line in self.lines(p))

    def vram(self, p: Point) -> int:
        return sum(line.count * line.vram for line in self.lines(p))

    def cpu(self, p: Point) -> float:
        return sum(line.count * line.cpu for line in self.lines(p))

    def problems(self, p: Point) -> list[str]:
        """Why this point does not fit (empty: it fits)."""
        out, lim = [], self.limits
        if (need := self.memory(p)) > HEADROOM * lim.available:
            out.append(f"needs {gib(need)} of memory, more than the {gib(HEADROOM * lim.available)} usable "
                       f"({HEADROOM:.0%} of {gib(lim.available)} available)")  # fmt: skip
        if lim.vram is not None and (need := self.vram(p)) > HEADROOM * lim.vram:
            out.append(f"needs {gib(need)} of GPU memory, more than the {gib(HEADROOM * lim.vram)} usable "
                       f"({HEADROOM:.0%} of {gib(lim.vram)} on {lim.gpu})")  # fmt: skip
        return out

    def largest(self, p: Point, knob: str, lo: int, hi: int) -> int | None:
        """The largest value of one knob in lo..hi at which `p` fits (None: not even lo)."""
        if self.problems(dataclasses.replace(p, **{knob: lo})):
            return None
        while lo < hi:  # memory grows with every knob: bisect
            mid = (lo + hi + 1) // 2
            if self.problems(dataclasses.replace(p, **{knob: mid})):
                hi = mid - 1
            else:
                lo = mid
        return lo


def gib(n: float) -> str:
    """Bytes for a reader: GiB, MiB or KiB."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
