"""The trading example: real shipped prices split in time, a state without look-ahead, costs that count."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gym_anytrading", reason="needs the trading extra")

from mp_rl.agent.envs import probe
from mp_rl.config import EnvConfig
from mp_rl.examples.trading import BUY, HOLD, SELL, WARMUP, TradingEnv, features, load


def test_the_observation_at_step_t_reads_prices_up_to_t_only():
    dates, prices = load("STOCKS_GOOGL")
    full = features(prices)
    rng = np.random.default_rng(0)
    for t in [WARMUP, 500, 1664, 1665, len(prices) - 2]:
        cut = features(prices[: t + 1])
        assert np.array_equal(full[t], cut[t]), f"row {t} changed when the prices after it were removed"
        future = prices.copy()
        future[t + 1 :] *= rng.uniform(0.5, 2.0, len(prices) - t - 1)  # any future at all
        env, changed = TradingEnv(split="test"), TradingEnv(split="test", data=(dates, future))
        if env.lo <= t < env.hi - 1:
            for e in (env, changed):
                e.reset()
                while e.t < t:
                    e.step(BUY if e.t % 7 == 0 else HOLD)
            assert np.array_equal(env._obs(), changed._obs())


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
