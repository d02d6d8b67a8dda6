"""The auto-tuner: a short search over the throughput knobs at a run's start, its result cached.

The search runs inside a live run (the supervisor steps it every tick): each trial sets the control
block's targets (envs per actor, actors, batch size), waits for the system to settle, and measures
env steps/s over a few short windows, at the replay ratio the rate limiter holds. It climbs one knob
at a time (envs per actor, then actors, then batch size) from the best point so far, up its ladder
while that helps and otherwise down it. Points the budget says would not fit are skipped.

The result is cached (`cache`) under a hash of everything that could change it: the machine's
fingerprint, library and mp_rl versions, the env's spec, the network, what is measured and the search
space. A cached start takes the recorded point at once and probes it while the run trains; only when
the probe is clearly slower than the record does it search again.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from mp_rl.config import Config
from mp_rl.start import cache
from mp_rl.start.budget import Budget, Point

log = logging.getLogger("mp_rl.tune")

TUNE_VERSION = 1
SLOWER = 0.7  # a probe below this share of the recorded rate searches again
BETTER = 1.02  # a step must beat the best by this much to move it: noise does not buy actors or memory


@dataclass(frozen=True)
class Timing:
    """How long each trial takes: a settle after a change, then `windows` windows, their median kept."""

    settle_s: float = 1.0
    window_s: float = 0.75
    windows: int = 3


@dataclass(frozen=True)
class Space:
    """The values each knob may take in the search (one value: not searched)."""

    envs: tuple[int, ...]
    actors: tuple[int, ...]
    batch: tuple[int, ...]

    @classmethod
    def of(cls, cfg: Config, knobs) -> Space:
        e = cfg.env.envs_per_actor
        envs = tuple(sorted({max(1, e // 2), e, min(1024, 2 * e)}))

        def ladder(span) -> tuple[int, ...]:
            if not span.auto:
                return (span.start,)
            values, v = {span.lo, span.hi, span.start}, 1
            while v < span.hi:
                if v > span.lo:
                    values.add(v)
                v *= 2
            return tuple(sorted(values))

        return cls(envs, ladder(knobs.actors), ladder(knobs.batch_size))

    def clamp(self, p: Point, start: Point) -> Point:
        """`p` within the search's bounds; the capacity is the plan's (the tuner never moves it)."""

        def within(v: int, values: tuple[int, ...]) -> int:
            return min(max(v, min(values)), max(values))

        return Point(within(p.actors, self.actors), within(p.envs_per_actor, self.envs), within(p.batch, self.batch),
                     start.capacity)  # fmt: skip


class CachedPoint(BaseModel):
    """A point as the cache records it: whole, positive numbers (a negative capacity fits any budget)."""

    model_config = ConfigDict(strict=True, extra="forbid")  # the dataclass it becomes takes no other key
    actors: int = Field(ge=1)
    envs_per_actor: int = Field(ge=1)
    batch: int = Field(ge=1)
    capacity: int = Field(ge=1)


class CachedTune(BaseModel):
    """An autotune entry (`Tuner.result`): the point and its rate are what a start relies on."""

    model_config = ConfigDict(strict=True, extra="allow")
    point: CachedPoint
    rate: float = Field(gt=0)


@dataclass
class Trial:
    point: Point
    rates: list[float] = field(default_factory=list)
    skipped: str = ""

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    def to_json(self) -> dict:
        return {"point": dataclasses.asdict(self.point), "rates": [round(r, 1) for r in self.rates],
                "rate": round(self.rate, 1), "skipped": self.skipped}  # fmt: skip


def cache_key(cfg: Config, spec, budget: Budget, space: Space) -> str:
    """Everything that could change the answer (Triton keys its autotuner's disk cache the same way)."""
    lc, r = cfg.learner, cfg.replay
    network = {"numel": budget.net.numel, "kind": lc.network, "hidden": lc.hidden, "dueling": lc.dueling,
               "algo": lc.algo, "amp": lc.amp, "compile": lc.compile, "device": budget.device}  # fmt: skip
    measured = {"samples_per_insert": r.samples_per_insert, "n_step": r.n_step, "block": cfg.actors.block,
                "frames_once": r.frames_once, "prioritized": r.prioritized, "env": cfg.env.model_dump(mode="json"),
                "torch_threads": cfg.actors.torch_threads, "prefetch": lc.prefetch}  # fmt: skip
    return cache.key("autotune", TUNE_VERSION, cache.fingerprint(), cache.versions(), dataclasses.asdict(spec),
                     network, measured, dataclasses.asdict(space))  # fmt: skip


class Tuner:
    """A search (or a cached point's probe) stepped by the supervisor's watch loop.

    `control` is the run's control block; `ready()` says when the learner is sampling (the replay
    ratio is what the rate limiter holds from then on). `step()` returns True once it is done;
    `best` is the point then applied."""

    def __init__(self, cfg: Config, budget: Budget, space: Space, start: Point, control, ready,
                 key: str, cached: dict | None = None, timing: Timing = Timing()):  # fmt: skip
        self.cfg, self.budget, self.space, self.control, self.ready = cfg, budget, space, control, ready
        self.key, self.cached, self.timing = key, cached, timing
        self.trials: list[Trial] = []
        self.best: Point = Point(**cached["point"]) if cached else start
        self.best_rate = 0.0
        self.started = time.monotonic()
        self.seconds = 0.0
        self.searched = False
        self.probe: Trial | None = None
        self.plan = self._search() if cached is None else self._probe()
        self.current: Trial | None = None
        self.phase_until = 0.0
        self.mark: tuple[float, int] | None = None
        self.done = False
        self.settle_started = 0.0
        self.say = log.info  # where each trial's line goes (the supervisor's status output)

    # --- what to try ----------------------------------------------------------------------------
    def _probe(self):
        self.probe = Trial(self.best)
        yield self.probe
        if self.probe.rate < SLOWER * self.cached["rate"]:
            log.warning("tuned point %s runs at %.0f steps/s, recorded %.0f: searching again",
                        self.best, self.probe.rate, self.cached["rate"])  # fmt: skip
            yield from self._search()

    def _search(self):
        """Coordinate ascent: each knob in turn, from the best point so far, up its ladder while that
        helps, then (if going up did not) down it."""
        self.searched = True
        for knob, values in (("envs_per_actor", self.space.envs), ("actors", self.space.actors),
                             ("batch", self.space.batch)):  # fmt: skip
            if len(values) < 2:
                continue
            here = getattr(self.best, knob)
            values = tuple(sorted({*values, here}))
            trial = yield from self._trial(self.best)  # what each step of this knob is compared with
            if trial is not None:
                self.best_rate = max(self.best_rate, trial.rate)
            i = values.index(here)
            if not (yield from self._climb(knob, values[i + 1 :])):
                yield from self._climb(knob, values[:i][::-1])

    def _climb(self, knob: str, values: tuple[int, ...]):
        """Step along `values` while a step beats the best by BETTER; two steps that do not end it."""
        improved, misses = False, 0
        for v in values:
            trial = yield from self._trial(dataclasses.replace(self.best, **{knob: v}))
            if trial is None:
                continue
            if trial.rate > BETTER * self.best_rate:
                self.best, self.best_rate, improved, misses = trial.point, trial.rate, True, 0
            else:
                misses += 1
                if misses >= 2:
                    break
        return improved

    def _trial(self, p: Point):
        """Measure `p` (yielded to the loop), or the trial already made of it; None when it does not fit."""
        known = next((t for t in self.trials if t.point == p), None)
        if known is not None:
            return None if known.skipped else known
        trial = Trial(p)
        if problems := self.budget.problems(p):
            trial.skipped = f"does not fit: {problems[0]}"
            self.trials.append(trial)
            return None
        yield trial
        return trial

    # --- the loop ---------------------------------------------------------------------------------
    def apply(self, p: Point) -> None:
        c = self.control
        c.set_target("envs_per_actor", p.envs_per_actor)
        c.set_target("actors", p.actors)
        c.set_target("batch_size", p.batch)

    def step(self, now: float | None = None) -> bool:
        if self.done:
            return True
        now = time.monotonic() if now is None else now
        if self.current is None:
            if not self.ready():
                return False
            self.current = next(self.plan, None)
            if self.current is None:
                return self._finish(now)
            if self.current is not self.probe:
                self.trials.append(self.current)
            self.apply(self.current.point)
            self.settle_started, self.mark = now, None
            self.phase_until = now + self.timing.settle_s
            return False
        if now < self.phase_until or (self.mark is None and not self._stepping(now)):
            return False
        steps = self.control.counters()["env_steps"]
        if self.mark is not None:
            t0, s0 = self.mark
            self.current.rates.append((steps - s0) / (now - t0))
        self.mark, self.phase_until = (now, steps), now + self.timing.window_s
        if len(self.current.rates) >= self.timing.windows:
            t = self.current
            p = t.point
            self.say(f"autotune {'probe' if t is self.probe else 'trial'}: {p.envs_per_actor} envs x "
                     f"{p.actors} actor(s), batch {p.batch}: {t.rate:,.0f} env steps/s")  # fmt: skip
            if t is self.probe and not self.searched:
                self.best_rate = t.rate
            self.current = None
        return False

    def _stepping(self, now: float) -> bool:
        """Every actor the trial asks for is up and has reported steps (a new one starts a process:
        imports and all); after 30 s the trial measures what there is."""
        ours = [m for m in self.control.live_members() if m["kind"] == "actor" and not m["attached"]]
        up = len(ours) >= self.current.point.actors and all(m["steps"] > 0 for m in ours)
        return up or now - self.settle_started > 30

    def _finish(self, now: float) -> bool:
        self.apply(self.best)
        self.seconds, self.done = now - self.started, True
        if self.searched:
            cache.save("autotune", self.key, self.result())
        return True

    def result(self) -> dict:
        return {"point": dataclasses.asdict(self.best), "rate": round(self.best_rate, 1),
                "searched": self.searched, "seconds": round(self.seconds, 1),
                "probe": self.probe.to_json() if self.probe else None,
                "trials": [t.to_json() for t in self.trials], "space": dataclasses.asdict(self.space),
                "key": self.key}  # fmt: skip


def for_run(plan, control, ready, retune: bool = False, timing: Timing = Timing()) -> Tuner:
    """The tuner of a run: its search space and cache key from the plan; the cached point unless
    `retune` (or the entry no longer fits this plan)."""
    from mp_rl.start.preflight import point

    space = Space.of(plan.cfg, plan.knobs)
    key = cache_key(plan.cfg, plan.spec, plan.budget, space)
    start = point(plan.cfg, plan.knobs)
    cached = None if retune else cache.load("autotune", key, CachedTune)
    if cached is not None:  # what is applied stays within this plan's bounds, and must fit
        cached = {**cached, "point": dataclasses.asdict(space.clamp(Point(**cached["point"]), start))}
        if plan.budget.problems(Point(**cached["point"])):
            cached = None
    return Tuner(plan.cfg, plan.budget, space, start, control, ready, key, cached, timing)
