"""Fake environments for the tests, importable as env ids (`mp_rl.testing:CountingEnv`): envs that hang
or crash once, count their steps, stamp env, episode and step into frames, or pose a small image task."""

from __future__ import annotations

import os
import time
from typing import ClassVar

import gymnasium as gym
import numpy as np


class HangOnceCartPole(gym.Env):
    """CartPole that hangs (a stuck env) after 300 steps, once per marker file: $MP_RL_HANG_MARKER."""

    def __init__(self):
        self.inner = gym.make("CartPole-v1")
        self.observation_space, self.action_space = self.inner.observation_space, self.inner.action_space
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        return self.inner.reset(seed=seed, options=options)

    def step(self, action):
        self.steps += 1
        marker = os.environ.get("MP_RL_HANG_MARKER")
        if marker and self.steps == 300 and not os.path.exists(marker):
            open(marker, "w").close()
            time.sleep(3600)  # the hung env the supervisor must notice
        return self.inner.step(action)


class CrashOnceCartPole(HangOnceCartPole):
    """CartPole that raises after 300 steps, once per marker file: $MP_RL_CRASH_MARKER."""

    def step(self, action):
        self.steps += 1
        marker = os.environ.get("MP_RL_CRASH_MARKER")
        if marker and self.steps == 300 and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("injected env failure")
        return self.inner.step(action)


class CountingEnv(gym.Env):
    """An episode that never ends, whose observation names the transition: (pid, env uid, step, 0).

    Attach tests read the ring back and check, per (pid, env), that the steps form one unbroken run
    with no repeats: no transition lost, duplicated or torn. Values stay exact in float32 (< 2**24).
    """

    observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.uid = int.from_bytes(os.urandom(3), "little") % (1 << 20)
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([os.getpid(), self.uid, self.t, 0], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, False, False, {}


class StampFrames(gym.Env):
    """84x84 grey frames that name their env, episode and step in their pixels; episodes end
    (terminate) after a random 1..40 steps, so resets come often and at every phase."""

    observation_space = gym.spaces.Box(0, 255, (84, 84), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, render_mode=None):
        self.uid, self.episode, self.t, self.length = 0, -1, 0, 1

    def _frame(self) -> np.ndarray:
        code = [self.uid, self.episode % 256, self.episode // 256, self.t % 256, self.t // 256]
        frame = np.full((84, 84), (self.uid * 31 + self.episode * 7 + self.t) % 256, np.uint8)
        frame[0, :5] = code
        return frame

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:  # the vector env seeds its envs seed, seed + 1, ...: an id per env
            self.uid = seed % 251
        self.episode, self.t = self.episode + 1, 0
        self.length = int(self.np_random.integers(1, 41))
        return self._frame(), {}

    def step(self, action):
        self.t += 1
        return self._frame(), float(int(action) == self.t % 3), self.t >= self.length, False, {}


class StackedStampFrames(gym.wrappers.FrameStackObservation):
    """`StampFrames` stacked 4 deep by Gymnasium's wrapper: an env id for frame-row tests."""

    def __init__(self, render_mode=None):
        super().__init__(StampFrames(), 4)


class GridEnv(gym.Env):
    """A small 0/1 image, channels last (as MinAtar's): one lit cell; the right action names its half.

    Reward 1 for the half that holds the cell, 0 otherwise; `length` steps an episode. A CNN learns it
    in a few thousand steps; its keyword arguments are what `env.kwargs` tests pass."""

    action_space = gym.spaces.Discrete(2)

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, size: int = 6, channels: int = 2, length: int = 10, render_mode=None):
        self.size, self.channels, self.length, self.render_mode = size, channels, length, render_mode
        self.observation_space = gym.spaces.Box(0, 1, (size, size, channels), bool)
        self.t, self.cell = 0, (0, 0)

    def _obs(self) -> np.ndarray:
        grid = np.zeros((self.size, self.size, self.channels), bool)
        grid[self.cell[0], self.cell[1], 0] = True
        return grid

    def _move(self) -> None:
        self.cell = tuple(int(x) for x in self.np_random.integers(0, self.size, 2))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self._move()
        return self._obs(), {}

    def render(self) -> np.ndarray:
        """The grid as an RGB picture, 8 pixels a cell: the lit cell white."""
        grey = np.kron(self._obs()[:, :, 0].astype(np.uint8) * 255, np.ones((8, 8), np.uint8))
        return np.repeat(grey[:, :, None], 3, axis=2)

    def step(self, action):
        reward = float(int(action) == int(self.cell[1] >= self.size / 2))
        self.t += 1
        self._move()
        return self._obs(), reward, False, self.t >= self.length, {}


def register_test_envs() -> None:
    """An `env.register` hook for the tests: registers MpRlTest/Grid-v0."""
    gym.register("MpRlTest/Grid-v0", entry_point="mp_rl.testing:GridEnv")
