"""What a terminal shows: rich's progress toward the stop condition, with its ETA, the best evaluation
and the bottleneck, above the status line; plain lines stay plain when stdout is not a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from mp_rl.system.progress import StatusOutput, format_line, toward_stop

SNAP = {"time": 30.0, "env_steps": 500, "env_steps_per_s": 16.7, "updates": 40, "updates_per_s": 1.3,
        "samples_per_s": 42.0, "return_mean": 12.5, "replay_size": 500, "replay_capacity": 4096, "actors": 1,
        "weight_lag": 2, "bottleneck": "learner: actors are held back", "eval_return": 20.0}  # fmt: skip


def test_progress_follows_the_stop_condition_nearest_to_being_met():
    assert toward_stop(SNAP, 1000, None) == ("env steps", 500, 1000)
    assert toward_stop(SNAP, 1000, 40.0) == ("wall time (s)", 30.0, 40.0)
    assert toward_stop({**SNAP, "time": 90.0}, 1000, 60.0) == ("wall time (s)", 60.0, 60.0)


def test_a_terminal_gets_a_progress_bar_with_eta_best_evaluation_and_bottleneck(tmp_path):
    screen = io.StringIO()
    out = StatusOutput(tmp_path, "run-1", (1000, None), console=Console(file=screen, force_terminal=True, width=220))
    out.show(SNAP)
    out.show({**SNAP, "env_steps": 600, "eval_return": 15.0})  # the best stays the best
    out.close()
    text = screen.getvalue()
    assert "env steps" in text and "60%" in text and "ETA" in text
    assert "best eval 20.0" in text and "bottleneck learner: actors are held back" in text
    assert "steps 600 (17/s)" in text


def test_without_a_terminal_the_lines_stay_plain(tmp_path, capsys):
    out = StatusOutput(tmp_path, "run-1", (1000, None))
    out.show(SNAP)
    out.close()
    assert capsys.readouterr().out.strip() == format_line(SNAP)
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
