"""The flagship measured: `configs/threadripper.yaml` run for N minutes, against one core's env loop.

    python -m benchmarks.flagship [--minutes 5] [--config configs/threadripper.yaml] [key=value ...]
                                                                       (needs the atari extra)

First the baseline, in the same run: one process stepping the same vector env (same preprocessing,
batched policy, epsilon-greedy) on one core with nothing else running (`benchmarks.scaling`'s
ceiling). Then the real system through the CLI for `--minutes`, with the overrides given (e.g.
`env.backend=envpool`, `learner.device=cpu`). From its metrics over the steady part (after the first
fifth) it reports env frames/s (env steps x the frame skip), updates/s, GPU utilisation and VRAM
(nvidia-ml-py, through the monitor), replay bytes (the ring's bytes per row x rows held), the actor
count and batch size the monitor settled on, weight lag, and the return curve (a PNG beside the
results), and the scaling ratio of the P7 figure: Atari frames/s ÷ (actor cores x one core's frames/s).
Bar: >= 0.85 on a 16-core machine (an actor process is one core; the learner has its own).
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import write_results
from benchmarks.scaling import single_process_rate
from mp_rl import runfolder
from mp_rl.cli import Parser
from mp_rl.config import load_config
from mp_rl.runfolder import RunFolder
from mp_rl.shm.ringspec import RingSpec


def run_system(config: str, minutes: float, runs_dir: Path, overrides: list[str]) -> Path:
    cmd = [sys.executable, "-m", "mp_rl.run", "--config", config, f"run.runs_dir={runs_dir}",
           f"run.wall_time_s={minutes * 60:g}", "run.total_env_steps=10000000000", "logging.status_every_s=2",
           *overrides]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=minutes * 60 + 900)
    if out.returncode != 0:
        raise SystemExit(f"the run failed ({out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")
    return max(runs_dir.iterdir(), key=lambda p: p.stat().st_mtime)


def steady(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(all status lines, those after the first fifth of the run)."""
    lines = RunFolder(run_dir).metrics()
    return lines, runfolder.steady(lines)


def rate(rows: list[dict], key: str) -> float:
    """Counter `key` per second over `rows`: from its first and last values, so the bursts in which
    actors report their steps (every few hundred) do not skew it as a median of per-line rates would."""
    return (rows[-1][key] - rows[0][key]) / (rows[-1]["time"] - rows[0]["time"])


def windowed(lines: list[dict], key: str, span: float = 10.0) -> tuple[list[float], list[float]]:
    """(minutes, rate of counter `key` over the last `span` seconds) for the throughput panel."""
    t, v, j = [], [], 0
    for i, m in enumerate(lines):
        while m["time"] - lines[j]["time"] > span:
            j += 1
        if i > j:
            t.append(m["time"] / 60)
            v.append((m[key] - lines[j][key]) / (m["time"] - lines[j]["time"]))
    return t, v


def med(rows: list[dict], key: str):
    values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
    return statistics.median(values) if values else None


def gpu_memory() -> int | None:
    """This machine's GPU memory in bytes (device 0), None without CUDA."""
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def summary(lines: list[dict], st: list[dict], bytes_per_row: float, skip: int, one_core: float,
            vram_total: int | None) -> dict:  # fmt: skip
    """The run's figures from its status lines (`st`: the steady part). The status lines give GPU
    memory as a share of the device's (`vram_used`, 0..1); GiB need the device's total."""
    frames = rate(st, "env_steps") * skip
    actors = med(st, "actors")
    vram = med(st, "vram_used")
    return {"frames_per_s": frames, "updates_per_s": rate(st, "updates"), "gpu_util": med(st, "gpu_util"),
            "vram_share": vram, "vram_used_gib": None if vram is None or not vram_total else vram * vram_total / 2**30,
            "replay_rows": lines[-1]["replay_size"], "replay_gib": lines[-1]["replay_size"] * bytes_per_row / 2**30,
            "bytes_per_row": bytes_per_row, "actors": actors, "batch_size": med(st, "batch_size"),
            "weight_lag": med(st, "weight_lag"), "return_first": lines[0].get("return_mean"),
            "return_last": lines[-1].get("return_mean"), "one_core_frames_per_s": one_core,
            "scaling": frames / (actors * one_core) if actors else None,
            "bottleneck": collections.Counter(m.get("bottleneck") for m in st).most_common(1)[0][0]}  # fmt: skip


def plot(path: Path, lines: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [m["time"] / 60 for m in lines if m.get("return_mean") is not None]
    r = [m["return_mean"] for m in lines if m.get("return_mean") is not None]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    a.plot(t, r, color="tab:blue")
    a.set(xlabel="minutes", ylabel="episode return (mean of recent)", title="return")
    b.plot(*windowed(lines, "env_steps"), label="env steps/s")
    b.plot(*windowed(lines, "updates"), label="updates/s")
    b.set(xlabel="minutes", title="throughput (10 s windows)")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def vram_text(r: dict) -> str:
    if r["vram_share"] is None:
        return "—"
    gib = "" if r["vram_used_gib"] is None else f"{r['vram_used_gib']:.1f} GiB, "
    return f"{gib}{r['vram_share']:.1%} of the device"


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="benchmarks.flagship", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/threadripper.yaml")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--baseline-seconds", type=float, default=20.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("overrides", nargs="*", help="config overrides (key=value) for the run and the baseline")
    a = ap.parse_args(argv)
    out = Path(a.out or "bench_out/flagship")
    cfg = load_config(a.config, a.overrides)
    skip = 4 if cfg.env.id.startswith("ALE/") else 1  # frames per env step
    one_core = single_process_rate(cfg, a.baseline_seconds) * skip
    run_dir = run_system(a.config, a.minutes, out / "runs", a.overrides)
    lines, st = steady(run_dir)
    manifest = json.loads(RunFolder(run_dir).manifest.read_text())
    spec = RingSpec.from_json(manifest["segments"]["ring"]["spec"])
    r = {"run": str(run_dir), **summary(lines, st, spec.bytes_per_row, skip, one_core, gpu_memory())}
    frames, actors = r["frames_per_s"], r["actors"]
    plot(out / "flagship.png", lines)
    print(f"flagship: {a.config} {' '.join(a.overrides)}, {a.minutes:g} min; steady part = after the first fifth\n")
    rows = [("env frames/s", f"{frames:,.0f}"), ("learner updates/s", f"{r['updates_per_s']:,.1f}"),
            ("GPU utilisation", "—" if r["gpu_util"] is None else f"{r['gpu_util']:.0%}"),
            ("VRAM used (all of the GPU's users)", vram_text(r)),
            ("replay", f"{r['replay_rows']:,} rows, {r['replay_gib']:.2f} GiB ({r['bytes_per_row']:,.0f} B a row)"),
            ("actors (monitor)", f"{actors:g}"), ("batch size (monitor)", f"{r['batch_size']:g}"),
            ("weight lag (versions)", f"{r['weight_lag']:g}"), ("bottleneck (monitor, most often)", r["bottleneck"]),
            ("return, first → last status line", f"{r['return_first']} → {r['return_last']}"),
            ("one core's env loop (baseline)", f"{one_core:,.0f} frames/s"),
            ("frames/s ÷ (actors × one core)", "—" if r["scaling"] is None else f"{r['scaling']:.2f}")]  # fmt: skip
    print("| figure | value |\n| --- | --- |")
    print("\n".join(f"| {k} | {v} |" for k, v in rows))
    if r["scaling"] is not None:
        print(f"\nscaling ratio {r['scaling']:.2f} (bar >= 0.85 on a 16-core machine: this one has "
              f"{len(os.sched_getaffinity(0))} usable CPUs)")  # fmt: skip
    print(f"return curve: {out / 'flagship.png'}")
    print(f"results: {write_results('flagship', str(out), r)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
