"""The monitor: sample the machine and the pipeline, keep a short history, decide, write targets.

`Monitor` runs in one process for tests (`tick(now)` with injected sources and clock);
`monitor_main` is the process shell the supervisor spawns.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mp_rl.config import Config
from mp_rl.knobs import Knobs
from mp_rl.monitor.policy import Knob, Policy, Thresholds
from mp_rl.monitor.sources import MachineSource, PipelineSource
from mp_rl.runfolder import DECISIONS
from mp_rl.shm.manifest import SharedRun


def knobs_for(knobs: Knobs, shared: SharedRun) -> dict[str, Knob]:
    """The three knobs at their live values, within the bounds the plan resolved; fixed ones stay put."""
    control, a, b, c, w = shared.control, knobs.actors, knobs.batch_size, knobs.capacity, knobs.width
    return {
        "actors": Knob("actors", max(1, control.target("actors")), a.auto, a.lo, a.hi,
                       step=max(1, a.hi // 4), min_step=1),
        "batch_size": Knob("batch_size", control.target("batch_size") or b.start, b.auto, b.lo, b.hi,
                           step=2.0, min_step=1.19),
        "capacity": Knob("capacity", shared.ring.capacity, c.auto, c.lo, c.hi, step=1.0, min_step=1.0),
        "width": Knob("width", control.target("width") or w.start, w.auto, w.lo, w.hi, step=2.0, min_step=2.0,
                      floor=knobs.width_floor),
    }  # fmt: skip


class Monitor:
    def __init__(self, cfg: Config, shared: SharedRun, run_dir: Path, knobs: Knobs, machine=None, pipeline=None):
        mc = cfg.monitor
        self.cfg, self.shared, self.run_dir = cfg, shared, Path(run_dir)
        self.machine = machine or MachineSource()
        self.pipeline = pipeline or PipelineSource(shared)
        self.history: deque[dict] = deque(maxlen=max(10, int(mc.history_s / mc.interval_s)))
        self.knobs = knobs
        t = Thresholds(mc.bottleneck, mc.potential, mc.headroom, mc.starved, mc.blocked, mc.hysteresis, mc.worse)
        settle = max(2 * mc.window_s, min(mc.cooldown_s, 10.0))
        self.policy = Policy(knobs_for(knobs, shared), mc.cooldown_s, settle, t)
        self.row_bytes = shared.ring.spec.bytes_per_row
        self.decisions = open(self.run_dir / DECISIONS, "a", buffering=1)  # noqa: SIM115 (closed in close())
        self.next_decide = 0.0
        self.ready_at: float | None = None  # when the learner could first sample (replay past min_fill)
        self.last_decision: dict | None = None
        self.started = time.monotonic()

    def sample(self, now: float) -> dict:
        snap = {"time": round(now - self.started, 3), **self.machine.sample(now), **self.pipeline.sample(now)}
        self.history.append(snap)
        return snap

    def window(self, now: float) -> dict:
        """Means of the numeric fields over the last `window_s` (a trend, not one noisy sample)."""
        since = now - self.started - self.cfg.monitor.window_s
        recent = [s for s in self.history if s["time"] >= since] or list(self.history)[-1:]
        w = {}
        for key in recent[-1]:
            vals = [s[key] for s in recent if isinstance(s.get(key), (int, float)) and not isinstance(s[key], bool)]
            if key in ("time", "members", "cpu_per_core") or not vals:
                continue
            w[key] = round(float(np.mean(vals)), 4)
        returns = [r for s in recent for r in s.get("episode_returns", ())]
        w["return_count"] = len(returns)
        w["return_median"] = round(float(np.median(returns)), 3) if returns else None
        w["row_bytes"] = self.row_bytes
        return w

    def tick(self, now: float) -> list[dict]:
        """Sample; every `decide_every_s`, decide and act. Returns the decision records written."""
        snap = self.sample(now)
        records: list[dict] = []
        if self.ready_at is None and snap["replay_size"] >= self.cfg.replay.min_fill:
            self.ready_at = now
        # Decisions start once a whole window has been measured with the learner training: before
        # min_fill the learner waits by design, and the first CPU sample has no reference yet.
        ready = self.ready_at is not None and now - self.ready_at >= self.cfg.monitor.window_s
        if ready and now >= self.next_decide:
            self.next_decide = now + self.cfg.monitor.decide_every_s
            knobs = self.policy.knobs
            knobs["actors"].value = max(1, self.shared.control.target("actors"))  # what the supervisor works toward
            knobs["actors"].hi = max(1, self.knobs.actors.hi - snap["attached"])
            knobs["width"].value = self.shared.control.target("width") or knobs["width"].value  # or by hand
            records = self.policy.decide(self.window(now), now - self.started)
            for rec in records:
                rec["unix_time"] = round(time.time(), 3)
                if rec["kind"] == "move":
                    self.shared.control.set_target(rec["knob"], rec["new"])
                    self.last_decision = rec
                self.decisions.write(json.dumps(rec) + "\n")
        classified = self.policy.classify(self.window(now))
        last = self.last_decision
        brief = None if last is None else {k: last[k] for k in ("id", "time", "knob", "rule", "old", "new")}
        shown = {k: v for k, v in snap.items() if k != "episode_returns"}  # the progress line has its own
        self.shared.control.publish_snapshot({**shown, **classified, "last_decision": brief})
        return records

    def run(self, beat: Callable[[], None] = lambda: None) -> None:
        control, interval = self.shared.control, self.cfg.monitor.interval_s
        while not control.stopping:
            self.tick(time.monotonic())
            beat()
            control.wait_stop(interval)

    def close(self) -> None:
        self.decisions.close()
