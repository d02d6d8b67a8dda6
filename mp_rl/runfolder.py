"""A run's folder: the one place its file names live, how its JSON-lines logs are read, and its steady part.

runs/<date>-<time>-<name>/
  config.yaml             the resolved config (`--resume` and `evaluate` read it back)
  manifest.json           the shared segments and their layouts, for processes that attach
  hardware_profile.json   the machine the run started on
  metrics.jsonl           a status line every `logging.status_every_s`
  learner.jsonl           loss, mean Q and mean |TD|, every `learner.stats_every` updates
  decisions.jsonl         the monitor's moves and undos, each with its reason
  autotune.json           the auto-tuner's search (`run.autotune`)
  summary.json            the final figures, written at the stop
  training_report.png     the report (`python -m mp_rl.report`), and training_summary.txt
  checkpoints/            update-<n>.pt (the newest two), best.pt (best greedy evaluation), final.pt
  logs/                   one log per process
  profile/                torch.profiler traces (`logging.torch_profile`)
  replay/                 the replay's live window saved at a clean stop, for `--resume`
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CONFIG, MANIFEST, HARDWARE = "config.yaml", "manifest.json", "hardware_profile.json"
METRICS, LEARNER_STATS, DECISIONS = "metrics.jsonl", "learner.jsonl", "decisions.jsonl"
AUTOTUNE, SUMMARY = "autotune.json", "summary.json"
CHECKPOINTS, LOGS, PROFILE, REPLAY = "checkpoints", "logs", "profile", "replay"
REPORT_PNG, REPORT_TEXT = "training_report.png", "training_summary.txt"
BEST, FINAL = "best.pt", "final.pt"
STEADY_AFTER = 0.2  # the steady part of a run: after the first fifth of its time (start-up, warm-up)


def read_jsonl(path: Path, last: int | None = None) -> list[dict]:
    """The intact object lines of a JSON-lines file (a live run may be writing its last one); with
    `last`, of its last `last` lines only (read from the end: a live view polls long files)."""
    if not path.exists():
        return []
    out = []
    for line in _tail(path, last) if last else path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def _tail(path: Path, lines: int, chunk: int = 1 << 16) -> list[str]:
    """The last `lines` lines of a text file, read backwards in chunks."""
    with open(path, "rb") as f:
        end = f.seek(0, 2)
        data, at = b"", end
        while at > 0 and data.count(b"\n") <= lines:
            start = max(0, at - chunk)
            f.seek(start)
            data, at = f.read(at - start) + data, start
    return data.decode(errors="replace").splitlines()[-lines:]


def steady(lines: list[dict], key: str = "time") -> list[dict]:
    """The lines after the first fifth of the run (by `key`, seconds since the start); all of them
    when there are too few to cut. The one definition the report, the benchmarks and the profile use.

    >>> [m["time"] for m in steady([{"time": t} for t in range(0, 50, 5)])]
    [10, 15, 20, 25, 30, 35, 40, 45]
    """
    if not lines:
        return []
    start, end = lines[0][key], lines[-1][key]
    after = start + STEADY_AFTER * (end - start)
    return [m for m in lines if m[key] >= after] or lines


@dataclass(frozen=True)
class RunFolder:
    """`RunFolder(path)`: the paths of a run's files, and its logs read once each."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    config = property(lambda self: self.path / CONFIG)
    hardware = property(lambda self: self.path / HARDWARE)
    metrics_file = property(lambda self: self.path / METRICS)
    learner_file = property(lambda self: self.path / LEARNER_STATS)
    decisions_file = property(lambda self: self.path / DECISIONS)
    autotune = property(lambda self: self.path / AUTOTUNE)
    summary_file = property(lambda self: self.path / SUMMARY)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    logs = property(lambda self: self.path / LOGS)
    profile = property(lambda self: self.path / PROFILE)
    manifest = property(lambda self: self.path / MANIFEST)
    replay = property(lambda self: self.path / REPLAY)
    best = property(lambda self: self.path / CHECKPOINTS / BEST)
    final = property(lambda self: self.path / CHECKPOINTS / FINAL)

    def is_run(self) -> bool:
        """A folder a run has started in (its config is written first)."""
        return self.path.is_dir() and self.config.is_file()

    def log(self, member: str) -> Path:
        return self.path / LOGS / f"{member}.log"

    def metrics(self) -> list[dict]:
        """The status lines, in order (one without a clock time is not a status line)."""
        return [m for m in read_jsonl(self.metrics_file) if isinstance(m.get("unix_time"), (int, float))]

    def learner_stats(self) -> list[dict]:
        return read_jsonl(self.learner_file)

    def decisions(self, kind: str | None = None, last: int | None = None) -> list[dict]:
        """The monitor's decisions (`kind`: only "move", or only "undo"), of its last `last` lines."""
        return [d for d in read_jsonl(self.decisions_file, last) if kind is None or d.get("kind") == kind]

    def summary(self) -> dict:
        """The final figures, {} before the stop or when the file is damaged."""
        try:
            s = json.loads(self.summary_file.read_text())
        except (OSError, ValueError):
            return {}
        return s if isinstance(s, dict) else {}
