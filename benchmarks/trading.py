"""The trading example judged once on its held-out years, beside buy-and-hold, always-flat and random.

    python -m benchmarks.trading [--seeds 5] [--budget 120] [--out bench_out/trading]
                                                    (needs: pip install -e '.[trading,plot]')

Each seed trains `configs/trading.yaml` through the real CLI for `--budget` seconds (stopped by SIGINT,
as a user's Ctrl-C stops it; it learns on 2009-2015 only), then `mp_rl.policy.Policy` loads the run's
`best.pt` (picked by evaluations on the train years) and plays the test years, 2016-01-04 ..
2018-08-29, once, greedily. The baselines play the same env with the same costs: buy on the first
day and hold; stay flat; uniformly random actions (20 seeds, medians). Reported per policy: net
return after costs, annualised Sharpe ratio of daily returns (sqrt(252), no risk-free rate),
maximum drawdown, trades. The equity curves go to `equity.png`. Whatever the figures are, they are
the figures: nothing here is tuned on the test years.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from benchmarks.common import table, write_results
from benchmarks.learning import run_mp_rl

CONFIG, COST = "configs/trading.yaml", 0.001


def play(act, seed: int = 0) -> dict:
    """One pass over the test years with `act(obs) -> action`; the equity curve and its figures."""
    from mp_rl.examples.trading import TradingEnv

    env = TradingEnv(split="test", cost=COST)
    obs, info = env.reset(seed=seed)
    equity, dates, done = [1.0], [info["date"]], False
    while not done:
        obs, _, done, _, info = env.step(act(obs))
        equity.append(info["equity"])
        dates.append(info["date"])
    return {"equity": equity, "dates": dates, "trades": info["trades"], **figures(np.array(equity))}


def figures(equity: np.ndarray) -> dict:
    daily = equity[1:] / equity[:-1] - 1
    sharpe = float(daily.mean() / daily.std() * np.sqrt(252)) if daily.std() > 0 else 0.0
    drawdown = float((1 - equity / np.maximum.accumulate(equity)).max())
    return {"net_return": float(equity[-1] - 1), "sharpe": sharpe, "max_drawdown": drawdown}


def baselines() -> dict[str, dict]:
    from mp_rl.examples.trading import BUY, HOLD, SELL

    first = [True]

    def buy_and_hold(_obs):
        a = BUY if first[0] else HOLD
        first[0] = False
        return a

    out = {"buy and hold": play(buy_and_hold), "always flat": play(lambda _obs: SELL)}
    randoms = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        randoms.append(play(lambda _obs, rng=rng: int(rng.integers(3))))
    mid = sorted(randoms, key=lambda r: r["net_return"])[len(randoms) // 2]  # the median run's curve
    out["random (median of 20 seeds)"] = {**mid, **{k: statistics.median(r[k] for r in randoms)
                                          for k in ("net_return", "sharpe", "max_drawdown", "trades")}}  # fmt: skip
    return out


def plot(curves: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for name, r in curves.items():
        days = mdates.datestr2num(r["dates"])
        style = dict(lw=2.2, color="black") if name == "buy and hold" else \
            dict(lw=1.2, ls="--") if not name.startswith("mp_rl") else dict(lw=1.2)  # fmt: skip
        ax.plot(days, r["equity"], label=f"{name}: {r['net_return']:+.0%}", **style)
    ax.xaxis.set_major_locator(mdates.YearLocator())
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y"))
    ax.set(ylabel="equity (start = 1, after 10 bp a trade)", title="GOOGL, held-out 2016-01-04 .. 2018-08-29")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks.trading", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=120.0)
    ap.add_argument("--out", default="bench_out/trading")
    a = ap.parse_args(argv)
    from mp_rl.policy import Policy

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {"id": "mp_rl.examples.trading:TradingEnv", "config": CONFIG, "threshold": None, "max_steps": 300,
           "extra": []}  # fmt: skip
    curves, agents = baselines(), []
    for seed in range(a.seeds):
        r = run_mp_rl(env, seed, a.budget, out / "runs", [], evaluate=False)
        policy = Policy.load(r["run_dir"], "best")
        result = {**play(policy.act), "seed": seed, "env_steps": r["env_steps"], "updates": r["updates"]}
        agents.append(result)
        curves[f"mp_rl seed {seed}"] = result
        print(f"seed {seed}: net {result['net_return']:+.1%}, Sharpe {result['sharpe']:.2f}, "
              f"{result['trades']} trades, {r['env_steps']:,} env steps", flush=True)  # fmt: skip
    rows = [{"policy": name, **{k: r[k] for k in ("net_return", "sharpe", "max_drawdown", "trades")}}
            for name, r in curves.items()]  # fmt: skip
    rows.append({"policy": f"mp_rl, median of {a.seeds} seeds",
                 **{k: statistics.median(r[k] for r in agents) for k in ("net_return", "sharpe", "max_drawdown",
                                                                        "trades")}})  # fmt: skip
    cols = [("policy", "policy", "s"), ("net_return", "net return", "+.1%"), ("sharpe", "Sharpe (annualised)", ".2f"),
            ("max_drawdown", "max drawdown", ".1%"), ("trades", "trades", "g")]  # fmt: skip
    print(f"\nheld-out 2016-01-04 .. 2018-08-29, 10 bp a trade, {a.budget:g} s of training per seed\n")
    print(table(rows, cols))
    plot(curves, out / "equity.png")
    print(f"equity curves: {out / 'equity.png'}")
    results = {"rows": rows, "agents": [{k: v for k, v in r.items() if k not in ("equity", "dates")} for r in agents]}
    print(f"results: {write_results('trading', str(out), results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
