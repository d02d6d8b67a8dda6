"""The trading example: real shipped prices split in time, a state without look-ahead, costs that count."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gym_anytrading", reason="needs the trading extra")

from mp_rl.agent.envs import probe
from mp_rl.config import EnvConfig
from mp_rl.examples.trading import BUY, HOLD, SELL, WARMUP, TradingEnv, features, load


def trajectory(env: TradingEnv, start: int, upto: int) -> list[np.ndarray]:
    """Observations from `start` through step `upto`, buying and selling along the way."""
    env.reset(seed=0)
    env.t, env.end = start, env.hi - 1
    seen = [env._obs()]
    while env.t < upto:
        env.step([BUY, HOLD, HOLD, SELL, BUY, HOLD, HOLD][env.t % 7])
        seen.append(env._obs())
    return seen


def test_the_observation_at_step_t_reads_prices_up_to_t_only():
    dates, prices = load("STOCKS_GOOGL")
    full = features(prices)
    for t in [WARMUP, 500, 1664, 1665, len(prices) - 2]:
        assert np.array_equal(full[t], features(prices[: t + 1])[t]), f"row {t} moved without the prices after it"
    rng = np.random.default_rng(0)
    for split, cuts in (("train", [300, 900, 1500, 1663]), ("test", [1700, 2000, 2300, len(prices) - 2])):
        for t in cuts:
            future = prices.copy()
            future[t + 1 :] *= rng.uniform(0.5, 2.0, len(prices) - t - 1)  # any future at all
            env = TradingEnv(split=split)
            start = env.lo if split == "test" else t - 200
            a, b = trajectory(env, start, t), trajectory(TradingEnv(split=split, data=(dates, future)), start, t)
            assert len(a) == t - start + 1
            assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)), f"{split}: a step up to {t} moved"


def test_a_training_window_ends_at_the_last_train_day_truncated():
    env = TradingEnv(split="train")
    env.reset(seed=0)
    env.t = env.hi - env.window
    env.end = env.t + env.window - 1
    terminated = truncated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, info = env.step(HOLD)
    assert truncated and not terminated, "a window's end is a time limit: targets bootstrap there"
    assert info["date"] == "2015-12-31"
    for seed in range(200):  # every start leaves room for a whole window inside the train part
        env.reset(seed=seed)
        assert env.lo <= env.t and env.end <= env.hi - 1


def test_train_and_test_are_the_years_before_and_after_2016():
    train, test = TradingEnv(split="train"), TradingEnv(split="test")
    assert train.dates[train.hi - 1] == "2015-12-31" and test.dates[test.lo] == "2016-01-04"
    assert test.dates[test.hi - 1] == "2018-08-29" and test.hi - test.lo == 670
    for seed in range(20):
        _, info = train.reset(seed=seed)
        assert "2009-08" <= info["date"] <= "2015-12-31"
    obs, info = test.reset(seed=5)
    assert info["date"] == "2016-01-04" and obs.shape == (12,)
    steps, done = 0, False
    while not done:
        _, _, done, _, info = test.step(HOLD)
        steps += 1
    assert steps == 669 and info["date"] == "2018-08-29", "one test episode: the whole test part"


def test_rewards_are_the_log_return_of_equity_after_costs():
    _, prices = load("STOCKS_GOOGL")
    env = TradingEnv(split="test", cost=0.001)
    env.reset()
    total = 0.0
    for a in [BUY, HOLD, HOLD, SELL, HOLD, BUY, SELL]:
        _, r, _, _, info = env.step(a)
        total += r
    assert info["trades"] == 4 and info["position"] == 0
    assert np.exp(total / 100) == pytest.approx(info["equity"], rel=1e-9)
    t0 = env.lo
    held = prices[t0 + 3] / prices[t0] * prices[t0 + 6] / prices[t0 + 5]
    assert info["equity"] == pytest.approx(held * (1 - 0.001) ** 4, rel=1e-9)


def test_buy_and_hold_on_the_test_years_matches_the_prices():
    _, prices = load("STOCKS_GOOGL")
    env = TradingEnv(split="test", cost=0.0)
    env.reset()
    done, info = False, {}
    while not done:
        _, _, done, _, info = env.step(BUY)
    assert info["equity"] == pytest.approx(prices[env.hi - 1] / prices[env.lo], rel=1e-9)


def test_mp_rl_makes_it_from_the_config_and_bad_kwargs_are_one_line():
    spec = probe(EnvConfig(id="mp_rl.examples.trading:TradingEnv", kwargs={"split": "train"}))
    assert tuple(spec.obs_shape) == (12,) and spec.n_actions == 3
    with pytest.raises(ValueError, match="split 'later': train or test"):
        TradingEnv(split="later")
    with pytest.raises(ValueError, match="dataset 'NASDAQ'"):
        TradingEnv(dataset="NASDAQ")
