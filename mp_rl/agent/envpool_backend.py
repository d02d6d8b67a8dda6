"""EnvPool as an actor backend (`env.backend: envpool`, the `envpool` extra): Atari games and classic
control stepped by C++ threads, driven through EnvPool's asynchronous `send` / `recv`.

The same env config means the same observations as the Gymnasium backend: Atari ids (`ALE/Pong-v5`)
map to EnvPool's task (`Pong-v5`) with the Gymnasium path's preprocessing spelled out (84x84 grey,
frame skip 4 with the last two frames max-pooled, up to 30 no-op starts, `env.frame_stack` frames,
no FIRE on reset, no sticky actions, no life-loss episodes, unclipped rewards); classic control ids
keep their names. EnvPool resets the way Gymnasium's NEXT_STEP mode does: the step after an
episode's end ignores its action and returns the reset observation with reward 0 and neither flag
set, so the actor's row builders need no change (that step is not a transition).

`EnvPoolVector` is one pool whose `recv` always returns all of its envs, put back in env-id order.
An actor holds two of them (see `Actor`): while one pool's threads step, the actor runs inference
for the other. Threads: each pool runs `env.envpool_threads` C++ threads (default 1), which inherit
the actor process's CPU affinity (`run.pin_cpus` pins the process, and so its threads, to its core).
"""

from __future__ import annotations

import importlib.util
import warnings

import gymnasium as gym
import numpy as np

from mp_rl.agent.envspec import EnvError
from mp_rl.config import EnvConfig


def _envpool():
    """The envpool module, or the one line that says how to get it."""
    if importlib.util.find_spec("envpool") is None:
        raise EnvError("env.backend envpool needs the envpool extra: pip install -e '.[envpool]'")
    import envpool

    return envpool


def task_id(cfg: EnvConfig) -> str:
    """EnvPool's name for `env.id`; EnvError when EnvPool has no such env."""
    envpool = _envpool()
    task = cfg.id.removeprefix("ALE/")
    if task not in envpool.list_all_envs():
        raise EnvError(f"env.backend envpool: EnvPool has no env for env.id {cfg.id!r} (it steps Atari games "
                       "as 'ALE/<Game>-v5' and classic control such as 'CartPole-v1'; or use env.backend "
                       "gymnasium)")  # fmt: skip
    return task


def options(cfg: EnvConfig, task: str) -> dict:
    """EnvPool's keyword arguments for `cfg`: for Atari, the Gymnasium backend's preprocessing."""
    opts: dict = {}
    if cfg.id.startswith("ALE/"):
        opts = dict(img_height=84, img_width=84, gray_scale=True, frame_skip=4, noop_max=max(1, cfg.noop_max),
                    stack_num=cfg.frame_stack, use_fire_reset=False, repeat_action_probability=0.0,
                    episodic_life=False, reward_clip=False, use_inter_area_resize=True)  # fmt: skip
    # Both draw 1..noop_max no-ops at a reset; with noop_max 0 Gymnasium does none, EnvPool still one.
    if cfg.max_episode_steps is not None:
        opts["max_episode_steps"] = cfg.max_episode_steps
    return {**opts, **cfg.kwargs}


class EnvPoolVector:
    """`num_envs` envs of one EnvPool, all returned by each `recv` (so batch_size == num_envs)."""

    def __init__(self, cfg: EnvConfig, seed: int, num_envs: int, threads: int):

        envpool, task = _envpool(), task_id(cfg)
        kwargs = dict(env_type="gymnasium", num_envs=num_envs, batch_size=num_envs, seed=seed, num_threads=threads)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # Gymnasium on EnvPool's float64 space bounds
                self.pool = envpool.make(task, **kwargs, **options(cfg, task))
                self.single_observation_space: gym.spaces.Box = self.pool.observation_space
                self.single_action_space: gym.spaces.Discrete = self.pool.action_space
        except (TypeError, ValueError, RuntimeError) as exc:  # a bad env.kwargs entry, mostly
            raise EnvError(f"env.backend envpool: {task}: {exc.__class__.__name__}: {exc}") from None
        self.num_envs = num_envs
        self.ids = np.arange(num_envs, dtype=np.int32)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        """All envs reset (EnvPool seeds at construction; `seed` is accepted for the vector-env API)."""
        obs, info = self.pool.reset(self.ids)
        return obs[np.argsort(info["env_id"])], {}

    def send(self, actions: np.ndarray) -> None:
        """Start a step of every env with `actions` (env-id order); returns at once."""
        self.pool.send(np.asarray(actions), self.ids)

    def recv(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """The step started by `send`: (obs, reward, terminated, truncated, {}) in env-id order.

        Indexing by the order copies, so what is returned never aliases EnvPool's output buffers."""
        obs, reward, terminated, truncated, info = self.pool.recv()
        order = np.argsort(info["env_id"])
        return obs[order], reward[order].astype(np.float32), terminated[order], truncated[order], {}

    def step(self, actions: np.ndarray):
        self.send(actions)
        return self.recv()

    def close(self) -> None:
        self.pool.close()


def probe(cfg: EnvConfig) -> tuple[gym.spaces.Box, gym.spaces.Discrete, int]:
    """(observation space, action space, frames stacked) of `cfg` under EnvPool."""
    env = EnvPoolVector(cfg, 0, 1, 1)
    try:
        stack = cfg.frame_stack if cfg.id.startswith("ALE/") else 1
        return env.single_observation_space, env.single_action_space, stack
    finally:
        env.close()
