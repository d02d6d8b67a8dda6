"""How fast a run starts: members forked from the fork server against members spawned.

    python -m benchmarks.start [--repeats 5] [--config configs/smoke.yaml] [--out bench_out/start]

Each repeat runs the config twice through the real CLI (`python -m mp_rl.run`), once with the fork
server (the default) and once with MP_RL_START_METHOD=spawn, in alternating order, with the monitor
on (three members: learner, actor, monitor). For each it records the seconds from launch to the
run folder, to the first env step in `metrics.jsonl` (the members started and stepping) and to the
exit. The medians, and spawn's over the fork server's, are printed: what each run of the live test
suite, and each restart of a member, gains.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import table, write_results

METHODS = ("forkserver", "spawn")


def first_step(run_dir: Path) -> bool:
    """Whether the run's metrics show an env step yet."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return False
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("env_steps", 0) > 0:
                return True
        except ValueError:  # a line being written
            return False
    return False


def one(config: str, method: str, extra: list[str]) -> dict:
    """One run's times: to its folder, its first env step, its exit."""
    runs = Path(tempfile.mkdtemp(prefix="mp_rl_start_"))
    env = {**os.environ, "MP_RL_START_METHOD": method}
    cmd = [sys.executable, "-m", "mp_rl.run", "--config", config, f"run.runs_dir={runs}", "logging.report=false",
           "monitor.enabled=true", *extra]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    got: dict[str, float] = {}
    while proc.poll() is None:
        folders = list(runs.iterdir())
        if folders and "folder" not in got:
            got["folder"] = time.monotonic() - t0
        if folders and "step" not in got and first_step(folders[0]):
            got["step"] = time.monotonic() - t0
        time.sleep(0.02)
    got["exit"] = time.monotonic() - t0
    if proc.returncode != 0 or "step" not in got:
        raise SystemExit(f"{method}: exit {proc.returncode}, {got}: {proc.stderr.read()[-1500:]}")
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--config", default="configs/smoke.yaml")
    ap.add_argument("--out", default=None)
    ap.add_argument("overrides", nargs="*", help="key.sub=value for the runs")
    a = ap.parse_args()
    times: dict[str, list[dict]] = {m: [] for m in METHODS}
    for k in range(a.repeats):
        for method in METHODS if k % 2 == 0 else METHODS[::-1]:  # alternated: the machine's drift hits both
            times[method].append(one(a.config, method, a.overrides))
            print(f"repeat {k} {method}: " + ", ".join(f"{n} {v:.2f} s" for n, v in times[method][-1].items()),
                  flush=True)  # fmt: skip
    rows = []
    for what in ("folder", "step", "exit"):
        med = {m: statistics.median(t[what] for t in times[m]) for m in METHODS}
        rows.append({"what": what, "fork": med["forkserver"], "spawn": med["spawn"],
                     "ratio": med["spawn"] / med["forkserver"], "saved": med["spawn"] - med["forkserver"]})  # fmt: skip
    cols = [("what", "seconds from launch to", "s"), ("fork", "fork server, median", ".2f"),
            ("spawn", "spawn, median", ".2f"), ("ratio", "spawn ÷ fork server", ".2f"),
            ("saved", "saved, s", ".2f")]  # fmt: skip
    print(f"\n{a.config}, monitor on, {a.repeats} alternated repeats\n")
    print(table(rows, cols))
    write_results("start", a.out, {"config": a.config, "repeats": a.repeats, "times": times, "rows": rows})


if __name__ == "__main__":
    main()
