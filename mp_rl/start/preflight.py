"""Everything checked before a run creates anything: the env, what fits the machine, the run folder.

Requests beyond the machine are clamped with a warning (actors to usable CPUs). The budget
(`budget.Budget`) prices every component: a start that does not fit is refused with the figure it
needs and what would fit, and every `auto` knob's upper bound is the largest that fits. Bad input
raises `StartError`, whose message is the one line the CLI prints before exiting 2.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mp_rl.agent import growth
from mp_rl.agent.envs import probe
from mp_rl.agent.envspec import EnvError, EnvSpec
from mp_rl.agent.models import NetworkError, check_network, choose, q_network
from mp_rl.config import Config
from mp_rl.knobs import Knobs, Span
from mp_rl.runfolder import CHECKPOINTS, LOGS
from mp_rl.shm.ring import RingSpec
from mp_rl.shm.sync import RateLimit, RateLimitError
from mp_rl.start import footprint, resources, sizing
from mp_rl.start.budget import Budget, Limits, Point, gib, learner_device
from mp_rl.start.sizing import Sizing
from mp_rl.system import forks


class StartError(ValueError):
    """Bad input found before anything started; str() is one line."""


@dataclass
class Plan:
    """What a run will create, decided before it creates anything."""

    cfg: Config
    spec: EnvSpec
    ring: RingSpec
    limit: RateLimit
    knobs: Knobs
    max_members: int
    numel: int  # parameters of the Q-network: the weight board's size
    warnings: list[str] = field(default_factory=list)
    budget: Budget | None = None  # what each component costs (`python -m mp_rl.plan` prints it)
    problems: list[str] = field(default_factory=list)  # why the start does not fit (only with check off)
    sizing: Sizing | None = None  # how learner.hidden / cnn_scale 'auto' was resolved

    @property
    def schedule(self) -> int:
        """Ape-X epsilon schedule size: the most actors this run may have, so an actor keeps its
        epsilon when others come and go."""
        return self.knobs.actors.hi

    @property
    def actors(self) -> int:
        return self.knobs.actors.start

    @property
    def capacity(self) -> int:
        return self.knobs.capacity.start

    @property
    def epsilons_for(self) -> int:
        return max(self.schedule, self.actors)


def _actors(cfg: Config, warnings: list[str]) -> Span:
    cpus = resources.usable_cpus()
    fits = max(1, cpus - 1)  # one CPU for the learner
    auto = cfg.actors.count == "auto"
    wanted = (cfg.actors.initial_count or fits) if auto else cfg.actors.count
    start = min(wanted, fits, cfg.actors.max_count)
    if auto:
        warnings.append(
            f"actors.count auto: starting {start} actor(s) on {cpus} usable CPUs (one kept for the learner)"
        )
    elif start < cfg.actors.count:
        warnings.append(f"actors.count {cfg.actors.count} clamped to {start}: {cpus} usable CPUs (affinity/cgroup)")
    return Span(start, 1, max(1, min(cpus, cfg.actors.max_count)) if auto else start, auto)


def _batch(cfg: Config) -> Span:
    lc = cfg.learner
    if lc.batch_size == "auto":
        return Span(min(lc.initial_batch_size, lc.max_batch_size), 8, lc.max_batch_size, True)
    return Span(lc.batch_size, lc.batch_size, lc.batch_size, False)


def _capacity(cfg: Config, ring: RingSpec, row: float) -> Span:
    rc, avail, hi = cfg.replay, resources.available_memory(), ring.capacity_max
    if rc.capacity != "auto":
        return Span(rc.capacity, rc.capacity, rc.capacity, False)
    lo = min(cfg.replay.min_capacity, hi)
    # Start at what a quarter of available memory holds (or as asked); the monitor moves it.
    start = int(min(hi, max(lo, rc.initial_capacity or avail // 4 // row)))
    return Span(start, lo, hi, True)


def rate_limit(cfg: Config, batch: Span) -> RateLimit:
    """The replay rate limiter the config asks for; StartError when it could deadlock."""
    r, spi = cfg.replay, cfg.replay.samples_per_insert
    floor = (cfg.actors.block * (spi or 0) + batch.hi) / 2
    buffer = r.error_buffer if r.error_buffer is not None else 4 * floor
    try:
        return RateLimit(spi, r.min_fill, buffer, cfg.actors.block, batch.hi)
    except RateLimitError as exc:
        raise StartError(f"replay.error_buffer: {exc}") from None


def plan(cfg: Config, check: bool = True) -> Plan:
    """Check and size a run. Bad input raises StartError; so does a start that does not fit, unless
    `check` is off (`python -m mp_rl.plan` shows such a plan, with `Plan.problems`)."""
    if cfg.learner.device == "cuda" and not torch.cuda.is_available():
        raise StartError("learner.device: cuda requested but no CUDA device is available (use auto or cpu)")
    if forks.method() not in forks.METHODS:
        raise StartError(f"MP_RL_START_METHOD={forks.method()}: no such start method "
                         f"(one of {', '.join(forks.METHODS)})")  # fmt: skip
    try:
        spec = probe(cfg.env)
    except EnvError as exc:
        raise StartError(str(exc)) from None
    warnings: list[str] = []
    ring, max_members = ring_spec(cfg, spec), cfg.actors.max_count + 8
    limits, bases, env = Limits.current(learner_device(cfg)), footprint.bases(), footprint.env_cost(cfg.env)
    actors, batch, capacity = _actors(cfg, warnings), _batch(cfg), _capacity(cfg, ring, ring.bytes_per_row)
    size = None
    if cfg.learner.hidden == "auto" or cfg.learner.cnn_scale == "auto":

        def fits(net: footprint.NetCost) -> bool:
            b = Budget(cfg, spec, ring, net, bases, env, limits, max_members)
            return not b.problems(Point(actors.start, cfg.env.envs_per_actor, batch.start, capacity.lo))

        threads = 1 if limits.vram is not None else max(1, limits.cpus - actors.start)  # what the learner gets
        forks.wait_ready()  # its timings must not share the cores with the members' server importing torch
        size = sizing.choose_size(cfg, spec, actors.start, batch.start, learner_device(cfg), threads, fits)
        cfg = sizing.resolve(cfg, size)
        warnings.append(size.reasons[-1])
    net = _network(cfg, spec)
    budget = Budget(cfg, spec, ring, net, bases, env, limits, max_members)
    knobs = _fitted(budget, Knobs(actors, batch, capacity))
    width, budget.largest_net, floor = _width(budget, knobs, spec)
    budget.board_numel = budget.largest_net.numel
    knobs = dataclasses.replace(knobs, width=width, width_floor=floor)
    problems = budget.problems(point(cfg, knobs))
    if problems and check:
        fix = would_fit(budget, point(cfg, knobs))
        raise StartError(f"the plan does not fit: {'; '.join(problems)}"
                         f"{'; it would fit with ' + ' or '.join(fix) if fix else ''} "
                         f"(python -m mp_rl.plan shows each component)")  # fmt: skip
    if knobs.capacity.auto:
        warnings.append(f"replay.capacity auto: starting at {knobs.capacity.start:,} rows "
                        f"({gib(budget.replay(knobs.capacity.start).shm)}), at most {knobs.capacity.hi:,}")  # fmt: skip
    if ring.capacity_max * ring.bytes_per_row > limits.available:
        warnings.append(f"replay.max_capacity would need {gib(ring.capacity_max * ring.bytes_per_row)}; "
                        f"capacity will stay within {knobs.capacity.hi:,} rows")  # fmt: skip
    limit = rate_limit(cfg, knobs.batch_size)
    if width.auto:
        floor = knobs.width_floor
        aim = f"; it widens to {floor} % while memory allows (its kind's shipped size)" if floor > 100 else ""
        warnings.append(f"learner.grow auto: the network may move between {width.lo} % and {width.hi} % of its widths "
                        f"(the weight board holds {budget.board_numel:,} parameters){aim}")  # fmt: skip
    return Plan(cfg, spec, ring, limit, knobs, max_members, budget.board_numel, warnings, budget, problems, size)


def _network(cfg: Config, spec: EnvSpec) -> footprint.NetCost:
    """The network's cost, or the one line that says why it cannot be built or held."""
    try:  # a network that cannot take the observation, or a size torch refuses, is one line here
        net = network_cost(cfg, spec)
    except NetworkError as exc:
        raise StartError(str(exc)) from None
    except (RuntimeError, ValueError) as exc:
        raise StartError(f"learner: cannot build the Q-network for {spec.obs_shape}: {str(exc)[:160]}") from None
    # Online, target, gradients, Adam's two moments and the board's two slots: 7 float32 copies.
    avail = resources.available_memory()
    if 7 * 4 * net.numel > 0.9 * avail:
        raise StartError(f"learner.hidden: a network of {net.numel:,} parameters needs {gib(28 * net.numel)} for "
                         f"the learner and weight board, more than {gib(avail)} available")  # fmt: skip
    return net


def point(cfg: Config, knobs: Knobs, top: bool = False) -> Point:
    """The operating point at the knobs' starts (or, `top`, at their upper bounds)."""
    pick = (lambda s: s.hi) if top else (lambda s: s.start)
    return Point(pick(knobs.actors), cfg.env.envs_per_actor, pick(knobs.batch_size), pick(knobs.capacity))


def _fitted(budget: Budget, k: Knobs) -> Knobs:
    """Upper bounds an `auto` knob may reach without the run outgrowing the machine: actors and batch
    with the replay at its smallest, then the replay with both of those at their largest."""
    e = budget.cfg.env.envs_per_actor

    def cap(span: Span, knob: str, at: Point) -> Span:
        if not span.auto:
            return span
        hi = budget.largest(at, knob, span.lo, span.hi)
        hi = span.lo if hi is None else hi  # not even the least fits: the start check says so
        return Span(min(span.start, hi), span.lo, hi, True)

    actors = cap(k.actors, "actors", Point(k.actors.lo, e, k.batch_size.start, k.capacity.lo))
    batch = cap(k.batch_size, "batch", Point(actors.hi, e, k.batch_size.lo, k.capacity.lo))
    capacity = cap(k.capacity, "capacity", Point(actors.hi, e, batch.hi, k.capacity.lo))
    return Knobs(actors, batch, capacity)


def _width(budget: Budget, k: Knobs, spec: EnvSpec) -> tuple[Span, footprint.NetCost, int]:
    """`learner.grow: auto`: the widths, in percent of the config's, the monitor may move the network
    between (halving down to 25 %; doubling while the network still changes and the wider learner
    fits the budget with every other knob at its top), the largest network's cost, and the floor:
    the least width of that ladder at which the network has as many parameters as its kind ships with
    (`sizing.REFERENCE`: an MLP's layers as wide as the shipped ones, as many as it has; a CNN at
    scale 1), or the top. Below the floor the monitor widens the network even while the learner is the
    bottleneck (`sizing`'s measurement: under that size a network only trades capacity for data)."""
    cfg, lc = budget.cfg, budget.cfg.learner
    if lc.grow != "auto":
        return Span(100, 100, 100, False), budget.net, 0
    costs: dict[int, footprint.NetCost] = {}

    def at(percent: int) -> footprint.NetCost:
        if percent not in costs:
            costs[percent] = network_cost(cfg.model_copy(update={"learner": growth.at_width(lc, percent)}), spec)
        return costs[percent]

    lo = 100
    while lo > 25 and at(lo // 2).numel != at(lo).numel:
        lo //= 2
    hi, top = 100, point(cfg, k, top=True)
    while at(2 * hi).numel != at(hi).numel:
        wider = cfg.model_copy(update={"learner": growth.at_width(lc, 2 * hi)})
        b = Budget(wider, spec, budget.ring, at(2 * hi), budget.bases, budget.env, budget.limits, budget.max_members)
        if b.problems(top):
            break
        hi *= 2
    mlp = choose(spec.obs_shape, lc.network) == "mlp"
    ref = sizing.REFERENCE
    shipped = {"hidden": ref["mlp"][:1] * len(lc.hidden)} if mlp else {"cnn_scale": ref["cnn"]}
    least = network_cost(cfg.model_copy(update={"learner": lc.model_copy(update=shipped)}), spec).numel
    floor = lo
    while floor < hi and at(floor).numel < least:
        floor *= 2
    return Span(100, lo, hi, True), at(hi), floor


def would_fit(budget: Budget, p: Point) -> list[str]:
    """Overrides that would fit, one knob at a time with the others as asked (the largest value of each)."""
    found = []
    for knob, name, lo, now in (("capacity", "replay.capacity", min(1024, p.capacity), p.capacity),
                                ("batch", "learner.batch_size", 8, p.batch), ("actors", "actors.count", 1, p.actors),
                                ("envs_per_actor", "env.envs_per_actor", 1, p.envs_per_actor)):  # fmt: skip
        best = budget.largest(p, knob, lo, now) if now > lo else None
        if best is not None and best < now:
            found.append(f"{name}={best}")
    return found


def ring_spec(cfg: Config, spec: EnvSpec) -> RingSpec:
    """Frame rows for stacked observations (unless `replay.frames_once` is off), whole rows otherwise."""
    r, block = cfg.replay, cfg.actors.block
    if spec.frame_stack > 1 and r.frames_once:
        k = spec.frame_stack
        ring = RingSpec.for_frames(spec.obs_shape[1:], spec.obs_dtype, k, r.n_step, r.max_capacity, block)
    else:
        ring = RingSpec.for_transitions(spec.obs_shape, spec.obs_dtype, r.max_capacity, block)
    return ring.normalised()


def network_cost(cfg: Config, spec: EnvSpec) -> footprint.NetCost:
    """Parameters and activations of the Q-network this config builds (the weight board's size)."""
    with torch.device("meta"):  # shapes only: a network too large for memory is counted, not allocated
        net = q_network(spec, cfg.learner)
    check_network(net, spec.obs_shape)  # the forward pass too, so a shape it cannot take fails here
    return footprint.network(net, spec.obs_shape)


def new_run_dir(cfg: Config) -> Path:
    """runs/<timestamp>-<name>, made unique and owner-only (it holds the model); created only once
    every check has passed. StartError when it cannot be made."""
    root = Path(cfg.run.runs_dir)
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.run.name}"
    path, i = root / base, 1
    try:
        while path.exists():
            i += 1
            path = root / f"{base}-{i}"
        root.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    except OSError as exc:
        raise StartError(f"run.runs_dir {root}: cannot create a run folder there ({exc.strerror})") from None
    path.chmod(0o700)  # mkdir's mode is cut by the umask; say it outright
    for sub in (LOGS, CHECKPOINTS):
        (path / sub).mkdir(mode=0o700)
    return path.resolve()
