"""A trading env over real daily prices, split in time: learn on the early years, judge once on the rest.

    env.id: mp_rl.examples.trading:TradingEnv
    env.kwargs: {dataset: STOCKS_GOOGL, split: train}          (configs/trading.yaml)

**Data.** The daily prices `gym-anytrading` 2.0.0 (MIT) ships as CSV files inside its package (the
`trading` extra): `STOCKS_GOOGL` (Alphabet class A, 2,335 days, 2009-05-22 .. 2018-08-29) and
`FOREX_EURUSD_1H_ASK` (6,225 hours of 2017). They are read from the package's folder as text; the
package itself (which imports pandas and matplotlib) is never imported.

**The split.** `train` is every step before `SPLITS[dataset]` (for GOOGL, 2016-01-01: 2009 .. 2015);
`test` is every step from it to the end (2016-01-04 .. 2018-08-29, 670 days). Training episodes are
`window` rows (a trading year: 251 steps, each from a day's close to the next) from a random start
inside the train part, truncated at their end; a test episode is the whole test part, once, and
terminates with the data. Nothing is chosen on the test part: mp_rl's periodic evaluation (which
picks `best.pt`) plays the env as the config makes it, on the train part.

**The state at step t** (12 values, each from prices up to t only; `features` and a test prove it):
log returns over 1, 5, 10, 21 and 63 steps; the deviation of 1-step log returns over 10 and 21
steps; the log distance from the 10- and 50-step means; the log drawdown from the 63-step high
(each scaled by the last 63 steps' deviation: no statistics fitted on any period); then the
position (0 flat, 1 long) and its unrealised log return since entry.

**Actions** 0 sell (go flat), 1 hold (keep the position), 2 buy (go long): long-only, all in, as
buy-and-hold is. A trade fills at the close the state was computed from (a mildly optimistic fill).
**Reward**: the day's log return of equity in percent, position times the price's log return, less
`cost` (a fraction, 10 basis points by default) of the value traded. `info` carries the equity
(starting at 1), the position, the trades so far and the date.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import ClassVar

import gymnasium as gym
import numpy as np

DATASETS = {"STOCKS_GOOGL": "Adj Close", "FOREX_EURUSD_1H_ASK": "Close"}  # dataset: its price column
SPLITS = {"STOCKS_GOOGL": "2016-01-01", "FOREX_EURUSD_1H_ASK": "01.10.2017 00:00:00.000"}
WARMUP = 63  # steps of history the longest feature needs
MARKET = 10  # features from prices; then position and unrealised return
SELL, HOLD, BUY = 0, 1, 2


def load(dataset: str) -> tuple[list[str], np.ndarray]:
    """(dates, prices) of a dataset gym-anytrading ships."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r}: one of {', '.join(DATASETS)}")
    spec = importlib.util.find_spec("gym_anytrading")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the trading example needs the trading extra: pip install -e '.[trading]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / f"{dataset}.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    time_key = "Date" if "Date" in rows[0] else "Time"
    return [r[time_key] for r in rows], np.array([float(r[DATASETS[dataset]]) for r in rows])


def features(prices: np.ndarray) -> np.ndarray:
    """(len(prices), 10) market features; row t reads prices[: t + 1] only (rows before WARMUP: 0).

    Each is divided by the deviation of 1-step log returns over the last 63 steps (times the square
    root of its horizon), so the features are scale-free without statistics fitted on any period."""
    logp = np.log(prices)
    n, out = len(prices), np.zeros((len(prices), MARKET))
    r1 = np.diff(logp, prepend=logp[0])
    for t in range(WARMUP, n):
        now, sigma = logp[t], max(r1[t - WARMUP + 1 : t + 1].std(), 1e-8)
        out[t, :5] = [(now - logp[t - k]) / (sigma * k**0.5) for k in (1, 5, 10, 21, 63)]
        out[t, 5:7] = [r1[t - k + 1 : t + 1].std() / sigma for k in (10, 21)]
        out[t, 7:9] = [(now - np.log(prices[t - k + 1 : t + 1].mean())) / (sigma * k**0.5) for k in (10, 50)]
        out[t, 9] = (now - logp[t - WARMUP + 1 : t + 1].max()) / (sigma * WARMUP**0.5)
    return out


class TradingEnv(gym.Env):
    """Long-only trading of one asset, one step per row of its price series (see the module's text)."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, dataset: str = "STOCKS_GOOGL", split: str = "train", window: int = 252, cost: float = 0.001,
                 data: tuple[list[str], np.ndarray] | None = None, render_mode: str | None = None):  # fmt: skip
        if split not in ("train", "test"):
            raise ValueError(f"split {split!r}: train or test")
        if not 0 <= cost < 1 or window < 2:
            raise ValueError(f"cost {cost} must be in [0, 1) and window {window} at least 2")
        self.dates, self.prices = data if data is not None else load(dataset)
        boundary = SPLITS.get(dataset, "")
        cut = next((i for i, d in enumerate(self.dates) if _key(d) >= _key(boundary)), len(self.dates))
        self.market = features(self.prices).astype(np.float32)
        self.lo, self.hi = (WARMUP, cut) if split == "train" else (cut, len(self.prices))
        if self.hi - self.lo < 2:
            raise ValueError(f"split {split!r} of {dataset} has {self.hi - self.lo} steps")
        self.split, self.window, self.cost = split, min(window, self.hi - self.lo), cost
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (MARKET + 2,), np.float32)
        self.action_space = gym.spaces.Discrete(3)

    def _obs(self) -> np.ndarray:
        unrealised = np.log(self.prices[self.t] / self.entry) if self.position else 0.0
        return np.concatenate([self.market[self.t], [self.position, unrealised]]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self.split == "train":
            self.t = int(self.np_random.integers(self.lo, self.hi - self.window + 1))
            self.end = self.t + self.window - 1
        else:
            self.t, self.end = self.lo, self.hi - 1
        self.position, self.entry, self.equity, self.trades = 0, 0.0, 1.0, 0
        return self._obs(), self._info()

    def step(self, action: int):
        new = {SELL: 0, HOLD: self.position, BUY: 1}[int(action)]
        traded = abs(new - self.position)
        if traded and new:
            self.entry = self.prices[self.t]
        self.trades += traded
        log_r = new * np.log(self.prices[self.t + 1] / self.prices[self.t]) + np.log1p(-self.cost * traded)
        self.position, self.t = new, self.t + 1
        self.equity *= float(np.exp(log_r))
        # The end of a window is a time limit, not an end of the world: truncated, so targets bootstrap
        # there. The test part's last day is the end of the data: terminated.
        last = self.t >= self.end
        return self._obs(), float(100 * log_r), last and self.split == "test", last and self.split == "train", \
            self._info()  # fmt: skip

    def _info(self) -> dict:
        return {"equity": self.equity, "position": self.position, "trades": self.trades, "date": self.dates[self.t]}


def _key(date: str) -> str:
    """A sortable form of the datasets' dates: 2016-01-04 as is, 01.10.2017 00:00:00.000 as 2017-10-01."""
    if len(date) >= 10 and date[2] == "." and date[5] == ".":
        return f"{date[6:10]}-{date[3:5]}-{date[0:2]}{date[10:]}"
    return date
