"""The vectorised n-step builder against a plain per-env reference, on random episode ends."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mp_rl.agent.nstep import NStepBuilder


def reference_rows(steps, n: int, gamma: float, num_envs: int) -> dict:
    """Per-env lists, one transition at a time: the obviously-right version. Keyed by start obs."""
    rows, pending, resetting = {}, [[] for _ in range(num_envs)], [False] * num_envs
    for obs, act, rew, nxt, term, trunc in steps:
        for e in range(num_envs):
            if resetting[e]:
                resetting[e] = False
                continue
            pending[e].append((float(obs[e, 0]), int(act[e]), float(rew[e])))
            done = term[e] or trunc[e]
            while pending[e] and (len(pending[e]) == n or done):
                h = len(pending[e])
                ret = sum(gamma**i * r for i, (_, _, r) in enumerate(pending[e]))
                o, a, _ = pending[e][0]
                rows[o] = (a, ret, 0.0 if term[e] else gamma**h, float(nxt[e, 0]))
                pending[e].pop(0)
                if not done:
                    break
            resetting[e] = done
    return rows


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 5), st.integers(1, 4), st.integers(1, 60), st.floats(0.5, 1.0), st.integers(0, 2**31),
    st.sampled_from([1, 2, 7, 16, 64]), st.booleans(),
)  # fmt: skip
def test_vectorised_rows_match_the_per_env_reference(n, num_envs, length, gamma, seed, chunk, flagged_resets):
    """`flagged_resets`: the env may flag its autoreset step too (the builder's slow path); without,
    flags are never adjacent, as with Gymnasium's vector envs (the vectorised path)."""
    rng = np.random.default_rng(seed)
    steps, before = [], np.zeros(num_envs, bool)

    def obs(t: int) -> np.ndarray:  # unique per (t, env); a step's next_obs is the next step's obs
        return np.full((num_envs, 1), t * 10.0, np.float32) + np.arange(num_envs)[:, None]

    for t in range(length):
        term, trunc = rng.random(num_envs) < 0.15, rng.random(num_envs) < 0.1
        if not flagged_resets:
            term, trunc = term & ~before, trunc & ~before
        before = term | trunc
        steps.append((
            obs(t), rng.integers(0, 3, num_envs), rng.integers(-2, 3, num_envs).astype(np.float64),
            obs(t + 1), term, trunc,
        ))  # fmt: skip
    builder = NStepBuilder(num_envs, (1,), "float32", n, gamma, chunk=chunk)
    builder.start(obs(0))
    got = {}
    for r in [builder.add(*step[1:]) for step in steps] + [builder.flush()]:
        if r is None:
            continue
        for i in range(len(r["reward"])):
            key = float(r["obs"][i, 0])
            assert key not in got, "a transition produced two rows"
            got[key] = (int(r["action"][i]), float(r["reward"][i]), float(r["discount"][i]), float(r["next_obs"][i, 0]))
    want = reference_rows(steps, n, gamma, num_envs)
    assert got.keys() == want.keys()
    for key, (a, ret, disc, nxt) in want.items():
        assert got[key][0] == a and got[key][3] == nxt
        assert got[key][1:3] == pytest.approx((ret, disc), rel=1e-5, abs=1e-5)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 4), st.integers(1, 4), st.integers(1, 80), st.integers(0, 2**31), st.sampled_from([1, 3, 16, 64]),
    st.booleans(),
)  # fmt: skip
def test_episode_returns_lengths_and_steps_taken_match_a_per_step_tally(
    n, num_envs, length, seed, chunk, flagged_resets
):
    rng = np.random.default_rng(seed)
    before = np.zeros(num_envs, bool)
    builder = NStepBuilder(num_envs, (1,), "float32", n, 0.9, chunk=chunk)
    builder.start(np.zeros((num_envs, 1), np.float32))
    want, running, steps, resetting = [], np.zeros(num_envs), np.zeros(num_envs, int), np.zeros(num_envs, bool)
    got_r, got_l, taken = [], [], 0
    for _ in range(length):
        obs = np.zeros((num_envs, 1), np.float32)
        rew = rng.integers(-3, 4, num_envs).astype(float)
        term, trunc = rng.random(num_envs) < 0.1, rng.random(num_envs) < 0.05
        if not flagged_resets:  # as Gymnasium: the autoreset step carries no flag
            term, trunc = term & ~before, trunc & ~before
        before = term | trunc
        rows = builder.add(np.zeros(num_envs, int), rew, obs, term, trunc)
        if rows is not None:
            got_r += builder.episodes[0].tolist()
            got_l += builder.episodes[1].tolist()
        valid = ~resetting
        taken += int(valid.sum())
        running[valid] += rew[valid]
        steps[valid] += 1
        done = (term | trunc) & valid
        want += [(float(running[e]), int(steps[e])) for e in np.flatnonzero(done)]
        running[done], steps[done], resetting = 0.0, 0, done
    if builder.flush() is not None:
        got_r += builder.episodes[0].tolist()
        got_l += builder.episodes[1].tolist()
    assert sorted(zip(got_r, got_l, strict=True)) == sorted(want)
    assert builder.taken == taken, "autoreset steps are not env steps; every other step is counted once"


def test_chunk_is_long_for_small_observations_and_bounded_for_wide_image_vectors():
    assert NStepBuilder.chunk_for(8, (4,), "float32") == 64
    assert NStepBuilder.chunk_for(32, (4, 84, 84), "uint8") == 16  # 32 x 28 KB per step: the floor
    assert NStepBuilder.chunk_for(8, (4, 84, 84), "uint8") == 37  # 8 MiB / (8 x 28,224 B)
