"""A run stopped and resumed against one that never stopped, and what a stop and a resume cost.

    python -m benchmarks.resume [--seconds 240] [--out bench_out/resume]     (needs the minatar extra)

MinAtar Breakout, seed 0, through the real CLI: one run of `--seconds`, and one of half that, stopped
cleanly (its wall time), then `--resume`d for the other half. Both return curves (the mean of recent
training episodes against env steps) go into one PNG, the stop marked. A resume that continues
(weights, optimizer, counters, knobs and the replay) bends neither the curve nor its slope at the
stop; one that lost its replay would restart learning from an empty buffer there.

The cost of a stop and a resume, from the runs' own lines ("replay saved ... in S s", "replay
restored ... in S s"): measured for that run and for a CartPole run, and computed for a 1M-row Pong
replay from its bytes (frame rows: each frame once) at the rate these runs wrote and read.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.common import table, write_results
from mp_rl.runfolder import RunFolder
from mp_rl.shm.ringspec import RingSpec

SAVED = re.compile(r"replay saved for --resume: ([\d,]+) rows, ([\d,.]+) MiB in ([\d.]+) s")
RESTORED = re.compile(r"replay restored: ([\d,]+) rows in ([\d.]+) s")


def run(args: list[str], runs_dir: Path) -> tuple[str, Path]:
    cmd = [sys.executable, "-m", "mp_rl.run", *args, f"run.runs_dir={runs_dir}", "logging.status_every_s=2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({out.returncode}):\n{(out.stdout + out.stderr)[-2000:]}")
    return out.stdout, max(runs_dir.iterdir(), key=lambda p: p.stat().st_mtime)


def curve(run_dir: Path) -> list[tuple[int, float]]:
    lines = RunFolder(run_dir).metrics()
    return [(m["env_steps"], m["return_mean"]) for m in lines if m.get("return_mean") is not None]


def stop_and_resume(config: str, seconds: float, runs_dir: Path, extra: list[str]) -> dict:
    """Run `seconds / 2`, stop, resume for `seconds / 2`: the costs and the run folder."""
    first, run_dir = run(["--config", config, f"run.wall_time_s={seconds / 2:g}", *extra], runs_dir)
    stop_at = RunFolder(run_dir).summary()["env_steps"]
    second, _ = run(["--resume", str(run_dir), f"run.wall_time_s={seconds / 2:g}"], runs_dir)
    saved, restored = SAVED.search(first), RESTORED.search(second)
    if not (saved and restored):
        raise SystemExit(f"no replay lines in the output:\n{first[-1000:]}\n{second[-1000:]}")
    return {"rows": int(saved.group(1).replace(",", "")), "mib": float(saved.group(2).replace(",", "")),
            "save_s": float(saved.group(3)), "load_s": float(restored.group(2)), "run_dir": str(run_dir),
            "stop_at": stop_at}  # fmt: skip


def pong_bytes(rows: int = 1_000_000) -> int:
    spec = RingSpec.for_frames((84, 84), "uint8", 4, 3, rows).normalised()
    blocks = -(-rows // spec.block)
    return rows * sum(f.row_bytes for f in spec.fields) + blocks * spec.frames.block_bytes


def plot(path: Path, straight: list, resumed: list, stop_at: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4))
    ax.plot([s for s, _ in straight], [r for _, r in straight], label="never stopped")
    ax.plot([s for s, _ in resumed], [r for _, r in resumed], label="stopped, then --resume")
    ax.axvline(stop_at, color="grey", linestyle="--", linewidth=1)
    ax.text(stop_at, ax.get_ylim()[1], " stop / resume", va="top", color="grey")
    ax.set(xlabel="env steps", ylabel="return (mean of recent training episodes)",
           title="MinAtar Breakout, seed 0: a resume continues the run")  # fmt: skip
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks.resume", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    out = Path(a.out or "bench_out/resume")
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    config = "configs/minatar_breakout.yaml"
    _, straight_dir = run(["--config", config, f"run.wall_time_s={a.seconds:g}"], runs)
    minatar = stop_and_resume(config, a.seconds, runs, [])
    cartpole = stop_and_resume("configs/cartpole.yaml", 30.0, runs, ["run.target_return=null"])
    straight, resumed = curve(straight_dir), curve(Path(minatar["run_dir"]))
    stop_at = minatar["stop_at"]
    plot(out / "resume.png", straight, resumed, stop_at)
    rate_save = sum(r["mib"] for r in (minatar, cartpole)) / sum(r["save_s"] for r in (minatar, cartpole))
    rate_load = sum(r["mib"] for r in (minatar, cartpole)) / sum(r["load_s"] for r in (minatar, cartpole))
    pong_mib = pong_bytes() / 2**20
    rows = [
        {"what": "CartPole-v1 (measured)", "rows": cartpole["rows"], "mib": cartpole["mib"],
         "save_s": cartpole["save_s"], "load_s": cartpole["load_s"]},
        {"what": "MinAtar Breakout (measured)", "rows": minatar["rows"], "mib": minatar["mib"],
         "save_s": minatar["save_s"], "load_s": minatar["load_s"]},
        {"what": "Pong, 1M frame rows (computed)", "rows": 1_000_000, "mib": pong_mib,
         "save_s": pong_mib / rate_save, "load_s": pong_mib / rate_load},
    ]  # fmt: skip
    print(f"\nwhat a clean stop writes and a resume reads (save at {rate_save:,.0f} MiB/s, load at "
          f"{rate_load:,.0f} MiB/s here)\n")  # fmt: skip
    cols = [("what", "replay", "s"), ("rows", "rows", ","), ("mib", "MiB", ",.1f"),
            ("save_s", "stop: save s", ".2f"), ("load_s", "resume: load s", ".2f")]  # fmt: skip
    print(table(rows, cols))
    end = {"never stopped": straight[-1], "stopped and resumed": resumed[-1]}
    print("\nlast status line (env steps, return): " + "; ".join(f"{k} {v[0]:,} / {v[1]}" for k, v in end.items()))
    print(f"curves: {out / 'resume.png'}")
    print(f"results: {write_results('resume', str(out), {'rows': rows, 'end': end, 'stop_at': stop_at})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
