"""Adaptation: the monitor, started deliberately badly, against the best static configuration.

    python -m benchmarks.adaptation [--config configs/cartpole.yaml] [--static-seconds 20]
                                    [--adaptive-seconds 150] [--cooldown 5]

1. A sweep of static configurations (actor count x batch size, monitor off) on this machine; the
   best env steps/s is the target.
2. One adaptive run started badly (1 actor, batch 32, a 10k-row replay; all three knobs `auto`) with
   the monitor on and its cooldown shortened from 30 s to `--cooldown` (window 2 s, decisions every
   0.5 s), so a benchmark of minutes shows what a long run does over hours.
3. The auto-tuner, started as badly: a cold `python -m mp_rl.tune` (a fresh cache folder; bar <= 60 s),
   then a static run at the point it chose ("tuned"; bar >= 90 % of the best static point), then a
   run with `run.autotune=true` and the monitor on, which finds the point in the cache ("tuned,
   cached"); what that warm start adds is timed alone (bar < 1 s).
Reported: seconds until the adaptive run holds >= 90 % of the best static throughput (3 s rolling
mean; bar <= 60 s), direction reversals per knob after that (bar <= 1 per 5 minutes), and a PNG of
throughput, actors, batch size, capacity and CPU/RAM over time with every move marked.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import table, write_results
from mp_rl.cli import Parser
from mp_rl.config import load_config
from mp_rl.runfolder import RunFolder
from mp_rl.start import resources
from mp_rl.start.preflight import new_run_dir, plan
from mp_rl.system.supervisor import Supervisor
from mp_rl.tune import table as tune_table

COMMON = ["run.total_env_steps=1000000000", "run.target_return=null", "logging.status_every_s=0.5",
          "eval.every_s=100000", "eval.episodes=1", "learner.device=cpu", "learner.max_batch_size=2048"]  # fmt: skip


def run_system(config: str, overrides: list[str]) -> Path:
    cfg = load_config(config, [*COMMON, *overrides])
    run_dir = new_run_dir(cfg)
    with contextlib.redirect_stdout(io.StringIO()):
        Supervisor(plan(cfg), run_dir).run()
    return run_dir


def metrics(run_dir: Path) -> list[dict]:
    return RunFolder(run_dir).metrics()


def rolling(times: np.ndarray, values: np.ndarray, span: float) -> np.ndarray:
    return np.array([values[(times > t - span) & (times <= t)].mean() for t in times])


def reversals(moves: list[dict]) -> int:
    """Direction changes per knob (up then down, or down then up), an undo included."""
    count = 0
    for _, group in itertools.groupby(sorted(moves, key=lambda m: (m["knob"], m["time"])), key=lambda m: m["knob"]):
        dirs = [np.sign(m["new"] - m["old"]) for m in group]
        count += int(sum(a != b for a, b in itertools.pairwise(dirs)))
    return count


def plot(path: Path, lines: list[dict], moves: list[dict], best: float) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'mp_rl[plot]'): no PNG")
        return False
    t = np.array([m["time"] for m in lines])
    fig, axes = plt.subplots(5, 1, figsize=(10, 11), sharex=True)
    series = [("env_steps_per_s", "env steps/s"), ("actors", "actors"), ("batch_size", "batch size"),
              ("replay_capacity", "replay capacity")]  # fmt: skip
    for ax, (key, label) in zip(axes, series, strict=False):
        ax.plot(t, [m.get(key) or 0 for m in lines], lw=1.2)
        ax.set_ylabel(label)
    axes[0].axhline(best, color="g", ls="--", lw=1, label="best static")
    axes[0].axhline(0.9 * best, color="g", ls=":", lw=1, label="90 % of it")
    axes[0].legend(loc="lower right")
    cpu = [m.get("cpu_busy") for m in lines]
    ram = [None if m.get("ram_headroom") is None else 1 - m["ram_headroom"] for m in lines]
    axes[4].plot(t, [np.nan if v is None else v for v in cpu], label="cpu busy")
    axes[4].plot(t, [np.nan if v is None else v for v in ram], label="ram used")
    axes[4].set_ylabel("share")
    axes[4].set_ylim(0, 1.05)
    axes[4].legend(loc="lower right")
    row = {"actors": 1, "batch_size": 2, "capacity": 3}
    for m in moves:
        x = m["t"]
        for ax in axes:
            ax.axvline(x, color="r", alpha=0.25, lw=0.8)
        axes[row[m["knob"]]].annotate(f"{m['old']}→{m['new']}", (x, m["new"]), fontsize=7, color="r")
    axes[-1].set_xlabel("seconds since start")
    fig.suptitle("mp_rl monitor: adaptive run (red lines: moves) against the best static configuration")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def sweep(args, base: list[str], cpus: int) -> list[dict]:
    """Every static (actors, batch) pair with the monitor off: steady env steps/s of each."""
    rows = []
    for actors, batch in itertools.product(range(1, cpus + 1), args.batches):
        knobs = [f"actors.count={actors}", f"learner.batch_size={batch}", f"run.wall_time_s={args.static_seconds}"]
        rate = steady_rate(run_system(args.config, [*base, "monitor.enabled=false", *knobs]), args.warmup)
        rows.append({"what": f"static: {actors} actor(s), batch {batch}", "env_steps_per_s": rate})
    return rows


BAD_START = ["actors.count=auto", "actors.initial_count=1", "learner.batch_size=auto", "learner.initial_batch_size=32",
             "replay.capacity=auto", "replay.initial_capacity=10000", "replay.min_capacity=10000"]  # fmt: skip


def steady_rate(run_dir: Path, warmup: float) -> float:
    steady = [m for m in metrics(run_dir) if m["time"] >= warmup and m["env_steps_per_s"] > 0]
    return float(np.mean([m["env_steps_per_s"] for m in steady])) if steady else 0.0


def autotuned(args, base: list[str], out: Path) -> dict:
    """A cold tune in a fresh cache, the tuned point run static, then a cached start with the monitor on."""
    from mp_rl.start import autotune
    from mp_rl.start.preflight import plan as make_plan

    os.environ["XDG_CACHE_HOME"] = str(out / "cache")  # fresh: the first tune below is cold
    shutil.rmtree(out / "cache", ignore_errors=True)
    auto = [*COMMON, *base, *BAD_START]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mp_rl.tune", "--config", args.config, "--json", *auto],
                          capture_output=True, text=True, check=True)  # fmt: skip
    cold_s = time.perf_counter() - t0
    tuned = json.loads(done.stdout)
    p = tuned["point"]
    fixed = [
        f"actors.count={p['actors']}",
        f"learner.batch_size={p['batch']}",
        f"env.envs_per_actor={p['envs_per_actor']}",
    ]
    static = run_system(args.config, [*base, "monitor.enabled=false", *fixed, f"run.wall_time_s={args.static_seconds}"])
    warm = [*base, *BAD_START, "monitor.enabled=true", "run.autotune=true", f"run.wall_time_s={args.static_seconds}",
            f"monitor.cooldown_s={args.cooldown}"]  # fmt: skip
    cached = run_system(args.config, warm)
    run_plan = make_plan(load_config(args.config, [*COMMON, *warm]))
    t0 = time.perf_counter()
    warm_tuner = autotune.for_run(run_plan, None, lambda: True)  # what a cached start adds before it spawns
    warm_s = time.perf_counter() - t0
    record = json.loads(RunFolder(cached).autotune.read_text())
    what = f"{p['envs_per_actor']} envs x {p['actors']} actor(s), batch {p['batch']}"
    return {
        "cold_s": cold_s, "warm_s": warm_s, "warm_hit": warm_tuner.cached is not None, "tune": tuned,
        "cached_searched": record["searched"],
        "rows": [{"what": f"tuned: {what} (cold tune {cold_s:.0f} s)",
                  "env_steps_per_s": steady_rate(static, args.warmup)},
                 {"what": "tuned, cached, monitor on" + (" (searched again)" if record["searched"] else ""),
                  "env_steps_per_s": steady_rate(cached, args.warmup)}],
    }  # fmt: skip


def adapt(args, base: list[str], best: float) -> dict:
    """The badly started adaptive run and what it did: time to 90 % of `best`, moves, reversals."""
    adaptive = [*base, *BAD_START, "monitor.enabled=true", f"monitor.cooldown_s={args.cooldown}", "monitor.window_s=2",
                "monitor.decide_every_s=0.5", f"run.wall_time_s={args.adaptive_seconds}"]  # fmt: skip
    run_dir = run_system(args.config, adaptive)
    lines = [m for m in metrics(run_dir) if m.get("env_steps_per_s") is not None][:-1]  # the last is the stop
    t0 = lines[0]["unix_time"] - lines[0]["time"]  # decisions carry wall-clock times; put them on this axis
    moves = [{**d, "t": d["unix_time"] - t0} for d in RunFolder(run_dir).decisions("move")]
    t = np.array([m["time"] for m in lines])
    smooth = rolling(t, np.array([m["env_steps_per_s"] for m in lines]), 3.0)
    reached = np.flatnonzero(smooth >= 0.9 * best)
    t_reach = float(t[reached[0]]) if len(reached) else None
    after = [m for m in moves if t_reach is not None and m["t"] >= t_reach]
    steady_s = float(t[-1] - t_reach) if t_reach is not None else 0.0
    last = [m for m in lines if m["time"] >= t[-1] - 10]
    end = lines[-1]
    return {
        "run_dir": str(run_dir), "lines": lines, "moves": moves, "time_to_90_s": t_reach, "moves_after": len(after),
        "reversals_after": reversals(after), "steady_seconds": steady_s,
        "row": {"what": f"adaptive, last 10 s (ended at {end['actors']} actor(s), batch {end['batch_size']}, "
                        f"capacity {end['replay_capacity']:,})",
                "env_steps_per_s": float(np.mean([m["env_steps_per_s"] for m in last]))},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="benchmarks.adaptation", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/cartpole.yaml")
    ap.add_argument("--static-seconds", type=float, default=20.0)
    ap.add_argument("--adaptive-seconds", type=float, default=150.0)
    ap.add_argument("--warmup", type=float, default=6.0, help="seconds ignored at the start of a static run")
    ap.add_argument("--cooldown", type=float, default=5.0, help="the monitor's cooldown for the adaptive run")
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512, 2048])
    ap.add_argument("--out", default="bench_out/adaptation")
    args = ap.parse_args(argv)
    out, cpus = Path(args.out), resources.usable_cpus()
    base = [f"run.runs_dir={out / 'runs'}"]
    rows = sweep(args, base, cpus)
    best = max(rows, key=lambda r: r["env_steps_per_s"])
    a = adapt(args, base, best["env_steps_per_s"])
    rows.append(a["row"])
    tuned = autotuned(args, base, out)
    rows += tuned["rows"]
    for r in rows:
        r["of_best"] = r["env_steps_per_s"] / best["env_steps_per_s"]
    print(f"adaptation: {args.config}, {cpus} usable CPUs; monitor cooldown {args.cooldown:g} s (default 30 s)\n")
    print(table(rows, [("what", "configuration", "s"), ("env_steps_per_s", "env steps/s", ",.0f"),
                       ("of_best", "of best static", ".0%")]))  # fmt: skip
    t_reach, rev, steady = a["time_to_90_s"], a["reversals_after"], a["steady_seconds"]
    ok = t_reach is not None and t_reach <= 60
    reach = "never" if t_reach is None else f"{t_reach:.1f} s"
    print(f"\ntime to >= 90% of the best static ({best['what']}): {reach} (bar <= 60 s: {'met' if ok else 'NOT met'})")
    if t_reach is not None:
        per5 = rev * 300.0 / max(steady, 1e-9)
        print(f"after that: {a['moves_after']} move(s), {rev} reversal(s) in {steady:.0f} s = {per5:.1f} per 5 min "
              f"(bar <= 1: {'met' if per5 <= 1 else 'NOT met'})")  # fmt: skip
    for m in a["moves"]:
        print(f"  t={m['t']:6.1f}s  {m['knob']:<10} {m['old']:>8,} -> {m['new']:<8,} {m['rule']}")
    of, cold, warm = rows[-2]["of_best"], tuned["cold_s"], tuned["warm_s"]
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    print(f"\nautotune: cold tune {cold:.1f} s (bar <= 60 s: {met(cold <= 60)}); tuned point at {of:.0%} of the best "
          f"static (bar >= 90%: {met(of >= 0.9)}); a cached start adds {warm * 1000:.0f} ms (bar < 1 s: "
          f"{met(warm < 1)}{'' if tuned['warm_hit'] else ', but the cache MISSED'})")  # fmt: skip
    print(tune_table(tuned["tune"]))
    png = out / "adaptation.png"
    drawn = plot(png, a["lines"], a["moves"], best["env_steps_per_s"])
    payload = {"rows": rows, "best_static": best, **{k: v for k, v in a.items() if k not in ("lines", "row")},
               "autotune": {k: v for k, v in tuned.items() if k != "rows"}}  # fmt: skip
    print(f"results: {write_results('adaptation', str(out), payload)}" + (f"; plot: {png}" if drawn else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
