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

`FrameBlockBuilder` makes frame rows (`shm.frames`) from the same steps: it keeps each step's newest
frame and returns, per chunk (one ring block of steps), one block of rows and frames per env.

Either builder's `blocks(out)` turns what `add` or `flush` returned into ring blocks, (fields, frames)
pairs to write in order: whole rows through a `BlockPacker`, frame rows as their builder cut them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mp_rl.shm.frames import row_positions

Block = tuple[dict[str, np.ndarray], "np.ndarray | None"]  # one ring block: its rows, and frame rows' frames


class BlockPacker:
    """Whole rows (from any number of envs and chunks) into ring blocks of `block` rows. Full blocks are
    views of the rows given; a partial block is staged, a copy, until later rows fill it.

    >>> p = BlockPacker(block=4)
    >>> [len(f["x"]) for f, _ in p.pack({"x": np.arange(6)})]  # one full block; 2 rows staged
    [4]
    >>> [f["x"].tolist() for f, _ in p.pack({"x": np.arange(6, 9)})]  # the staged block fills first
    [[4, 5, 6, 7]]
    >>> [f["x"].tolist() for f, _ in p.rest()]  # a leaving actor's last, partial block
    [[8]]
    """

    def __init__(self, block: int):
        self.block, self.staged = block, 0
        self.stage: dict[str, np.ndarray] = {}

    def pack(self, rows: dict[str, np.ndarray]) -> Iterator[Block]:
        """The blocks to write now, in order. Take each before the next: the stage is reused."""
        block, n, i = self.block, len(next(iter(rows.values()))), 0
        if not self.stage:
            self.stage = {k: np.empty((block, *v.shape[1:]), v.dtype) for k, v in rows.items()}
        if self.staged:
            i = min(block - self.staged, n)
            self._stage(rows, 0, i)
            if self.staged == block:
                self.staged = 0
                yield self.stage, None
        while n - i >= block:
            yield {k: v[i : i + block] for k, v in rows.items()}, None
            i += block
        self._stage(rows, i, n)

    def rest(self) -> Iterator[Block]:
        """The staged partial block, if any (the last write of an actor that leaves)."""
        if self.staged:
            staged, self.staged = self.staged, 0
            yield {k: v[:staged] for k, v in self.stage.items()}, None

    def _stage(self, rows: dict[str, np.ndarray], a: int, b: int) -> None:
        for name, buf in self.stage.items():
            buf[self.staged : self.staged + b - a] = rows[name][a:b]
        self.staged += b - a


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

    history = 0  # observations kept before a chunk's first step (frame rows keep the stack's)

    def __init__(
        self, num_envs: int, obs_shape, obs_dtype: str, n: int, gamma: float, chunk: int = 16, block: int = 64,
        packer: BlockPacker | None = None,
    ):  # fmt: skip
        self.n, self.chunk, self.num_envs = n, chunk, num_envs
        # Builders of one actor share its packer: rows of all its envs fill the same blocks.
        self.packer = packer if packer is not None else BlockPacker(block)
        size = chunk + n - 1  # a chunk of starts plus the look-ahead their last rows need
        # Observations are stored once: with NEXT_STEP autoreset the observation a step returns is
        # the one the next step starts from, so next_obs[t] is obs[t + 1] (one store per step, not two).
        # Observation i lives at obs[history + i].
        self.obs = np.zeros((self.history + size + 1, num_envs, *obs_shape), dtype=obs_dtype)
        self.episode_start = np.zeros((size + 1, num_envs), dtype=np.int64)  # of observation i's episode
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
        self.retired = False  # a whole chunk was returned: drop it (keep the look-ahead) before the next step

    def keep(self, obs: np.ndarray) -> np.ndarray:
        """What is stored of a vector observation (all of it; frame rows keep the newest frame)."""
        return obs

    def start(self, obs: np.ndarray) -> None:
        """The observations the first step acts on (from `env.reset`)."""
        self.obs[self.history + self.k] = self.keep(obs)
        self.episode_start[self.k] = self.k

    def add(self, action, reward, next_obs, terminated, truncated):
        """Store one vector step; every `chunk` steps, the rows that start in the chunk (see `_pack`)."""
        # Five stores and nothing else: everything derived is computed per chunk, vectorised.
        if self.retired:  # not at return time: what `_pack` returned may be views of the buffers
            self._shift()
        k = self.k
        self.obs[self.history + k + 1], self.act[k], self.rew[k], self.term[k], self.trunc[k] = (
            self.keep(next_obs), action, reward, terminated, truncated,
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
        # A step that starts no row is an autoreset step: the observation it returns begins an episode.
        never = np.iinfo(np.int64).min  # not -1: carried episode starts go negative as chunks retire
        begins = np.where(self.starts[a:b], never, np.arange(a + 1, b + 1)[:, None])
        np.maximum.accumulate(np.concatenate([self.episode_start[a : a + 1], begins]), axis=0,
                              out=self.episode_start[a : b + 1])  # fmt: skip
        self.derived = b

    def flush(self):
        """Rows that can be completed now, before the chunk is full (an actor leaving, a test's end)."""
        if self.retired:
            self._shift()
        return self._rows(self.k, final=True) if self.k > self.first else None

    def blocks(self, out) -> Iterator[Block]:
        """What `add` or `flush` returned, as ring blocks to write in order (see `BlockPacker.pack`)."""
        return self.packer.pack(out) if out is not None else iter(())

    def rest(self) -> Iterator[Block]:
        """The last, partial block still staged (an actor that leaves writes it after `flush`)."""
        return self.packer.rest()

    def _rows(self, count: int, final: bool):
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
        i = t, e
        rows = self._pack(t + self.first, e, ret[i].astype(np.float32), disc[i].astype(np.float32), last[i], count)
        self.episodes = self._finished_episodes(self.first, count)
        self.taken += int(np.count_nonzero(self.starts[self.first : count]))
        if final:
            self.first = count  # the rows not yet known are dropped with the actor that leaves
        else:
            self.retired = True
        return rows

    def _pack(self, t, e, reward, discount, last, count: int) -> dict[str, np.ndarray]:
        """The chunk's rows, given each row's first step t, env e and last step."""
        h = self.history
        return {"obs": self.obs[h + t, e], "action": self.act[t, e], "reward": reward, "discount": discount,
                "next_obs": self.obs[h + last + 1, e]}  # fmt: skip

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
        h = self.history
        self.obs[: h + keep + 1] = self.obs[self.chunk : self.chunk + h + keep + 1]
        self.episode_start[: keep + 1] = self.episode_start[self.chunk : self.chunk + keep + 1] - self.chunk
        self.k = self.derived = keep
        self.first = 0
        self.retired = False


class FrameBlockBuilder(NStepBuilder):
    """n-step frame rows: `add` takes stacked observations (stack axis first, as Gymnasium's
    `FrameStackObservation` makes them) and keeps the newest frame; every `block` steps it returns
    [(rows, frames), ...], one block per env that has rows. `frames` is a view, valid until the next `add`.
    """

    def __init__(self, num_envs: int, frame_shape, dtype: str, n: int, gamma: float, stack: int, block: int):
        self.history, self.stack = stack - 1, stack  # the stack of a block's first step reaches back
        super().__init__(num_envs, frame_shape, dtype, n, gamma, chunk=block)

    def keep(self, obs: np.ndarray) -> np.ndarray:
        return obs[:, -1]

    def blocks(self, out) -> Iterator[Block]:
        return iter(out or ())  # cut into blocks already, one per env

    def rest(self) -> Iterator[Block]:
        return iter(())

    def _pack(self, t, e, reward, discount, last, count: int) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
        # A block is one env's consecutive steps, at most `chunk` of them (a final flush may hold more).
        part = (t - self.first) // self.chunk
        order = np.lexsort((t, part, e))
        t, e, part, reward, discount, last = (a[order] for a in (t, e, part, reward, discount, last))
        blocks = []
        for rows in np.split(np.arange(len(e)), np.flatnonzero(np.diff(e) | np.diff(part)) + 1):
            if len(rows):
                env, first = e[rows[0]], self.first + part[rows[0]] * self.chunk
                end = self.history + min(first + self.chunk + self.n, self.k + 1)  # past the last frame reached
                pos = row_positions(t[rows], last[rows], self.episode_start[t[rows], env], first, self.stack)
                fields = {"action": self.act[t[rows], env], "reward": reward[rows], "discount": discount[rows],
                          "pos": pos}  # fmt: skip
                blocks.append((fields, self.obs[first:end, env]))
        return blocks
