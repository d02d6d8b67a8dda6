"""Greedy evaluation: `greedy_returns` plays episodes with the argmax policy; `Evaluator` runs it on the
newest published weights in a supervisor thread and keeps `best.pt`."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mp_rl.agent import checkpoint, growth
from mp_rl.agent.envs import make_vector_env
from mp_rl.agent.envspec import EnvSpec
from mp_rl.agent.models import q_values
from mp_rl.config import Config, EnvConfig
from mp_rl.runfolder import RunFolder
from mp_rl.shm.manifest import SharedRun


class Cancelled(Exception):
    """An evaluation was cut short (a second Ctrl-C): it has no result."""


def greedy_returns(
    policy: nn.Module, env_cfg: EnvConfig, episodes: int, seed: int, max_steps: int = 100_000,
    cancelled: Callable[[], bool] = lambda: False,
) -> np.ndarray:  # fmt: skip
    """Returns of `episodes` greedy episodes (each env copy runs exactly one). Raises `Cancelled`
    as soon as `cancelled()` says so (checked every step)."""
    env = make_vector_env(env_cfg, seed, num_envs=episodes)
    try:
        obs, _ = env.reset(seed=seed)
        returns = np.zeros(episodes)
        running = np.ones(episodes, dtype=bool)
        for _ in range(max_steps):
            if cancelled():
                raise Cancelled
            with torch.inference_mode():
                actions = q_values(policy(torch.as_tensor(obs))).argmax(dim=1).numpy()
            obs, reward, terminated, truncated, _ = env.step(actions)
            returns[running] += reward[running]
            running &= ~(terminated | truncated)
            if not running.any():
                break
        return returns
    finally:
        env.close()


class Evaluator:
    """`maybe_start()` from the watch loop; `final()` once the learner has stopped."""

    def __init__(self, cfg: Config, spec: EnvSpec, shared: SharedRun, run_dir: Path):
        self.cfg, self.shared, self.run_dir = cfg, shared, run_dir
        self.copy = growth.Copy(spec, cfg.learner)  # follows the learner's network, resizes included
        self.last: float | None = None
        self.best = -math.inf
        self.thread: threading.Thread | None = None
        self.next_at = time.monotonic() + cfg.eval.every_s
        self.lock = threading.Lock()  # one evaluation at a time owns the policy copy
        self.cancel = threading.Event()  # set by a second Ctrl-C: stop evaluating now

    def _evaluate(self) -> tuple[float, int]:
        with self.lock:
            version = self.copy.sync(self.shared.board, have=0)
            ec, seed = self.cfg.eval, self.cfg.run.seed + 10_000
            returns = greedy_returns(
                self.copy.net, self.cfg.env, ec.episodes, seed, ec.max_episode_steps, self.cancel.is_set
            )
            return float(np.mean(returns)), version

    def _run(self) -> None:
        try:
            mean, version = self._evaluate()
        except Cancelled:
            return
        self.last = mean
        if mean > self.best:
            self.best = mean
            checkpoint.save(RunFolder(self.run_dir).best, {
                "model": self.copy.net.state_dict(), "eval_return": mean, "weight_version": version,
                "counters": self.shared.control.counters(),
                "config": self.cfg.model_copy(update={"learner": self.copy.lc}).model_dump(mode="json"),
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

    def close(self, timeout: float = 30.0) -> None:
        """Cancel a periodic evaluation in flight and wait for it: it reads the shared segments, which
        are unmapped next, and may be writing best.pt."""
        self.cancel.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def final(self, timeout: float = 600.0) -> dict | None:
        """Evaluate the newest weights once more, after the learner has stopped. None when there are
        none yet, or when `cancel` is set (a second Ctrl-C) before or during it."""
        if self.thread is not None:  # the periodic one in flight: let it finish or be cancelled
            self.thread.join(timeout)
        if self.shared.board.version == 0 or self.cancel.is_set():
            return None
        try:
            mean, version = self._evaluate()
        except Cancelled:
            return None
        return {"eval_return_mean": mean, "eval_episodes": self.cfg.eval.episodes, "weight_version": version,
                "best_eval_return": max(self.best, mean), **self.shared.control.counters()}  # fmt: skip
