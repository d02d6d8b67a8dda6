"""The status line and metrics.jsonl: rates from counter deltas, recent returns and their spread, replay fill,
actor lag, and the machine (CPU, RAM, GPU) as the training report plots it."""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

from mp_rl.monitor.sources import MachineSource
from mp_rl.runfolder import RunFolder
from mp_rl.shm.manifest import SharedRun
from mp_rl.system.telemetry import Rates, weight_lag


class Metrics:
    """Turns two looks at the shared counters into rates (`telemetry`); keeps recent episode returns."""

    def __init__(self, shared: SharedRun, machine=None):
        self.shared = shared
        self.machine = machine or MachineSource()
        self.returns: deque[float] = deque(maxlen=100)
        self.episode_cursor = 0
        self.rates = Rates.of(shared)
        self.started = time.monotonic()

    def snapshot(self) -> dict:
        rows, self.episode_cursor = self.shared.control.episodes_since(self.episode_cursor)
        self.returns.extend(rows[:, 0].tolist())
        delta, counts = self.rates.update(), self.rates.last
        members = self.shared.control.live_members()
        actors = [m for m in members if m["kind"] == "actor"]
        ring = self.shared.ring
        return {
            "time": round(time.monotonic() - self.started, 3),
            "unix_time": round(time.time(), 3),
            **{k: counts[k] for k in ("env_steps", "updates", "episodes", "inserts", "samples")},
            **{k: v or 0.0 for k, v in delta.rates().items()},
            "return_mean": round(float(np.mean(self.returns)), 2) if self.returns else None,
            **spread(self.returns),
            "replay_size": ring.size(),
            "replay_capacity": ring.capacity,
            "actors": len(actors),
            "batch_size": self.shared.control.target("batch_size"),
            "network_width": self.shared.control.target("width"),  # percent of the config's widths
            "attached": sum(m["attached"] for m in actors),
            "ray": sum(m["remote"] for m in actors),
            "weight_version": self.shared.board.version,
            "weight_lag": weight_lag(self.shared.board.version, members),
            "learner_wait_frac": round(delta.fraction("learner_wait_ns") or 0.0, 3),
            **monitor_view(self.shared.control.read_snapshot()),
            **machine_view(self.machine.sample(time.monotonic())),
        }


def spread(returns) -> dict:
    """The 10th and 90th percentiles of recent episode returns (the report's band)."""
    if not returns:
        return {"return_p10": None, "return_p90": None}
    p10, p90 = np.percentile(np.asarray(returns), [10, 90])
    return {"return_p10": round(float(p10), 2), "return_p90": round(float(p90), 2)}


def machine_view(m: dict) -> dict:
    """CPU (of what this run may use), RAM in use, GPU utilisation and memory: fractions, None when unknown."""
    vram = m.get("vram_used") / m["vram_total"] if m.get("vram_used") is not None and m.get("vram_total") else None
    ram = None if m.get("ram_headroom") is None else round(1 - m["ram_headroom"], 4)
    return {"cpu_busy": m.get("cpu_busy"), "ram_used": ram, "gpu_util": m.get("gpu_util"),
            "vram_used": None if vram is None else round(vram, 4)}  # fmt: skip


def monitor_view(snap: dict | None) -> dict:
    """The monitor's word for the status line: the bottleneck it sees and its last move."""
    if snap is None:
        return {"bottleneck": None, "last_decision": None}
    last = snap.get("last_decision")
    move = None if last is None else f"{last['knob']} {last['old']:,}->{last['new']:,}"
    return {"bottleneck": snap.get("bottleneck"), "last_decision": move}


def format_line(m: dict) -> str:
    ret = "—" if m["return_mean"] is None else f"{m['return_mean']:.1f}"
    return (
        f"steps {m['env_steps']:,} ({m['env_steps_per_s']:,.0f}/s) | updates {m['updates']:,} "
        f"({m['updates_per_s']:,.0f}/s) | samples {m['samples_per_s']:,.0f}/s | return {ret} | "
        f"replay {m['replay_size']:,}/{m['replay_capacity']:,} | actors {m['actors']}"
        + attached_note(m)
        + f" | lag {m['weight_lag']}"
        + (f" | bottleneck {m['bottleneck']}" if m.get("bottleneck") else "")
        + (f" | last move {m['last_decision']}" if m.get("last_decision") else "")
    )


def attached_note(m: dict) -> str:
    """` (3 attached)`, ` (3 attached, 2 on ray)`, or nothing."""
    if not m.get("attached"):
        return ""
    return f" ({m['attached']} attached" + (f", {m['ray']} on ray)" if m.get("ray") else ")")


def toward_stop(m: dict, total_steps: int, wall_s: float | None) -> tuple[str, float, float]:
    """(what, done, total) of the stop condition nearest to being met: env steps, or wall time."""
    if wall_s and m["time"] / wall_s > m["env_steps"] / total_steps:
        return "wall time (s)", min(m["time"], wall_s), wall_s
    return "env steps", min(m["env_steps"], total_steps), total_steps


class StatusOutput:
    """On a terminal, rich's progress bar toward the stop condition (with its ETA, the best evaluation so far
    and the bottleneck) above the live status line; plain lines otherwise. Every snapshot also goes to
    metrics.jsonl. `console` stands in for the terminal (tests)."""

    def __init__(self, run_dir: Path, run_id: str, stop: tuple[int, float | None] = (0, None), console=None):
        self.metrics_file = open(RunFolder(run_dir).metrics_file, "a", buffering=1)  # noqa: SIM115 (closed in close())
        self.run_id, self.stop, self.best = run_id, stop, None
        self.live = self.progress = None
        if console is not None or sys.stdout.isatty():
            from rich.console import Console
            from rich.live import Live
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

            self.console = console or Console()
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(), console=self.console)  # fmt: skip
            self.task = self.progress.add_task("starting", total=None)
            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.start()
        self.tb = None
        self.terminal_gone = False

    def enable_tensorboard(self, run_dir: Path) -> bool:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return False
        self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        return True

    def show(self, m: dict, extra: str = "") -> None:
        self.metrics_file.write(json.dumps(m) + "\n")
        line = format_line(m) + (f" | {extra}" if extra else "")
        if isinstance(m.get("eval_return"), int | float):
            self.best = m["eval_return"] if self.best is None else max(self.best, m["eval_return"])
        if self.live is not None:
            self._render(m, line)
        else:
            self._print(line)
        if self.tb is not None:
            for key, value in m.items():
                if isinstance(value, int | float) and key != "time":
                    self.tb.add_scalar(key, value, m["env_steps"])

    def _render(self, m: dict, line: str) -> None:
        """The progress bar toward the stop condition, then the status line."""
        from rich.console import Group
        from rich.text import Text

        what, done, total = toward_stop(m, *self.stop) if self.stop[0] else ("env steps", m["env_steps"], None)
        best = "—" if self.best is None else f"{self.best:.1f}"
        neck = f" | bottleneck {m['bottleneck']}" if m.get("bottleneck") else ""
        label = f"[bold]mp_rl[{self.run_id}][/bold] {what} | best eval {best}{neck}"
        self.progress.update(self.task, completed=done, total=total, description=label)
        self.live.update(Group(self.progress, Text(line)))

    def say(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text)
        else:
            self._print(text)

    def _print(self, text: str) -> None:
        """A closed terminal or pipe (`| head`) must never stop the run, or its cleanup."""
        if self.terminal_gone:
            return
        try:
            print(text, flush=True)
        except OSError:
            self.terminal_gone = True

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
        if self.tb is not None:
            self.tb.close()
        self.metrics_file.close()
