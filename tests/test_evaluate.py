"""`python -m mp_rl.evaluate`: greedy returns of a run's checkpoint, a recorded video, one line on bad input."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from system_helpers import REPO, cli

pytestmark = pytest.mark.system  # every test here starts the real system


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """A short finished run on the small image env (it has an rgb_array renderer)."""
    runs = tmp_path_factory.mktemp("runs")
    done = cli("mp_rl.run", "--config", "configs/smoke.yaml", "env.id=mp_rl.testing:GridEnv",
               "run.total_env_steps=3000", f"run.runs_dir={runs}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run_dir,) = runs.iterdir()
    return run_dir


def test_greedy_returns_of_the_best_or_final_checkpoint(grid_run):
    for which in ("best", "final"):
        done = cli("mp_rl.evaluate", str(grid_run), "--checkpoint", which, "--episodes", "4", "--seed", "3")
        assert done.returncode == 0, done.stderr
        returns = done.stdout.splitlines()[0].removeprefix("returns: ").split()
        assert len(returns) == 4 and "over 4 episodes (seed 3)" in done.stdout


@pytest.mark.skipif(importlib.util.find_spec("moviepy") is None, reason="needs the video extra")
def test_a_video_of_the_episodes_is_recorded(grid_run, tmp_path):
    import imageio.v3 as iio

    video = tmp_path / "grid.mp4"
    done = cli("mp_rl.evaluate", str(grid_run), "--episodes", "2", "--video", str(video))
    assert done.returncode == 0 and f"video: {video}" in done.stdout, done.stderr
    frames = iio.imread(video)
    assert len(frames) >= 20 and frames.shape[1:3] == (48, 48)  # 2 episodes of 10 steps, 8 pixels a cell


def test_without_the_video_extra_it_is_one_line(grid_run, tmp_path):
    code = ("import sys, runpy; sys.modules['moviepy'] = None; "
            f"sys.argv = ['mp_rl.evaluate', '{grid_run}', '--video', '{tmp_path / 'v.mp4'}']; "
            "runpy.run_module('mp_rl.evaluate', run_name='__main__')")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "mp_rl.evaluate: --video needs the video extra: pip install -e '.[video]'"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--episodes", "0"], "mp_rl.evaluate: --episodes must be 1..10000, got 0"),
        (["--video", "out.avi"], "mp_rl.evaluate: --video out.avi: needs a .mp4 file in an existing folder"),
        (["--video", "/no/such/folder/out.mp4"], "mp_rl.evaluate: --video /no/such/folder/out.mp4: needs"),
        (["--checkpoint", "/no/such.pt"], "mp_rl.evaluate: --checkpoint /no/such.pt: no such file"),
        (["--checkpoint", "GARBAGE"], "mp_rl.evaluate: checkpoint "),
        (["--episodes", "many"], "mp_rl.evaluate: argument --episodes: invalid int value: 'many'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(grid_run, tmp_path, args, line):
    if "GARBAGE" in args:
        garbage = tmp_path / "garbage.pt"
        garbage.write_bytes(b"not a checkpoint")
        args = ["--checkpoint", str(garbage)]
    done = cli("mp_rl.evaluate", str(grid_run), *args)
    assert done.returncode == 2 and done.stderr.startswith(line), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    done = cli("mp_rl.evaluate", str(tmp_path))
    assert (
        done.returncode == 2
        and done.stderr.strip() == f"mp_rl.evaluate: {tmp_path}: not an mp_rl run folder (no config.yaml)"
    )
