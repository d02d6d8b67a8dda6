"""Serial mode: actor and learner stepped in one process, the same objects as the multiprocess run.

For debugging (a plain stack trace; pdb works) and for tests that need learning without processes.
The actor steps and writes; the learner trains whenever the rate limiter lets it sample.
"""

from __future__ import annotations

import time
from pathlib import Path

from mp_rl.actor import Actor
from mp_rl.learner import Learner
from mp_rl.mp_system import numel_for
from mp_rl.preflight import Plan
from mp_rl.shm.control import Kind
from mp_rl.shm.manifest import SharedRun


class SerialRun:
    """`with SerialRun(plan, run_dir) as run: run.train(seconds)`; segments are unlinked on exit."""

    def __init__(self, plan: Plan, run_dir: Path):
        self.cfg = plan.cfg.model_copy(update={"learner": plan.cfg.learner.model_copy(update={"prefetch": False})})
        spec = plan.spec
        numel = numel_for(self.cfg, spec)
        self.shared = SharedRun.create(
            run_dir, run_dir.name, plan.ring, plan.limit, numel, plan.max_members, plan.capacity
        )
        self.learner = Learner(self.cfg, self.shared, spec, seed=self.cfg.run.seed)
        self.learner.publish()
        slot = self.shared.control.claim(Kind.ACTOR, index=0)
        self.actor = Actor(self.cfg, self.shared, spec, slot, index=0, count=1, seed=self.cfg.run.seed)
        self.actor.sync_weights()
        self.actor.on_blocked = self._catch_up

    def _catch_up(self) -> None:
        while self.learner.step(timeout=0.0):
            pass

    def train(self, max_seconds: float = float("inf")) -> int:
        """Step until total_env_steps or `max_seconds`; returns env steps taken."""
        deadline, since_sync, before = time.monotonic() + max_seconds, 0, self.actor.steps
        while self.actor.steps - before < self.cfg.run.total_env_steps and time.monotonic() < deadline:
            since_sync += self.actor.step()
            self._catch_up()
            if since_sync >= self.cfg.actors.sync_every:
                self.actor.sync_weights()
                since_sync = 0
        steps = self.actor.steps - before
        self.shared.control.add("env_steps", steps)
        return steps

    def close(self) -> None:
        self.actor.close()
        self.learner.close()
        self.shared.close()

    def __enter__(self) -> SerialRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
