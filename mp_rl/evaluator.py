"""Greedy evaluation of the newest published weights, in a supervisor thread; keeps `best.pt`."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np

from mp_rl import checkpoint
from mp_rl.config import Config
from mp_rl.envs import EnvSpec
from mp_rl.evaluate import evaluate
from mp_rl.models import build_q_network
from mp_rl.shm.board import flatten_parameters
from mp_rl.shm.manifest import SharedRun


class Evaluator:
    def __init__(self, cfg: Config, spec: EnvSpec, shared: SharedRun, run_dir: Path):
        self.cfg, self.shared, self.run_dir = cfg, shared, run_dir
        lc = cfg.learner
        self.policy = build_q_network(spec.obs_shape, spec.n_actions, lc.hidden, lc.dueling)
        self.flat = flatten_parameters(self.policy)
        self.last: float | None = None
        self.best = -math.inf
        self.thread: threading.Thread | None = None
        self.next_at = time.monotonic() + cfg.eval.every_s
        self.lock = threading.Lock()  # one evaluation at a time owns the policy copy

    def _evaluate(self) -> tuple[float, int]:
        with self.lock:
            version = self.shared.board.read_into(self.flat, 0)
            ec = self.cfg.eval
            returns = evaluate(self.policy, self.cfg.env, ec.episodes, self.cfg.run.seed + 10_000, ec.max_episode_steps)
            return float(np.mean(returns)), version

    def _run(self) -> None:
        mean, version = self._evaluate()
        self.last = mean
        if mean > self.best:
            self.best = mean
            checkpoint.save(self.run_dir / "checkpoints" / "best.pt", {
                "model": self.policy.state_dict(), "eval_return": mean, "weight_version": version,
                "counters": self.shared.control.counters(), "config": self.cfg.model_dump(mode="json"),
            })  # fmt: skip
        self.next_at = time.monotonic() + self.cfg.eval.every_s

    def maybe_start(self) -> None:
        busy = self.thread is not None and self.thread.is_alive()
        if busy or time.monotonic() < self.next_at or self.shared.board.version == 0:
            return
        self.thread = threading.Thread(target=self._run, name="evaluator", daemon=True)
        self.thread.start()

    def reached_target(self) -> bool:
        target = self.cfg.run.target_return
        return target is not None and self.last is not None and self.last >= target

    def describe(self) -> str:
        return "" if self.last is None else f"eval {self.last:.1f} (best {self.best:.1f})"

    def final(self) -> dict | None:
        """Evaluate the newest weights once more, after the learner has stopped."""
        if self.thread is not None:
            self.thread.join()
        if self.shared.board.version == 0:
            return None
        mean, version = self._evaluate()
        return {"eval_return_mean": mean, "eval_episodes": self.cfg.eval.episodes, "weight_version": version,
                "best_eval_return": max(self.best, mean), **self.shared.control.counters()}  # fmt: skip
