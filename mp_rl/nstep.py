"""n-step rows from vector-env steps, computed in the actor before writing to the ring.

A row is (obs_s, a_s, R = sum_{i<k} gamma^i r_{s+i}, discount, next_obs) with k = n, or fewer
when the episode ends first; discount is gamma^k, or 0 when the episode *terminated* (a truncated
episode still bootstraps from its final observation). Vectorised across the envs of one vector
env; only episode ends run a per-env loop.

Gymnasium 1.x vector envs reset in NEXT_STEP mode: the step after an episode ends only resets that
env (its action is ignored, its reward is 0), so that step yields no transition.
"""

from __future__ import annotations

import numpy as np


class NStepBuilder:
    """Feed `add(...)` once per vector step; it returns the rows completed by that step.

    >>> b = NStepBuilder(num_envs=1, obs_shape=(1,), obs_dtype="float32", n=2, gamma=0.5)
    >>> z, one = np.zeros((1, 1), np.float32), np.ones(1, bool)
    >>> b.add(z, np.array([0]), np.array([1.0]), z, ~one, ~one)["reward"]
    array([], dtype=float32)
    >>> b.add(z, np.array([1]), np.array([2.0]), z, one, ~one)["reward"]  # 1 + 0.5*2, then the last step alone
    array([2., 2.], dtype=float32)
    """

    def __init__(self, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: str, n: int, gamma: float):
        self.n, self.gamma, self.num_envs = n, gamma, num_envs
        self.obs = np.zeros((n, num_envs, *obs_shape), dtype=obs_dtype)
        self.act = np.zeros((n, num_envs), dtype=np.int64)
        self.rew = np.zeros((n, num_envs), dtype=np.float64)
        self.start = np.zeros(num_envs, dtype=np.int64)  # first step of each env's current episode
        self.resetting = np.zeros(num_envs, dtype=bool)  # this step is an autoreset step
        self.powers = gamma ** np.arange(n + 1)
        self.t = 0

    def add(self, obs, action, reward, next_obs, terminated, truncated) -> dict[str, np.ndarray]:
        t, slot = self.t, self.t % self.n
        valid = ~self.resetting
        self.start[self.resetting] = t + 1  # a new episode begins on the step after the reset
        self.obs[slot], self.act[slot], self.rew[slot] = obs, action, reward
        done = (terminated | truncated) & valid
        rows = [self._full_rows(t, valid, terminated, next_obs)]
        for e in np.flatnonzero(done):
            rows.append(self._tail_rows(t, int(e), bool(terminated[e]), next_obs[e]))
        self.resetting = done
        self.t += 1
        return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}

    def _full_rows(self, t: int, valid, terminated, next_obs) -> dict[str, np.ndarray]:
        """Rows whose n steps all lie in one episode and end at step t."""
        s = t - self.n + 1
        envs = np.flatnonzero(valid & (self.start <= s)) if s >= 0 else np.zeros(0, np.int64)
        steps = (s + np.arange(self.n)) % self.n
        ret = self.powers[: self.n] @ self.rew[steps][:, envs]
        disc = self.powers[self.n] * (1.0 - terminated[envs])
        return self._pack(self.obs[s % self.n, envs], self.act[s % self.n, envs], ret, disc, next_obs[envs])

    def _tail_rows(self, t: int, e: int, terminated: bool, final_obs) -> dict[str, np.ndarray]:
        """The episode of env e ended at t: rows starting after t-n+1 get shorter horizons."""
        first = max(int(self.start[e]), t - self.n + 2)
        starts = np.arange(first, t + 1)
        k = t + 1 - starts  # horizon of each row
        rew = np.array(
            [self.powers[:h] @ self.rew[(s + np.arange(h)) % self.n, e] for s, h in zip(starts, k, strict=True)]
        )
        disc = np.zeros(len(starts)) if terminated else self.powers[k]
        nxt = np.broadcast_to(final_obs, (len(starts), *final_obs.shape))
        return self._pack(self.obs[starts % self.n, e], self.act[starts % self.n, e], rew, disc, nxt)

    @staticmethod
    def _pack(obs, act, ret, disc, nxt) -> dict[str, np.ndarray]:
        return {
            "obs": obs,
            "action": act,
            "reward": np.asarray(ret, np.float32),
            "discount": np.asarray(disc, np.float32),
            "next_obs": nxt,
        }
