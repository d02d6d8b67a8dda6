"""The network that grows while it trains, at equal wall time: a too-small start with and without
growth, and the shipped network with and without it.

    python -m benchmarks.growth [--seeds 3] [--first-seed 0] [--envs cartpole,breakout] [--budget-cartpole 90]
                                [--budget-breakout 240] [--arms small-on,small-off,shipped-on,shipped-off]
                                                                  (Breakout needs the minatar extra)

Each seed runs mp_rl through the real CLI (`benchmarks.learning.run_mp_rl`) once per arm, alternated so
that a drift of the machine touches every arm. Every arm runs the resource monitor (`monitor.enabled`,
a 10 s cooldown so that growth can take its steps within the budget); only `learner.grow` and the
starting widths differ. Too small: CartPole's MLP at 1 x 16 (shipped [128, 128]); Breakout's CNN at
`cnn_scale` 0.25 (shipped 1.0). Each final (or, where the config stops at its target return, best)
network plays 20 greedy episodes through the evaluation every system in `benchmarks.learning` shares;
where the env has a threshold (CartPole: 475) the seconds to reach it are reported per seed.
The widths each run ended at are read from its learner's stats (`learner.jsonl`). Medians over seeds.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.common import table, write_results
from benchmarks.learning import ENVS, run_mp_rl
from mp_rl.cli import Parser
from mp_rl.runfolder import RunFolder

SMALL = {"cartpole": ["learner.hidden=[16]"], "breakout": ["learner.cnn_scale=0.25"]}
COMMON = ["monitor.enabled=true", "monitor.cooldown_s=10"]


def arms(env: str) -> dict[str, list[str]]:
    return {
        "too small, growth on": [*COMMON, *SMALL[env], "learner.grow=auto"],
        "too small, growth off": [*COMMON, *SMALL[env]],
        "shipped, growth on": [*COMMON, "learner.grow=auto"],
        "shipped, growth off": [*COMMON],
    }


COLUMNS = [("env", "env", "s"), ("arm", "network", "s"), ("median", "greedy return, median", ".1f"),
           ("seeds", "per seed", "s"), ("reached", "s to target, per seed", "s"),
           ("widths", "widths over the run", "s"), ("updates", "updates, median", ",")]  # fmt: skip


def widths(run_dir: Path) -> str:
    """The run's resizes, as `100→200→400 %` (or `100 %` when it never moved)."""
    moves = [r for r in RunFolder(run_dir).learner_stats() if "width" in r]
    return "→".join(str(w) for w in [100, *(r["width"] for r in moves)]) + " %"


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="benchmarks.growth", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--envs", default="cartpole,breakout")
    ap.add_argument("--budget-cartpole", type=float, default=90.0)
    ap.add_argument("--budget-breakout", type=float, default=240.0)
    ap.add_argument("--arms", default=None, help="comma-separated: small-on, small-off, shipped-on, shipped-off")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    keys = ["small-on", "small-off", "shipped-on", "shipped-off"]
    chosen = set(keys if a.arms is None else a.arms.split(","))
    if bad := chosen - set(keys):
        ap.error(f"--arms: unknown arm {sorted(bad)[0]!r}, one of {', '.join(keys)}")
    out = Path(a.out or "bench_out/growth")
    rows, results = [], {}
    for name in a.envs.split(","):
        env, budget = ENVS[name], getattr(a, f"budget_{name}")
        picked = {arm: more for key, (arm, more) in zip(keys, arms(name).items(), strict=True) if key in chosen}
        runs: dict[str, list[dict]] = {arm: [] for arm in picked}
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            for arm, more in picked.items():
                r = run_mp_rl(env, seed, budget, out / "runs", more)
                r["widths"] = widths(max((out / "runs").iterdir(), key=lambda p: p.stat().st_mtime))
                runs[arm].append(r)
                print(f"{name} seed {seed} {arm}: greedy {r['final']:.1f}, widths {r['widths']}, "
                      f"{r['env_steps']:,} env steps, {r['updates']:,} updates", flush=True)  # fmt: skip
        for arm, rs in runs.items():
            rows.append({"env": env["id"], "arm": arm, "median": statistics.median(r["final"] for r in rs),
                         "seeds": " / ".join(f"{r['final']:.1f}" for r in rs),
                         "widths": " / ".join(r["widths"] for r in rs),
                         "reached": " / ".join("—" if r["reached_s"] is None else f"{r['reached_s']:.0f}"
                                               for r in rs),
                         "updates": int(statistics.median(r["updates"] for r in rs))})  # fmt: skip
        results[name] = {"budget_s": budget, "runs": runs}
        # After each env, so that a long run that is cut off keeps what it measured.
        print(f"\ngrowth at equal wall time, {a.seeds} seeds, 20 greedy episodes each\n\n{table(rows, COLUMNS)}")
        print(f"results: {write_results('growth', str(out), {'rows': rows, **results})}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
