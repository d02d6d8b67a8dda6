"""The training report: a PNG and a text summary from a run folder's files, for live and ended runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from system_helpers import REPO

from mp_rl import report


def fake_run(folder, snapshots: int = 30, moves: bool = True):
    """A run folder as a run leaves it: config, metrics, learner stats, monitor decisions, summary."""
    folder.mkdir()
    (folder / "config.yaml").write_text("run: {name: fake}\n")
    t0 = 1_800_000_000.0
    with open(folder / "metrics.jsonl", "w") as f:
        for i in range(snapshots):
            f.write(json.dumps({"unix_time": t0 + 5 * i, "env_steps": 1000 * i, "updates": 100 * i, "episodes": 10 * i,
                                "env_steps_per_s": 200.0, "updates_per_s": 20.0, "samples_per_s": 640.0,
                                "return_mean": float(i), "return_p10": i - 2.0, "return_p90": i + 2.0,
                                "eval_return": None if i < 10 else float(i // 10 * 10), "actors": 1 + (i > 15),
                                "batch_size": 64, "replay_capacity": 10_000, "cpu_busy": 0.5, "ram_used": 0.3,
                                "gpu_util": None, "bottleneck": "learner"}) + "\n")  # fmt: skip
        f.write('{"unix_time": 18000')  # a line a live run is still writing
    with open(folder / "learner.jsonl", "w") as f:
        for i in range(1, 20):
            f.write(json.dumps({"unix_time": t0 + 7 * i, "updates": 150 * i, "loss": 1 / i, "q_mean": 0.1 * i}) + "\n")
        f.write(
            json.dumps(
                {
                    "unix_time": t0 + 60,
                    "updates": 1300,
                    "width": 200,
                    "width_was": 100,
                    "arch": [2000, 64],
                    "q_change": 1e-7,
                }
            )
            + "\n"
        )  # the network grew (learner.grow)
    if moves:
        move = {"kind": "move", "unix_time": t0 + 80, "knob": "actors", "old": 1, "new": 2, "rule": "learner starved"}
        (folder / "decisions.jsonl").write_text(json.dumps(move) + "\n" + json.dumps({"kind": "declined"}) + "\n")
    (folder / "summary.json").write_text(json.dumps({"eval_return_mean": 31.5, "eval_episodes": 20}))
    return folder


def test_a_run_folder_gives_a_png_and_a_summary_with_the_monitors_moves(tmp_path):
    run = fake_run(tmp_path / "run")
    png, text = report.write(run)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    summary = text.read_text()
    assert "final greedy evaluation: 31.5 over 20 episodes" in summary
    assert "monitor moves: 1" in summary and "actors 1 -> 2  (learner starved)" in summary
    assert "network 100 % -> 200 % of its widths at update 1,300" in summary
    assert "loss 0.0526" in summary and "bottleneck most of the time: learner" in summary


def test_a_live_run_without_a_summary_or_learner_stats_still_reports(tmp_path):
    run = fake_run(tmp_path / "run", snapshots=3, moves=False)
    (run / "summary.json").unlink()
    (run / "learner.jsonl").unlink()
    png, text = report.write(run, tmp_path / "elsewhere")
    assert png.parent == tmp_path / "elsewhere" and "monitor moves: 0" in text.read_text()


@pytest.mark.system
def test_the_cli_says_one_line_for_a_folder_with_nothing_to_report(tmp_path):
    cases = [(tmp_path / "missing", "not an mp_rl run folder")]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text("{}\n")
    cases.append((empty, "no metrics yet"))
    for folder, why in cases:
        done = subprocess.run([sys.executable, "-m", "mp_rl.report", str(folder)], cwd=REPO, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 2 and done.stderr.strip() == f"mp_rl.report: {folder}: {why}" + (
            " (metrics.jsonl is empty or missing)" if why == "no metrics yet" else ""
        ), done.stderr
