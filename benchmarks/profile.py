"""Profile the real system: throughput over time, py-spy flame graphs, a torch.profiler learner trace.

    python -m benchmarks.profile --config configs/<name>.yaml --seconds 60 [--py-spy] [--torch-profiler]
                                 [--out bench_out/profile] [key.sub=value ...]

Everything lands in one folder (`--out`):
- `timeline.json`, `throughput.png`: env steps/s, samples/s, updates/s and each member's rate, sampled
  from the shared counters every `--tick` seconds (the same reader as `mp_rl.tools.status`);
- `flamegraph.svg` (`--py-spy`): `py-spy record --subprocesses` on the supervisor, so the whole tree
  is in one graph with each process under its title (`mp_rl[<run>] actor-0`, `... learner`). Rate
  50 Hz: with several busy processes that keeps py-spy's own CPU use small on a loaded machine.
  `--nonblocking`: the targets are not paused to be sampled, so the ring's hot loops keep their
  timing (the price: an occasional torn stack). No `--idle`: the graph shows where CPU goes;
  waiting is reported from the pipeline's own counters (learner waiting, actors blocked);
- `profile/` (`--torch-profiler`): the learner's Chrome trace, TensorBoard trace and top operators
  by self time, over the window `logging.torch_profile_schedule` (wait / warmup / active updates);
- `report.md`: the figures, where the time goes per process, the bottleneck the monitor saw.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from mp_rl import runfolder
from mp_rl.cli import Parser
from mp_rl.runfolder import PROFILE, RunFolder
from mp_rl.shm.manifest import AttachError, SharedRun
from mp_rl.system.telemetry import Delta
from mp_rl.tools.status import View, member_name

PYSPY_RATE = 50


def start_run(args, out: Path) -> tuple[subprocess.Popen, Path]:
    runs = out / "runs"
    before = set(runs.glob("*")) if runs.exists() else set()
    cmd = [sys.executable, "-m", "mp_rl.run", "--config", args.config, f"run.runs_dir={runs}",
           f"run.wall_time_s={args.seconds}", "run.total_env_steps=1000000000000", "run.target_return=null",
           f"logging.torch_profile={str(args.torch_profiler).lower()}", *args.overrides]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=open(out / "run.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        new = [d for d in set(runs.glob("*")) - before if RunFolder(d).manifest.exists()] if runs.exists() else []
        if new:
            return proc, new[0]
        if proc.poll() is not None:
            raise SystemExit(f"benchmarks.profile: the run exited with code {proc.returncode}; see {out}/run.log")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("benchmarks.profile: the run did not start within 120 s")


def start_pyspy(pid: int, seconds: float, out: Path) -> tuple[subprocess.Popen | None, str]:
    exe = shutil.which("py-spy")
    if exe is None:
        return None, "py-spy is not installed (pip install py-spy, or the dev extra): no flame graph"
    cmd = [exe, "record", "--pid", str(pid), "--subprocesses", "--rate", str(PYSPY_RATE), "--nonblocking",
           "--format", "flamegraph", "--output", str(out / "flamegraph.svg"),
           "--duration", str(int(seconds))]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), ""


def finish_pyspy(proc: subprocess.Popen | None, note: str, out: Path) -> str:
    if proc is None:
        return note
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if (out / "flamegraph.svg").exists():
        return ""
    why = (err or "").strip().splitlines()[-1:] or ["no output"]
    hint = " (ptrace not permitted: run as root, or set kernel.yama.ptrace_scope=0 / --cap-add SYS_PTRACE)"
    denied = "permission" in " ".join(why).lower() or "ptrace" in " ".join(why).lower()
    return f"py-spy could not record: {why[0]}{hint if denied else ''}"


def wait_titled(run_id: str, members: set[str], timeout: float = 60) -> None:
    """py-spy names a process by the command line it sees when it finds it: start it once the
    members have set their titles, so the flame graph says `... learner`, not `python -B -c ...`."""
    prefix, deadline = f"mp_rl[{run_id}] ", time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = set()
        for p in psutil.process_iter():
            try:
                cmd = " ".join(p.cmdline()).strip()
            except psutil.Error:
                continue
            if cmd.startswith(prefix):
                seen.add(cmd[len(prefix) :])
        if members <= seen:
            return
        time.sleep(0.1)


def pyspy_shares(svg: Path, names: dict[int, str]) -> dict[str, float]:
    """Share of all samples per process (%), from the root frames of py-spy's --subprocesses graph."""
    if not svg.exists():
        return {}
    shares: dict[str, float] = {}
    pattern = r"<title>process (\d+):&quot;(.*?)(?:&quot;)? \([\d,]+ samples?, ([\d.]+)%\)</title>"
    for pid, title, pct in re.findall(pattern, svg.read_text()):
        name = names.get(int(pid), title.split("] ")[-1].strip())
        if name == "supervisor" or "supervisor" in title:  # the root holds its children: count its own part
            continue
        shares[name] = shares.get(name, 0.0) + float(pct)
    return {n: round(v, 1) for n, v in shares.items()}


def sample(run_dir: Path, proc: subprocess.Popen, tick: float) -> tuple[list[dict], dict, dict]:
    """Tick the status view until the run ends; timeline, first and last counters."""
    try:
        shared = SharedRun.attach(run_dir)
    except AttachError as exc:
        raise SystemExit(f"benchmarks.profile: {exc}") from None
    with shared:
        view, timeline = View(shared, run_dir), []
        first = {**shared.control.counters(), "t": time.monotonic()}
        view.tick()
        last = first
        while proc.poll() is None and not shared.control.stopping:
            time.sleep(tick)
            s = view.tick()
            last = {**shared.control.counters(), "t": time.monotonic()}
            keep = ("slot", "kind", "pid", "attached", "cpu_percent", "steps_per_s", "index")
            timeline.append({"time": round(last["t"] - first["t"], 2), "env_steps_per_s": s["env_steps_per_s"],
                             "samples_per_s": s["replay"]["samples_per_s"],
                             "updates_per_s": s["learner"]["updates_per_s"], "bottleneck": s["bottleneck"],
                             "members": [{k: m[k] for k in keep} for m in s["members"]]})  # fmt: skip
    return timeline, first, last


def plot(path: Path, timeline: list[dict]) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'mp_rl[plot]'): no PNG"
    t = [x["time"] for x in timeline]
    fig, (a, b) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for key in ("env_steps_per_s", "samples_per_s", "updates_per_s"):
        a.plot(t, [x[key] or 0 for x in timeline], label=key.replace("_per_s", "/s").replace("_", " "))
    a.set_yscale("symlog")
    a.legend(loc="lower right")
    a.set_ylabel("rate")
    names = sorted({member_name(m) for x in timeline for m in x["members"] if m["kind"] != "monitor"})
    for name in names:
        ys = [next((m["steps_per_s"] or 0 for m in x["members"] if member_name(m) == name), np.nan) for x in timeline]
        b.plot(t, ys, label=name + (" (updates/s)" if name == "learner" else " (env steps/s)"))
    b.legend(loc="lower right", fontsize=8)
    b.set_ylabel("per member")
    b.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ""


def report(args, run_dir: Path, timeline: list[dict], first: dict, last: dict, shares: dict, notes: list[str]) -> str:
    steady = runfolder.steady(timeline)

    def mean(key):
        vals = [x[key] for x in steady if x[key] is not None]
        return float(np.mean(vals)) if vals else 0.0

    keys = ("learner_wait_ns", "actor_blocked_ns")
    delta = Delta({k: last[k] - first[k] for k in keys}, last["t"] - first["t"])
    actors = max(1, sum(m["kind"] == "actor" for m in timeline[-1]["members"])) if timeline else 1
    wait = delta.fraction("learner_wait_ns") or 0.0
    blocked = delta.fraction("actor_blocked_ns", over=actors) or 0.0
    cpu: dict[str, list[float]] = {}
    for x in steady:
        for m in x["members"]:
            if m["cpu_percent"] is not None:
                cpu.setdefault(member_name(m), []).append(m["cpu_percent"])
    rows = [f"| {n} | {np.mean(v):.0f} | {shares.get(n, 0.0) if shares else '—'} |" for n, v in sorted(cpu.items())]
    seen = [x["bottleneck"] for x in steady if x["bottleneck"]]
    names, counts = np.unique(seen, return_counts=True) if seen else ([], [])
    ranked = sorted(zip(names, counts, strict=True), key=lambda p: -p[1])
    bottlenecks = [f"- {n}: {c / len(seen):.0%} of ticks" for n, c in ranked]
    moves = RunFolder(run_dir).decisions("move")
    ops = RunFolder(run_dir).profile / "learner_top_ops.txt"
    lines = [
        f"# mp_rl profile: {args.config}, {args.seconds:g} s", "", f"Run folder: `{run_dir}`", "",
        "## Figures (steady part: after the first fifth of the run)", "",
        "| env steps/s | samples/s | updates/s | learner waiting for data | actors blocked by the rate limiter |",
        "| --- | --- | --- | --- | --- |",
        f"| {mean('env_steps_per_s'):,.0f} | {mean('samples_per_s'):,.0f} | {mean('updates_per_s'):,.0f} | "
        f"{wait:.0%} of its time | {blocked:.0%} of an actor's time (mean over actors) |", "",
        "## Where the time goes, per process", "",
        "| member | CPU % (psutil, mean) | share of py-spy samples (%) |", "| --- | --- | --- |", *rows, "",
        "## What the monitor saw", "", *(bottlenecks or ["- monitor off or not ready"]), "",
        *(f"- move at {d['time']:.0f} s: {d['knob']} {d['old']:,} -> {d['new']:,} ({d['rule']})" for d in moves), "",
        "## Learner operators by self time (torch.profiler)", "",
        *(["```", ops.read_text().rstrip(), "```"] if ops.exists() else ["not recorded (pass --torch-profiler)"]),
        "", "## Files", "", "- `timeline.json`, `throughput.png`: rates over time",
        "- `flamegraph.svg`: py-spy, the whole process tree" if (Path(args.out) / "flamegraph.svg").exists() else "",
        "- `profile/learner_trace.json` (chrome://tracing, Perfetto), `profile/tensorboard/`" if ops.exists() else "",
        *(f"- note: {n}" for n in notes if n),
    ]  # fmt: skip
    return "\n".join(line for line in lines if line is not None) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="benchmarks.profile", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/cartpole.yaml")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--py-spy", action="store_true", help="flame graph of the whole process tree")
    ap.add_argument("--torch-profiler", action="store_true", help="trace the learner over a scheduled window")
    ap.add_argument("--tick", type=float, default=0.5, help="seconds between timeline samples")
    ap.add_argument("--out", default="bench_out/profile")
    ap.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("flamegraph.svg", "report.md", "timeline.json", "throughput.png"):
        (out / stale).unlink(missing_ok=True)
    proc, run_dir = start_run(args, out)
    spy, note = None, ""
    if args.py_spy:
        wait_titled(run_dir.name, {"learner", "actor-0"})
        spy, note = start_pyspy(proc.pid, args.seconds + 5, out)
    timeline, first, last = sample(run_dir, proc, args.tick)
    proc.wait(timeout=120)
    notes = [finish_pyspy(spy, note, out) if args.py_spy else ""]
    if args.torch_profiler and RunFolder(run_dir).profile.exists():
        shutil.copytree(RunFolder(run_dir).profile, out / PROFILE, dirs_exist_ok=True)
    (out / "timeline.json").write_text(json.dumps({"config": args.config, "run_dir": str(run_dir),
                                                   "timeline": timeline}) + "\n")  # fmt: skip
    notes.append(plot(out / "throughput.png", timeline))
    names = {m["pid"]: member_name(m) for x in timeline for m in x["members"]}
    text = report(args, run_dir, timeline, first, last, pyspy_shares(out / "flamegraph.svg", names), notes)
    (out / "report.md").write_text(text)
    for n in notes:
        if n:
            print(f"benchmarks.profile: {n}")
    print(f"benchmarks.profile: wrote {out}/report.md (run {run_dir.name}, exit code {proc.returncode})")
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
