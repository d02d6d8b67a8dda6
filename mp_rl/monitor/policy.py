"""The monitor's decisions: classify resources, name the bottleneck, move one knob at a time.

Pure logic over averaged snapshots and a clock the caller passes in, so every rule, the cooldown,
the hysteresis and the undo of a harmful move are tested without processes.

Knobs: `actors` (the supervisor's own actors; attached ones count toward the CPU bound but are never
retired), `batch_size`, `capacity`, and `width` (the network's widths in percent of the config's,
doubled or halved by the learner with its function kept: `agent.growth`). A knob fixed in the
config never moves; an `auto` one moves within its bounds. After each move the policy waits out the
cooldown, compares env steps/s before and after, undoes a move that made things worse and shrinks
that knob's step when a move did not help.

The width is judged by learning too: the median return of the episodes that ended in the window
before a resize against the window after it. A network widened toward the size its kind ships with
(the knob's `floor`) is judged by learning alone: below that size a learner that is the bottleneck
trades the updates it loses for capacity, which the planner measured to pay (`start.sizing`), so the
env steps/s it costs are its expected price, recorded but not undone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Thresholds:
    bottleneck: float = 0.85  # a resource this busy is the bottleneck
    potential: float = 0.70  # a potential one
    headroom: float = 0.50  # below this it has room
    starved: float = 0.20  # learner waiting for data this fraction of its time
    blocked: float = 0.20  # actors held back by the rate limiter this fraction of theirs
    hysteresis: float = 0.05  # extra margin a threshold needs to reverse a knob's last direction
    worse: float = 0.05  # throughput lower by this fraction after a move: undo it
    helped: float = 0.02  # higher by this fraction: the move helped (else its step shrinks)
    worse_return: float = 0.25  # a resize's median episode return lower by this fraction of its own: undo it
    episodes: int = 5  # the fewest episodes in each window for a return to be compared


# RAM headroom -> capacity factor (the design card's rules); between 30 % and 40 % nothing moves.
CAPACITY_RULES = ((0.60, 2.0), (0.40, 1.2))
CAPACITY_SHRINK = ((0.20, 0.7), (0.30, 0.9))


@dataclass
class Knob:
    name: str
    value: int
    auto: bool
    lo: int
    hi: int
    step: float  # actors: added/removed per move; others: multiplicative factor
    min_step: float
    last_dir: int = 0
    floor: int = 0  # width: below it the network is smaller than its kind ships with (the monitor widens it)
    blocked_until: dict[int, float] = field(default_factory=dict)  # direction -> time (after an undo)
    undos: int = 0

    def clamp(self, v: float) -> int:
        return int(min(max(round(v), self.lo), self.hi))


@dataclass
class Move:
    id: int
    knob: str
    rule: str
    old: int
    new: int
    time: float
    before: float  # env steps/s over the window before the move
    before_return: float | None = None  # the median episode return over that window (width moves)
    by_learning_only: bool = False  # a widening toward the floor: its throughput cost is expected
    judged: bool = False
    undo_of: int | None = None


def _track(knob: str) -> str:
    return {"capacity": "memory", "width": "network"}.get(knob, "throughput")


class Policy:
    """`decide(window, now)` returns decision records (dicts) and updates `knobs` for the moves it makes."""

    def __init__(self, knobs: dict[str, Knob], cooldown_s: float, settle_s: float, t: Thresholds | None = None):
        self.knobs, self.cooldown, self.settle, self.t = knobs, cooldown_s, settle_s, t or Thresholds()
        self.pending: dict[str, Move] = {}  # track -> its last move, until judged
        self.last_at = {"throughput": float("-inf"), "memory": float("-inf"), "network": float("-inf")}
        self.ids = itertools.count(1)
        self.declined: dict[str, str] = {}  # "knob+1" -> last reason logged: a standing refusal is logged once

    # --- classification ------------------------------------------------------------------
    def level(self, busy: float | None) -> str | None:
        t = self.t
        if busy is None:
            return None
        return "bottleneck" if busy > t.bottleneck else "potential" if busy > t.potential else (
            "headroom" if busy < t.headroom else "ok")  # fmt: skip

    def classify(self, w: dict) -> dict:
        """Each resource's level and one named bottleneck, the pipeline signals first (they say more)."""
        ram = None if w.get("ram_headroom") is None else 1.0 - w["ram_headroom"]
        vram = w["vram_used"] / w["vram_total"] if w.get("vram_total") else None
        levels = {"cpu": self.level(w.get("cpu_busy")), "ram": self.level(ram), "gpu": self.level(w.get("gpu_util")),
                  "vram": self.level(vram)}  # fmt: skip
        if w.get("learner_wait_frac", 0) > self.t.starved:
            name = "actors: the learner waits for data"
        elif w.get("actor_blocked_frac", 0) > self.t.blocked:
            name = "learner: actors are held back by the rate limiter"
        else:
            busiest = [r for r in ("ram", "cpu", "gpu", "vram") if levels[r] == "bottleneck"]
            name = busiest[0] if busiest else "none"
        return {"bottleneck": name, "levels": levels}

    # --- the rules ---------------------------------------------------------------------------
    def _margin(self, knob: Knob, direction: int) -> float:
        """Hysteresis: reversing the knob's last direction needs the threshold cleared by a margin."""
        return self.t.hysteresis if knob.last_dir == -direction else 0.0

    def _capacity_rule(self, w: dict) -> tuple[str, int, float] | None:
        k, head = self.knobs["capacity"], w.get("ram_headroom")
        if head is None:
            return None
        for limit, factor in CAPACITY_SHRINK:
            if head < limit - self._margin(k, -1):
                return f"ram headroom {head:.0%} < {limit:.0%}: capacity x{factor}", -1, factor
        for limit, factor in CAPACITY_RULES:
            if head > limit + self._margin(k, +1):
                # Growing must also fit: the rows added are committed as they fill.
                extra = (k.value * factor - k.value) * w.get("row_bytes", 0)
                if extra > 0.5 * w.get("ram_available", 0):
                    return None
                return f"ram headroom {head:.0%} > {limit:.0%}: capacity x{factor}", +1, factor
        return None

    def _actor_rule(self, w: dict) -> tuple[str, int] | None:
        k, t, cpu = self.knobs["actors"], self.t, w.get("cpu_busy", 1.0)
        wait, blocked = w.get("learner_wait_frac", 0.0), w.get("actor_blocked_frac", 0.0)
        if wait > t.starved + self._margin(k, +1) and cpu < t.bottleneck:
            return f"learner waits {wait:.0%} of its time and cpu is {cpu:.0%} busy: more actors", +1
        if cpu < t.headroom - self._margin(k, +1) and blocked < t.blocked:
            return f"cpu {cpu:.0%} busy, actors not held back: more actors", +1
        if cpu > t.bottleneck + self._margin(k, -1) and wait < t.starved:
            return f"cpu {cpu:.0%} busy and the learner is fed: fewer actors", -1
        if blocked > t.blocked + self._margin(k, -1) and self._stuck("batch_size", +1):
            return f"actors held back {blocked:.0%} and the batch cannot grow: fewer actors", -1
        return None

    def _batch_rule(self, w: dict) -> tuple[str, int] | None:
        k, t = self.knobs["batch_size"], self.t
        blocked, gpu = w.get("actor_blocked_frac", 0.0), w.get("gpu_util")
        vram = w["vram_used"] / w["vram_total"] if w.get("vram_total") else None
        if (gpu is not None and gpu > t.bottleneck) or (vram is not None and vram > t.bottleneck):
            return "gpu or its memory is the bottleneck: smaller batch", -1
        if blocked > t.blocked + self._margin(k, +1) and (gpu is None or gpu < t.potential):
            return f"actors held back {blocked:.0%} by the rate limiter: larger batch (a faster learner)", +1
        return None

    def _width_rule(self, w: dict) -> tuple[str, int] | None:
        """Narrower when memory is the bottleneck; wider while the learner has headroom: it waits for data
        that more actors cannot bring (they are at their bound, or the CPU is busy), or the GPU idles."""
        if "width" not in self.knobs:
            return None
        k, t = self.knobs["width"], self.t
        head, wait, gpu = w.get("ram_headroom"), w.get("learner_wait_frac", 0.0), w.get("gpu_util")
        cpu = w.get("cpu_busy", 1.0)
        vram = w["vram_used"] / w["vram_total"] if w.get("vram_total") else None
        if head is not None and head < CAPACITY_SHRINK[0][0] - self._margin(k, -1):
            return f"ram headroom {head:.0%}: a narrower network", -1
        if vram is not None and vram > t.bottleneck + self._margin(k, -1):
            return f"gpu memory {vram:.0%} used: a narrower network", -1
        ram_ok = head is None or head > CAPACITY_SHRINK[1][0] + self._margin(k, +1)
        roomy = ram_ok and (vram is None or vram < t.potential)
        if k.value < k.floor and roomy:
            why = "below that size capacity is worth more than the updates it costs"
            return f"the network is at {k.value} % of its widths, under the size its kind ships with " \
                   f"({k.floor} %): a wider network ({why})", +1  # fmt: skip
        more_actors = not self._stuck("actors", +1) and cpu < t.potential
        if wait > t.starved + self._margin(k, +1) and not more_actors:
            return f"the learner waits {wait:.0%} of its time and more actors cannot feed it: a wider network", +1
        if gpu is not None and gpu < t.headroom - self._margin(k, +1) and wait > t.starved / 2:
            return f"gpu {gpu:.0%} busy: a wider network", +1
        return None

    def _stuck(self, name: str, direction: int) -> bool:
        k = self.knobs[name]
        return not k.auto or (k.value >= k.hi if direction > 0 else k.value <= k.lo)

    def _target(self, k: Knob, direction: int, factor: float | None) -> int:
        if factor is not None:  # capacity: the design's fixed factors
            return k.clamp(k.value * factor)
        if k.name == "actors":
            return k.clamp(k.value + direction * max(1, round(k.step)))
        return k.clamp(k.value * k.step if direction > 0 else k.value / k.step)

    # --- deciding ----------------------------------------------------------------------------
    def decide(self, w: dict, now: float) -> list[dict]:
        """One round: judge settled moves, then at most one new move per track; refusals logged once.

        Two tracks keep their own cooldown: throughput (actors, batch size: judged by env steps/s,
        one move at a time) and memory (capacity: a safety knob, not judged by throughput, so RAM
        moves neither wait for nor disturb the judging of the others)."""
        out = self._judge(w, now)
        undone = {r["knob"] for r in out if r["kind"] == "move"}  # an undo was that track's move
        cap = self._capacity_rule(w)
        urgent = cap is not None and cap[1] < 0 and w["ram_headroom"] < CAPACITY_SHRINK[0][0]
        candidates = [("capacity", *cap)] if cap else []
        if b := self._batch_rule(w):
            candidates.append(("batch_size", *b, None))
        if a := self._actor_rule(w):
            candidates.append(("actors", *a, None))
        if n := self._width_rule(w):
            candidates.append(("width", *n, None))
        moved = {_track(n) for n in undone}
        for name, rule, direction, factor in candidates:
            track = _track(name)
            if track in moved:
                continue
            k = self.knobs[name]
            new = self._target(k, direction, factor)
            since, pending = now - self.last_at[track], self.pending.get(track)
            if not k.auto:
                reason = "fixed in the config"
            elif new == k.value:
                reason = f"at its bound [{k.lo}, {k.hi}]"
            elif k.blocked_until.get(direction, float("-inf")) > now:
                reason = "a move this way was undone recently"
            elif urgent and name == "capacity":
                reason = None if since >= min(self.cooldown, 1.0) else "cooldown"  # before the OOM killer acts
            elif since < self.cooldown:
                reason = "cooldown"
            elif pending is not None and not pending.judged:
                reason = "the last move's effect is not measured yet"
            else:
                reason = None
            if reason is None:
                out.append(self._move(k, rule, direction, new, w, now))
                moved.add(track)
            else:
                out += self._declined(name, rule, direction, reason, k, w, now)
        return out

    def _move(self, k: Knob, rule: str, direction: int, new: int, w: dict, now: float, undo_of=None) -> dict:
        move = Move(next(self.ids), k.name, rule, k.value, new, now, w.get("env_steps_per_s", 0.0), undo_of=undo_of)
        if k.name == "width":
            move.before_return = self._median_return(w)
            move.by_learning_only = direction > 0 and k.value < k.floor
        k.value, k.last_dir = new, direction
        track = _track(k.name)
        self.pending[track], self.last_at[track] = move, now
        self.declined = {key: r for key, r in self.declined.items() if _track(key[:-2]) != track}
        return {"kind": "move", "id": move.id, "time": round(now, 3), "knob": k.name, "rule": rule,
                "old": move.old, "new": new, "undo_of": undo_of, **self.classify(w), "snapshot": w}  # fmt: skip

    def _declined(self, name: str, rule: str, direction: int, reason: str, k: Knob, w: dict, now: float) -> list:
        key = f"{name}{direction:+d}"
        if self.declined.get(key) == reason:
            return []
        self.declined[key] = reason
        return [{"kind": "declined", "time": round(now, 3), "knob": name, "rule": rule, "reason": reason,
                 "value": k.value, **self.classify(w), "snapshot": w}]  # fmt: skip

    def _judge(self, w: dict, now: float) -> list[dict]:
        """The measured effect of the pending move, once it has settled; undo it if it made things worse."""
        return [r for m in list(self.pending.values()) for r in self._judge_one(m, w, now)]

    def _judge_one(self, m: Move, w: dict, now: float) -> list[dict]:
        if m.judged or now - m.time < self.settle:
            return []
        m.judged = True
        after = w.get("env_steps_per_s", 0.0)
        change = after / m.before - 1.0 if m.before > 0 else 0.0
        k = self.knobs[m.knob]
        direction = 1 if m.new > m.old else -1
        rec = {"kind": "effect", "of": m.id, "time": round(now, 3), "knob": m.knob, "before": round(m.before, 1),
               "after": round(after, 1), "change": round(change, 4)}  # fmt: skip
        if m.knob == "width":
            rec["return_before"], rec["return_after"] = m.before_return, self._median_return(w)
        if m.knob == "capacity" or m.undo_of is not None or (m.knob == "width" and direction < 0):
            # Safety moves (memory) and undos are not second-guessed.
            rec["verdict"] = "kept (not judged by throughput)"
            rec["ram_available"] = w.get("ram_available")
            return [rec]
        worse = None if m.by_learning_only or change >= -self.t.worse else f"{change:+.0%} env steps/s"
        if m.knob == "width" and worse is None and self._learning_worse(m.before_return, rec["return_after"]):
            worse = f"median return {m.before_return:g} -> {rec['return_after']:g}"
        if worse is not None:
            rec["verdict"] = "worse: undone"
            self._shrink(k)
            k.blocked_until[direction] = now + max(self.cooldown, self.settle) * 2 ** (k.undos + 1)
            k.undos += 1
            return [rec, self._move(k, f"undo move {m.id} ({worse})", -direction, m.old, w, now, undo_of=m.id)]
        if m.by_learning_only:
            rec["verdict"] = f"kept (toward its kind's shipped size: judged by learning; {change:+.0%} env steps/s)"
            k.undos = 0
        elif change < self.t.helped:
            rec["verdict"] = "did not help: smaller steps"
            self._shrink(k)
        else:
            rec["verdict"] = "helped"
            k.undos = 0
        return [rec]

    def _median_return(self, w: dict) -> float | None:
        """The window's median episode return, when enough episodes ended in it to say."""
        enough = w.get("return_count", 0) >= self.t.episodes
        return w.get("return_median") if enough else None

    def _learning_worse(self, before: float | None, after: float | None) -> bool:
        return before is not None and after is not None and after < before - self.t.worse_return * abs(before)

    @staticmethod
    def _shrink(k: Knob) -> None:
        k.step = max(k.min_step, k.step / 2 if k.name == "actors" else k.step**0.5)
