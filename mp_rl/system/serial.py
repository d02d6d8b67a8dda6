"""Serial mode: actor, learner and monitor stepped in one process, the same objects as the multiprocess run.

The file to read first: `SerialRun.train` is the whole training loop in a dozen lines (act, write
rows, learn, pick up weights, tick the monitor), as a single-file agent would have it; the
multiprocess run splits the same calls across processes. For debugging (a plain stack trace; pdb
works) and for tests that need learning without processes (`run.serial: true`).
It starts through the supervisor's own path (`open_run`: config.yaml, hardware profile, segments,
manifest, targets), so a serial run folder is a run folder like any other; the learner checkpoints
through its own loop step (`Learner.step_and_keep`) and the monitor ticks in between.
"""

from __future__ import annotations

import time
from pathlib import Path

from mp_rl.agent.actor import Actor
from mp_rl.agent.learner import Learner
from mp_rl.monitor.monitor import Monitor
from mp_rl.runfolder import RunFolder
from mp_rl.shm.control import Kind
from mp_rl.start.preflight import Plan
from mp_rl.system.lifecycle import apply_capacity, keep_replay, open_run, restore_replay


class SerialRun:
    """`with SerialRun(plan, run_dir) as run: run.train(seconds)`; segments are unlinked on exit."""

    def __init__(self, plan: Plan, run_dir: Path, counters: dict | None = None, resume: dict | None = None):
        learner_cfg = plan.cfg.learner.model_copy(update={"prefetch": False})  # no thread to hand batches over
        self.cfg = plan.cfg.model_copy(update={"learner": learner_cfg})
        self.run_dir = Path(run_dir)
        self.shared = open_run(plan, self.run_dir, counters, (resume or {}).get("knobs"))
        self.restored = restore_replay(self.shared, self.run_dir) if resume is not None else None
        self.monitor: Monitor | None = None
        try:
            control, seed = self.shared.control, self.cfg.run.seed
            self.learner_slot = control.claim(Kind.LEARNER)
            self.learner = Learner(self.cfg, self.shared, plan.spec, plan.knobs.batch_size, seed=seed)
            if resume is not None:
                self.learner.restore(resume)
            self.learner.publish()
            slot = control.claim(Kind.ACTOR, index=0)
            self.actor = Actor(self.cfg, self.shared, plan.spec, slot, index=0, count=1, seed=seed)
            self.actor.sync_weights()
            self.actor.on_blocked = self._catch_up
            if self.cfg.monitor.enabled:
                self.monitor = Monitor(self.cfg, self.shared, self.run_dir, plan.knobs)
        except BaseException:
            self.shared.close()
            raise
        self.next_tick = 0.0

    def _catch_up(self) -> None:
        folder = RunFolder(self.run_dir).checkpoints
        while self.learner.step_and_keep(self.learner_slot, folder, None, timeout=0.0):
            pass

    def _tick_monitor(self) -> None:
        now = time.monotonic()
        if self.monitor is None or now < self.next_tick:
            return
        self.monitor.tick(now)
        apply_capacity(self.shared)  # the knob the supervisor would move; one actor stays one actor
        self.next_tick = now + self.cfg.monitor.interval_s

    def train(self, max_seconds: float = float("inf")) -> int:
        """Step until total_env_steps or `max_seconds`; returns env steps taken."""
        deadline, before = time.monotonic() + max_seconds, self.actor.steps
        while self.actor.steps - before < self.cfg.run.total_env_steps and time.monotonic() < deadline:
            width = self.actor.step()
            self._catch_up()
            self._tick_monitor()
            self.actor.keep_weights_fresh(width)  # after the catch-up: the pickup sees its updates
        steps = self.actor.steps - before
        self.shared.control.add("env_steps", steps)
        return steps

    def finish(self) -> None:
        """What the learner process and the supervisor do at a clean stop: `final.pt`, the replay."""
        self.learner.publish_policy()  # what the final evaluation plays
        self.learner.save(RunFolder(self.run_dir).final)
        keep_replay(self.shared, self.cfg, self.run_dir)

    def close(self) -> None:
        self.actor.close()
        self.learner.close()
        if self.monitor is not None:
            self.monitor.close()
        self.shared.close()

    def __enter__(self) -> SerialRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
