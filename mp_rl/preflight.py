"""Everything checked before a run creates anything: the env, what fits the machine, the run folder.

Requests beyond the machine are clamped with a warning (actors to usable CPUs); a replay that cannot
fit in available memory is refused with the figure it needs. Bad input raises `StartError`, whose
message is the one line the CLI prints before exiting 2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mp_rl import resources
from mp_rl.config import Config
from mp_rl.envs import EnvError, EnvSpec, probe
from mp_rl.shm.ring import RingSpec
from mp_rl.shm.sync import RateLimit


class StartError(ValueError):
    """Bad input found before anything started; str() is one line."""


@dataclass
class Plan:
    """What a run will create, decided before it creates anything."""

    cfg: Config
    spec: EnvSpec
    ring: RingSpec
    limit: RateLimit
    actors: int
    capacity: int
    max_members: int
    warnings: list[str] = field(default_factory=list)
    schedule: int = 0  # Ape-X epsilon schedule size: the most actors this run may have (0: `actors`)

    @property
    def epsilons_for(self) -> int:
        return max(self.schedule, self.actors)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def plan(cfg: Config) -> Plan:
    if cfg.learner.device == "cuda" and not torch.cuda.is_available():
        raise StartError("learner.device: cuda requested but no CUDA device is available (use auto or cpu)")
    try:
        spec = probe(cfg.env)
    except EnvError as exc:
        raise StartError(str(exc)) from None
    warnings = []
    cpus = resources.usable_cpus()
    fits = max(1, cpus - 1)  # one CPU for the learner
    wanted = (cfg.actors.initial or fits) if cfg.actors.count == "auto" else cfg.actors.count
    actors = min(wanted, fits, cfg.actors.max_count)
    if cfg.actors.count == "auto":
        warnings.append(
            f"actors.count auto: starting {actors} actor(s) on {cpus} usable CPUs (one kept for the learner)"
        )
    elif actors < cfg.actors.count:
        warnings.append(f"actors.count {cfg.actors.count} clamped to {actors}: {cpus} usable CPUs (affinity/cgroup)")
    ring = RingSpec.for_transitions(spec.obs_shape, spec.obs_dtype, cfg.replay.capacity_max, cfg.actors.block)
    ring = ring.normalised()
    row = sum(f.row_bytes for f in ring.fields) + 8
    capacity = cfg.replay.capacity
    if capacity == "auto":  # start at what a quarter of free memory holds (or as asked); the monitor moves it
        quarter = max(10_000, resources.available_memory() // 4 // row)
        capacity = int(min(ring.capacity_max, cfg.replay.initial_capacity or quarter))
        warnings.append(f"replay.capacity auto: starting at {capacity:,} rows ({_gib(capacity * row)})")
    need, avail = capacity * row, resources.available_memory()
    if need > 0.9 * avail:
        raise StartError(
            f"replay.capacity {capacity:,} rows x {row:,} B = {_gib(need)} does not fit in "
            f"{_gib(avail)} of available memory"
        )
    if ring.capacity_max * row > avail:
        warnings.append(
            f"replay.capacity_max would need {_gib(ring.capacity_max * row)}; capacity will stay within RAM"
        )
    # An auto actor count moves between 1 and the usable CPUs; epsilons are spread over that range so
    # an actor keeps its epsilon when others come and go.
    schedule = min(cpus, cfg.actors.max_count) if cfg.actors.count == "auto" else actors
    return Plan(cfg, spec, ring, cfg.rate_limit(), actors, capacity, cfg.actors.max_count + 8, warnings, schedule)


def new_run_dir(cfg: Config) -> Path:
    """runs/<timestamp>-<name>, made unique; created only once every check has passed."""
    root = Path(cfg.run.runs_dir)
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.run.name}"
    path, i = root / base, 1
    while path.exists():
        i += 1
        path = root / f"{base}-{i}"
    (path / "logs").mkdir(parents=True)
    (path / "checkpoints").mkdir()
    return path
