"""n-step rows from vector-env steps, computed in the actor before writing to the ring.

A row is (obs_s, a_s, R = sum_{j<h} gamma^j r_{s+j}, discount, next_obs) with horizon h = n, or
fewer when the episode ends first; discount is gamma^h, or 0 when the episode *terminated* (a
truncated episode still bootstraps from its final observation).

Steps are only stored as they come; every `chunk` steps all rows that start in the chunk are
computed at once, vectorised over (step, env) with one small loop over the n horizons. That keeps
the per-step cost to a few array stores: with cheap envs (CartPole steps in ~8 us) per-step numpy
calls would otherwise cost more than the env itself.

Gymnasium 1.x vector envs reset in NEXT_STEP mode: the step after an episode ends only resets that
env (its action is ignored, its reward is 0), so that step starts no row.
"""

from __future__ import annotations

import numpy as np


class NStepBuilder:
    """`start(obs)` once, then `add(...)` once per vector step; it returns rows (or None) every `chunk` steps.

    >>> b = NStepBuilder(num_envs=1, obs_shape=(1,), obs_dtype="float32", n=2, gamma=0.5, chunk=2)
    >>> z, yes, no = np.zeros((1, 1), np.float32), np.ones(1, bool), np.zeros(1, bool)
    >>> b.start(z)
    >>> b.add(np.array([0]), np.array([1.0]), z, no, no) is None
    True
    >>> b.add(np.array([1]), np.array([2.0]), z, yes, no) is None  # the episode ends here
    True
    >>> b.flush()["reward"]  # 1 + 0.5*2 from the first step; the last step alone
    array([2., 2.], dtype=float32)
    """

    @staticmethod
    def chunk_for(num_envs: int, obs_shape, obs_dtype: str, budget: int = 8 << 20) -> int:
        """Steps per chunk: 64 where the stored observations fit in `budget` bytes, fewer (not
        under 16) for wide image vectors. The per-chunk work is ~100 numpy calls whatever its
        size, so a longer chunk spreads it thinner (16 -> 64 steps: 22 -> 7 us per step, 8 CartPole envs)."""
        obs_bytes = num_envs * int(np.prod(obs_shape)) * np.dtype(obs_dtype).itemsize
        return int(np.clip(budget // max(obs_bytes, 1), 16, 64))

    def __init__(self, num_envs: int, obs_shape, obs_dtype: str, n: int, gamma: float, chunk: int = 16):
        self.n, self.chunk, self.num_envs = n, chunk, num_envs
        size = chunk + n - 1  # a chunk of starts plus the look-ahead their last rows need
        # Observations are stored once: with NEXT_STEP autoreset the observation a step returns is
        # the one the next step starts from, so next_obs[t] is obs[t + 1] (one store per step, not two).
        self.obs = np.zeros((size + 1, num_envs, *obs_shape), dtype=obs_dtype)
        self.act = np.zeros((size, num_envs), dtype=np.int64)
        self.rew = np.zeros((size, num_envs), dtype=np.float64)
        self.term = np.zeros((size, num_envs), dtype=bool)  # raw flags as the env returned them
        self.trunc = np.zeros((size, num_envs), dtype=bool)
        self.ended = np.zeros((size, num_envs), dtype=bool)  # derived per chunk: an episode ended here
        self.starts = np.zeros((size, num_envs), dtype=bool)  # derived per chunk: this step starts a row
        self.derived = 0  # steps [0, derived) have `ended` and `starts` filled in
        self.resetting = np.zeros(num_envs, dtype=bool)  # the step before `derived` ended an episode
        self.powers = gamma ** np.arange(n + 1)
        self.carry_return = np.zeros(num_envs)  # the running episode of each env, before this chunk
        self.carry_length = np.zeros(num_envs, dtype=np.int64)
        self.episodes = (np.zeros(0), np.zeros(0, np.int64))  # (returns, lengths) finished in the last chunk
        self.taken = 0  # env steps that belong to an episode (autoreset steps excluded), in retired chunks
        self.k = 0  # steps stored
        self.first = 0  # steps before this one were already turned into rows

    def start(self, obs: np.ndarray) -> None:
        """The observations the first step acts on (from `env.reset`)."""
        self.obs[self.k] = obs

    def add(self, action, reward, next_obs, terminated, truncated) -> dict[str, np.ndarray] | None:
        # Five stores and nothing else: everything derived is computed per chunk, vectorised.
        k = self.k
        self.obs[k + 1], self.act[k], self.rew[k], self.term[k], self.trunc[k] = (
            next_obs, action, reward, terminated, truncated,
        )  # fmt: skip
        self.k = k + 1
        if self.k < len(self.rew):
            return None
        return self._rows(self.chunk, final=False)

    def _derive(self) -> None:
        """Fill `starts` and `ended` for the stored steps: the step after an episode's end only
        resets that env (whatever flags it carries), so it starts no row and ends nothing.

        That is a recurrence over time (ended[t] = done[t] and not ended[t-1]), but Gymnasium's
        autoreset step never carries a flag, so in practice no two flagged steps are adjacent and
        the recurrence reduces to ended = done: one vectorised pass, with the loop kept for any
        env that flags its reset step."""
        a, b = self.derived, self.k
        if b <= a:
            return
        done = self.term[a:b] | self.trunc[a:b]
        before = np.concatenate([self.resetting[None], done[:-1]])  # done one step earlier
        if not (done & before).any():
            np.logical_not(before, out=self.starts[a:b])
            self.ended[a:b] = done
            np.copyto(self.resetting, done[-1])
        else:
            for t in range(a, b):
                self.starts[t] = ~self.resetting
                np.logical_and(done[t - a], self.starts[t], out=self.ended[t])
                np.copyto(self.resetting, self.ended[t])  # a copy: the rows are shifted in place
        self.derived = b

    def flush(self) -> dict[str, np.ndarray] | None:
        """Rows that can be completed now, before the chunk is full (an actor leaving, a test's end)."""
        return self._rows(self.k, final=True) if self.k > self.first else None

    def _rows(self, count: int, final: bool) -> dict[str, np.ndarray]:
        """Rows for starts [first, count): horizon, return, discount, next observation."""
        self._derive()
        n, k = self.n, self.k
        s = np.arange(self.first, count)[:, None]
        envs = np.arange(self.num_envs)[None, :]
        alive = np.ones((len(s), self.num_envs), dtype=bool)  # episode still running at offset j
        known = np.zeros_like(alive)  # the row's horizon is settled
        ret = np.zeros(alive.shape)
        last = np.broadcast_to(s, alive.shape).copy()  # index of the row's last step
        for j in range(n):
            idx = np.minimum(s + j, k - 1)
            inside = s + j < k
            step = alive & inside
            ended = self.ended[idx, envs]
            ret += np.where(step, self.powers[j] * self.rew[idx, envs], 0.0)
            last = np.where(step, idx, last)
            known |= step & (ended | (j == n - 1))
            alive &= ~ended & inside
        h = last - s + 1
        disc = np.where(self.term[last, envs] & self.ended[last, envs], 0.0, self.powers[h])
        t, e = np.nonzero(self.starts[self.first : count] & known)
        t = t + self.first
        rows = {
            "obs": self.obs[t, e],
            "action": self.act[t, e],
            "reward": ret[t - self.first, e].astype(np.float32),
            "discount": disc[t - self.first, e].astype(np.float32),
            "next_obs": self.obs[last[t - self.first, e] + 1, e],
        }
        self.episodes = self._finished_episodes(self.first, count)
        self.taken += int(np.count_nonzero(self.starts[self.first : count]))
        if final:
            self.first = count  # the rows not yet known are dropped with the actor that leaves
        else:
            self._shift()
        return rows

    def _finished_episodes(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns and lengths of the episodes that ended in steps [a, b), from cumulative sums.

        Each step is accounted once, when its chunk is retired; an episode that began in an earlier
        chunk starts from the carried running sums.
        """
        valid = self.starts[a:b]
        cum_r = np.cumsum(np.where(valid, self.rew[a:b], 0.0), axis=0)
        cum_l = np.cumsum(valid, axis=0)
        t, e = np.nonzero(self.ended[a:b])
        order = np.lexsort((t, e))  # by env, then time
        t, e = t[order], e[order]
        first = np.ones(len(e), dtype=bool)
        first[1:] = e[1:] != e[:-1]
        prev = np.roll(t, 1)
        returns = cum_r[t, e] - np.where(first, -self.carry_return[e], cum_r[prev, e])
        lengths = cum_l[t, e] - np.where(first, -self.carry_length[e], cum_l[prev, e])
        last = np.ones(len(e), dtype=bool)
        last[:-1] = e[:-1] != e[1:]
        self.carry_return += cum_r[-1]
        self.carry_length += cum_l[-1]
        ends, tl = e[last], t[last]
        self.carry_return[ends] = cum_r[-1, ends] - cum_r[tl, ends]
        self.carry_length[ends] = cum_l[-1, ends] - cum_l[tl, ends]
        return returns, lengths

    def _shift(self) -> None:
        """Keep the last n-1 steps (the look-ahead) at the front for the next chunk."""
        keep = self.n - 1
        for arr in (self.act, self.rew, self.term, self.trunc, self.ended, self.starts):
            arr[:keep] = arr[self.chunk : self.chunk + keep]
        self.obs[: keep + 1] = self.obs[self.chunk : self.chunk + keep + 1]
        self.k = self.derived = keep
        self.first = 0
