"""Greedy evaluation: `episodes` episodes, one per env copy, with the policy's argmax action."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mp_rl.config import EnvConfig
from mp_rl.envs import make_vector_env


def evaluate(policy: nn.Module, env_cfg: EnvConfig, episodes: int, seed: int, max_steps: int = 100_000) -> np.ndarray:
    """Returns of `episodes` greedy episodes (each env copy runs exactly one)."""
    env = make_vector_env(env_cfg, seed, num_envs=episodes)
    try:
        obs, _ = env.reset(seed=seed)
        returns = np.zeros(episodes)
        running = np.ones(episodes, dtype=bool)
        for _ in range(max_steps):
            with torch.inference_mode():
                actions = policy(torch.as_tensor(obs)).argmax(dim=1).numpy()
            obs, reward, terminated, truncated, _ = env.step(actions)
            returns[running] += reward[running]
            running &= ~(terminated | truncated)
            if not running.any():
                break
        return returns
    finally:
        env.close()
