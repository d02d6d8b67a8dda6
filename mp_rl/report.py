"""`python -m mp_rl.report runs/<id> [--out DIR]`: the training report of a run, live or ended.

One PNG (`training_report.png`) and a text summary beside it (`training_summary.txt`), written into the run
folder (or `--out`). They come from what the run leaves: `metrics.jsonl` (the status line's snapshots),
`learner.jsonl` (loss and mean Q), `decisions.jsonl` (the monitor's moves, marked on every timeline) and
`summary.json`. Every run's supervisor writes them when it stops.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mp_rl import runfolder
from mp_rl.cli import Parser, fail, owner_only
from mp_rl.runfolder import METRICS, REPORT_PNG, REPORT_TEXT, RunFolder

PNG, TEXT = REPORT_PNG, REPORT_TEXT


class ReportError(ValueError):
    """Not a run folder, or one with nothing to report yet; str() is the one line to show."""


def load(run_dir: Path) -> dict:
    folder = RunFolder(run_dir)
    if not folder.is_run():
        raise ReportError(f"{run_dir}: not an mp_rl run folder")
    metrics = folder.metrics()
    if not metrics:
        raise ReportError(f"{run_dir}: no metrics yet ({METRICS} is empty or missing)")
    moves = [d for d in folder.decisions("move") if "unix_time" in d]
    return {"run": run_dir.name, "metrics": metrics, "learner": folder.learner_stats(), "moves": moves,
            "summary": folder.summary()}  # fmt: skip


def column(rows: list[dict], key: str) -> np.ndarray:
    """A float column, NaN where a snapshot has no value."""
    return np.array([r[key] if isinstance(r.get(key), (int, float)) else np.nan for r in rows], dtype=float)


def new_evaluations(rows: list[dict]) -> np.ndarray:
    """Where a snapshot shows an evaluation result the previous one did not (each result is repeated until
    the next evaluation)."""
    ev = column(rows, "eval_return")
    before = np.concatenate([[np.nan], ev[:-1]])
    return ~np.isnan(ev) & ((ev != before) | np.isnan(before))


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, t0 = data["metrics"], data["metrics"][0]["unix_time"]
    minutes = (column(m, "unix_time") - t0) / 60
    steps = column(m, "env_steps")
    fig, ax = plt.subplots(2, 3, figsize=(17, 9.5))
    fig.suptitle(f"mp_rl training report: {data['run']}", fontsize=13)
    evals = new_evaluations(m)
    final = data["summary"].get("eval_return_mean")
    for a, x, label in ((ax[0, 0], steps, "env steps"), (ax[0, 1], minutes, "wall time (min)")):
        mean, lo, hi = (column(m, k) for k in ("return_mean", "return_p10", "return_p90"))
        a.fill_between(x, lo, hi, alpha=0.25, color="tab:blue", label="episodes, 10th–90th percentile")
        a.plot(x, mean, color="tab:blue", label="episodes, mean of the last 100")
        a.plot(x[evals], column(m, "eval_return")[evals], "o-", color="tab:red", ms=4, label="greedy evaluation")
        if isinstance(final, (int, float)):
            a.plot(x[-1:], [final], "*", color="tab:red", ms=12, label="final greedy evaluation")
        a.set(xlabel=label, ylabel="return", title=f"return against {label}")
        a.legend(fontsize=8, loc="lower right")
    learner = [r for r in data["learner"] if "loss" in r]
    a = ax[0, 2]
    if learner:
        a.plot(column(learner, "updates"), column(learner, "loss"), color="tab:purple", label="loss")
        a.set(xlabel="updates", ylabel="loss", title="loss and mean Q")
        a.set_yscale("log")
        q = a.twinx()
        q.plot(column(learner, "updates"), column(learner, "q_mean"), color="tab:green", label="mean Q")
        q.set_ylabel("mean Q of the batch's actions")
        a.legend(handles=a.lines + q.lines, fontsize=8, loc="upper left")
    else:
        a.text(0.5, 0.5, "no learner.jsonl yet", ha="center", transform=a.transAxes)
    a = ax[1, 0]
    a.plot(minutes, column(m, "env_steps_per_s"), color="tab:blue", label="env steps/s")
    a.set(xlabel="wall time (min)", ylabel="env steps/s", title="throughput")
    u = a.twinx()
    u.plot(minutes, column(m, "updates_per_s"), color="tab:orange", label="updates/s")
    u.set_ylabel("updates/s")
    a.legend(handles=a.lines + u.lines, fontsize=8, loc="lower right")
    a = ax[1, 1]
    for key, label in (("cpu_busy", "CPU (of what the run may use)"), ("ram_used", "RAM in use"),
                       ("gpu_util", "GPU utilisation"), ("vram_used", "GPU memory")):  # fmt: skip
        y = column(m, key)
        if not np.isnan(y).all():
            a.plot(minutes, 100 * y, label=label)
    a.set(xlabel="wall time (min)", ylabel="%", ylim=(0, 105), title="machine")
    a.legend(fontsize=8, loc="lower right")
    a = ax[1, 2]
    live = slice(None, -1) if len(m) > 1 and m[-1].get("actors") == 0 else slice(None)  # not the stopped state
    for key, label in (("actors", "actors"), ("batch_size", "batch size"), ("replay_capacity", "replay capacity"),
                       ("network_width", "network width %")):  # fmt: skip
        y = column(m, key)[live]
        if np.isnan(y).all():
            continue  # a run folder from before that knob
        top = np.nanmax(y)
        a.step(minutes[live], y / max(top, 1), where="post", label=f"{label} (max {top:,.0f})")
    a.set(xlabel="wall time (min)", ylabel="fraction of its maximum", ylim=(0, 1.05), title="knobs")
    a.legend(fontsize=8, loc="lower right")
    for mv in data["moves"]:  # the monitor's moves, on every wall-time axis
        x = (mv["unix_time"] - t0) / 60
        for a in (ax[0, 1], ax[1, 0], ax[1, 1], ax[1, 2]):
            a.axvline(x, color="grey", ls=":", lw=1)
        ax[1, 2].annotate(f"{mv['knob']} {mv['old']:,}→{mv['new']:,}", (x, 1.0), rotation=90, fontsize=7,
                          va="top", ha="right", color="grey")  # fmt: skip
    for r in resizes(data):  # the network growing (or shrinking) in the learner, where it happened
        x = (r["unix_time"] - t0) / 60
        for a in (ax[0, 1], ax[1, 0]):
            a.axvline(x, color="tab:green", ls="--", lw=1.2)
        ax[0, 1].annotate(f"network {r['width_was']}→{r['width']} %", (x, 0.02), xycoords=("data", "axes fraction"),
                          rotation=90, fontsize=7, va="bottom", ha="right", color="tab:green")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def resizes(data: dict) -> list[dict]:
    """The learner's network resizes (`learner.grow`), from its stats lines."""
    return [r for r in data["learner"] if "width" in r and isinstance(r.get("unix_time"), (int, float))]


def summary_text(data: dict) -> str:
    m, s = data["metrics"], data["summary"]
    last, minutes = m[-1], (m[-1]["unix_time"] - m[0]["unix_time"]) / 60
    steady = runfolder.steady(m, "unix_time")  # a resumed run's `time` starts again from 0
    med = lambda k: np.nanmedian(column(steady, k)) if not np.isnan(column(steady, k)).all() else float("nan")  # noqa: E731
    evals = column(m, "eval_return")
    best = s.get("best_eval_return", np.nanmax(evals) if not np.isnan(evals).all() else None)
    gpu = "—" if np.isnan(med("gpu_util")) else f"{100 * med('gpu_util'):.0f} %"
    lines = [
        f"run {data['run']}: {minutes:.1f} min, {last.get('env_steps', 0):,} env steps, {last.get('updates', 0):,}"
        f" updates, {last.get('episodes', 0):,} episodes",
        f"final greedy evaluation: {s.get('eval_return_mean', '—')} over {s.get('eval_episodes', '—')} episodes;"
        f" best {best if best is not None else '—'}",
        f"episode return, last 100: mean {last.get('return_mean')}, 10th–90th percentile "
        f"{last.get('return_p10')}..{last.get('return_p90')}",
        f"steady rates (medians after the first fifth): {med('env_steps_per_s'):,.0f} env steps/s, "
        f"{med('updates_per_s'):,.0f} updates/s, {med('samples_per_s'):,.0f} samples/s",
        f"machine (medians): CPU {100 * med('cpu_busy'):.0f} %, RAM in use {100 * med('ram_used'):.0f} %, GPU {gpu}",
    ]
    for r in resizes(data):
        lines.append(f"network {r['width_was']} % -> {r['width']} % of its widths at update {r.get('updates', 0):,} "
                     f"(largest Q change {r.get('q_change', 0):.2g})")  # fmt: skip
    if [r for r in data["learner"] if "loss" in r]:
        lr = [r for r in data["learner"] if "loss" in r][-1]
        lines.append(f"learner at update {lr.get('updates', 0):,}: loss {lr.get('loss')}, mean Q {lr.get('q_mean')}")
    bottlenecks = [r.get("bottleneck") for r in steady if r.get("bottleneck")]
    if bottlenecks:
        top = max(set(bottlenecks), key=bottlenecks.count)
        lines.append(f"bottleneck most of the time: {top} ({bottlenecks.count(top)} of {len(steady)} snapshots)")
    lines.append(f"monitor moves: {len(data['moves'])}")
    for mv in data["moves"]:
        at = (mv["unix_time"] - m[0]["unix_time"]) / 60
        lines.append(f"  {at:5.1f} min  {mv['knob']} {mv['old']:,} -> {mv['new']:,}  ({mv.get('rule', '')})")
    return "\n".join(lines) + "\n"


def write(run_dir: Path, out: Path | None = None) -> tuple[Path, Path]:
    """Write the PNG and the text summary; returns their paths. ReportError when there is nothing to report."""
    data = load(Path(run_dir))
    out = Path(out or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot(data, out / PNG)
    (out / TEXT).write_text(summary_text(data))
    return out / PNG, out / TEXT


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="mp_rl.report", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--out", default=None, help="folder for the PNG and the summary (default: the run folder)")
    args = ap.parse_args(argv)
    if args.out is None:  # into the run folder, owner-only as the rest of it; --out keeps the user's umask
        owner_only()
    try:
        png, text = write(Path(args.run_dir), Path(args.out) if args.out else None)
    except (ReportError, OSError) as exc:
        return fail("mp_rl.report", exc)
    print(text.read_text(), end="")
    print(f"report: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
