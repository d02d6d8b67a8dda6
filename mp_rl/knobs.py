"""The runtime knobs' bounds: where each knob starts and the span it may move in.

The planner (`start.preflight.plan`) resolves them once from the config; the run's manifest carries
them to every member process (`Knobs.of_info`), so a child needs nothing of the planner to learn them.
The config spells each triple the same way: `<knob>` (a number or 'auto'), `initial_<knob>`,
`min_<knob>` where it has one, and `max_<knob>`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

NAMES = ("actors", "batch_size", "capacity", "width")


@dataclass(frozen=True)
class Span:
    """One knob, resolved: where it starts and the bounds it may move in (`auto`: the monitor moves it)."""

    start: int
    lo: int
    hi: int
    auto: bool

    def clamp(self, value: int) -> int:
        return min(max(int(value), self.lo), self.hi)


@dataclass(frozen=True)
class Knobs:
    """Every `auto` knob of a config, answered once by the planner and passed down as numbers."""

    actors: Span
    batch_size: Span
    capacity: Span
    width: Span = Span(100, 100, 100, False)  # the network's widths in percent of the config's (`learner.grow`)
    width_floor: int = 0  # the width at which the network reaches the size its kind ships with (the monitor's aim)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Knobs:
        """The knobs as `to_json` wrote them; ValueError naming the knob when a field is missing or wrong
        (a manifest is read from disk, so it is checked like any input)."""
        spans: dict = {}
        if isinstance(d, dict) and "width_floor" in d:
            if type(d["width_floor"]) is not int or d["width_floor"] < 0:
                raise ValueError("knobs.width_floor: expected a non-negative integer")
            spans["width_floor"] = d["width_floor"]
        for name in NAMES:
            if name == "width" and isinstance(d, dict) and name not in d:
                continue  # written before the network could grow: it stays as it is
            s = d.get(name) if isinstance(d, dict) else None
            ints = isinstance(s, dict) and all(type(s.get(k)) is int for k in ("start", "lo", "hi"))
            if not ints or type(s.get("auto")) is not bool or not s["lo"] <= s["start"] <= s["hi"]:
                raise ValueError(f"knobs.{name}: expected integers lo <= start <= hi and a bool auto")
            spans[name] = Span(s["start"], s["lo"], s["hi"], s["auto"])
        return cls(**spans)

    @classmethod
    def of_info(cls, info: dict) -> Knobs:
        """The knobs a run's manifest carries (`SharedRun.info["knobs"]`), as the supervisor planned them."""
        return cls.from_json(info["knobs"])
