"""Prioritized replay against uniform replay: the same shipped config, the same wall-clock budget.

    python -m benchmarks.prioritized [--seeds 3] [--envs cartpole,breakout] [--budget-cartpole 60]
                                     [--budget-breakout 180]          (Breakout needs the minatar extra)

Each seed runs mp_rl twice through the real CLI (`benchmarks.learning.run_mp_rl`: started as a user
starts it, stopped by SIGINT at the budget unless its config stops it first), once as shipped
(uniform replay) and once with `replay.prioritized=true`, alternated so that a drift of the machine
touches both. Each final (or, where the config stops at a target return, best) Q-network plays 20
greedy episodes through the evaluation every system in `benchmarks.learning` shares. Medians over seeds.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.common import table, write_results
from benchmarks.learning import ENVS, run_mp_rl
from mp_rl.cli import Parser

ARMS = {"uniform": [], "prioritized": ["replay.prioritized=true"]}


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="benchmarks.prioritized", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--envs", default="cartpole,breakout")
    ap.add_argument("--budget-cartpole", type=float, default=60.0)
    ap.add_argument("--budget-breakout", type=float, default=180.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    out = Path(a.out or "bench_out/prioritized")
    rows, results = [], {}
    for name in a.envs.split(","):
        env, budget = ENVS[name], getattr(a, f"budget_{name}")
        runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            for arm, more in ARMS.items():
                r = run_mp_rl(env, seed, budget, out / "runs", more)
                runs[arm].append(r)
                at = "" if r.get("reached_s") is None else f", {env['threshold']:g} at {r['reached_s']:.0f} s"
                print(f"{name} seed {seed} {arm}: greedy {r['final']:.1f}{at}, {r['env_steps']:,} env steps, "
                      f"{r['updates']:,} updates", flush=True)  # fmt: skip
        for arm, rs in runs.items():
            row = {"env": env["id"], "arm": arm, "median": statistics.median(r["final"] for r in rs),
                   "seeds": " / ".join(f"{r['final']:.1f}" for r in rs),
                   "updates": int(statistics.median(r["updates"] for r in rs))}  # fmt: skip
            if env["threshold"] is not None:
                times = [r["reached_s"] if r["reached_s"] is not None else budget for r in rs]
                solved = sum(r["reached_s"] is not None for r in rs)
                row["reached"] = f"{statistics.median(times):.0f}" + ("" if solved * 2 > len(rs) else "+")
                row["solved"] = f"{solved}/{len(rs)}"
            rows.append(row)
        results[name] = {"budget_s": budget, "runs": runs}
    cols = [("env", "env", "s"), ("arm", "replay", "s"), ("median", "greedy return, median", ".1f"),
            ("seeds", "per seed", "s"), ("updates", "updates, median", ","),
            ("reached", "s to the threshold, median", "s"), ("solved", "reached", "s")]  # fmt: skip
    print(f"\nuniform against prioritized replay, {a.seeds} seeds, the same budget each, 20 greedy episodes\n")
    print(table(rows, cols))
    print(f"results: {write_results('prioritized', str(out), {'rows': rows, **results})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
