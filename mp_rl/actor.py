"""The actor: a vector env, a CPU copy of the policy, Ape-X epsilon, n-step rows written in blocks.

`Actor` is a plain object (one process can run it, a test can step it); `procs.actor_main` is the
process shell around it.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from mp_rl.config import Config
from mp_rl.envs import EnvSpec, make_vector_env
from mp_rl.models import build_q_network
from mp_rl.nstep import NStepBuilder
from mp_rl.shm.board import flatten_parameters
from mp_rl.shm.control import State
from mp_rl.shm.manifest import SharedRun
from mp_rl.shm.ringio import RingClosed


def ape_x_epsilon(index: int, count: int, base: float = 0.4, alpha: float = 7.0) -> float:
    """Ape-X: actor i of N explores with eps ** (1 + alpha * i / (N - 1)).

    >>> round(ape_x_epsilon(0, 8), 3), round(ape_x_epsilon(7, 8), 5)
    (0.4, 0.00066)
    """
    return base ** (1 + alpha * index / (count - 1)) if count > 1 else base


class Actor:
    """Steps `envs_per_actor` environments with one batched policy call per step."""

    def __init__(self, cfg: Config, shared: SharedRun, spec: EnvSpec, slot: int, index: int, count: int, seed: int):
        self.cfg, self.shared, self.spec, self.slot = cfg, shared, spec, slot
        self.epsilon = ape_x_epsilon(index, count, cfg.actors.eps_base, cfg.actors.eps_alpha)
        self.env = make_vector_env(cfg.env, seed)
        self.num_envs = self.env.num_envs
        self.policy = build_q_network(spec.obs_shape, spec.n_actions, cfg.learner.hidden, cfg.learner.dueling)
        self.flat = flatten_parameters(self.policy)
        self.weights = 0
        self.builder = NStepBuilder(self.num_envs, spec.obs_shape, spec.obs_dtype, cfg.replay.n_step, cfg.replay.gamma)
        self.writer = shared.ring.writer(token=slot + 1)
        block = shared.ring.spec.block
        room = block + self.num_envs * self.builder.chunk  # one chunk emits at most this many rows
        self.stage = {f.name: np.empty((room, *f.shape), f.dtype) for f in shared.ring.spec.fields}
        self.staged = 0
        self.rng = np.random.default_rng(seed)
        self.obs, _ = self.env.reset(seed=seed)
        self.ep_return = np.zeros(self.num_envs)
        self.ep_length = np.zeros(self.num_envs, dtype=np.int64)
        self.resetting = np.zeros(self.num_envs, dtype=bool)
        self.steps = 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            actions = self.policy(torch.as_tensor(obs)).argmax(dim=1).numpy()
        explore = self.rng.random(self.num_envs) < self.epsilon
        actions[explore] = self.rng.integers(0, self.spec.n_actions, int(explore.sum()))
        return actions

    def step(self) -> int:
        """One vector step: act, step the envs, stage n-step rows, report episodes. Returns env steps."""
        actions = self.act(self.obs)
        next_obs, reward, terminated, truncated, _ = self.env.step(actions)
        rows = self.builder.add(self.obs, actions, reward, next_obs, terminated, truncated)
        if rows is not None:
            self._stage(rows)
        valid = ~self.resetting  # an autoreset step is not an env step of any episode
        self.ep_return[valid] += reward[valid]
        self.ep_length[valid] += 1
        done = (terminated | truncated) & valid
        if done.any():
            self.shared.control.report_episodes(self.slot, self.ep_return[done], self.ep_length[done])
            self.ep_return[done], self.ep_length[done] = 0.0, 0
        self.resetting = done
        self.obs = next_obs
        taken = int(valid.sum())
        self.steps += taken
        return taken

    def _stage(self, rows: dict[str, np.ndarray]) -> None:
        n = len(rows["reward"])
        for name, buf in self.stage.items():
            buf[self.staged : self.staged + n] = rows[name]
        self.staged += n

    def flush(self, partial: bool = False) -> bool:
        """Write every full block staged (and the remainder if `partial`); False if stopped meanwhile."""
        block = self.shared.ring.spec.block
        while self.staged >= block or (partial and self.staged > 0):
            n = min(block, self.staged)
            t0 = time.monotonic_ns()
            while not self.writer.write({k: v[:n] for k, v in self.stage.items()}, timeout=0.25):
                if self.shared.control.stopping:
                    return False
            self.shared.control.add("actor_blocked_ns", time.monotonic_ns() - t0)
            for buf in self.stage.values():  # keep the remainder at the front
                buf[: self.staged - n] = buf[n : self.staged]
            self.staged -= n
        return True

    def sync_weights(self) -> None:
        self.weights = self.shared.board.read_into(self.flat, self.weights)

    def run(self) -> None:
        """Act until the run stops or this actor is retired (then finish the block and leave)."""
        control, sync_every = self.shared.control, self.cfg.actors.sync_every
        since_sync = since_count = 0
        self.sync_weights()
        try:
            while not control.stopping and control.state(self.slot) == State.RUNNING:
                taken = self.step()
                since_sync += taken
                since_count += taken
                if not self.flush():
                    break
                if since_sync >= sync_every:
                    self.sync_weights()
                    since_sync = 0
                if since_count >= 256:
                    control.add("env_steps", since_count)
                    control.heartbeat(self.slot, steps=self.steps, weights=self.weights)
                    since_count = 0
            if control.state(self.slot) == State.RETIRING:  # complete what we have, then leave
                rows = self.builder.flush()
                if rows is not None:
                    self._stage(rows)
                self.flush(partial=True)
        except RingClosed:
            pass
        control.add("env_steps", since_count)

    def close(self) -> None:
        self.env.close()
