"""The benchmarks' training runs through the real CLI: a benchmark that is stopped stops its run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import psutil
import pytest

from mp_rl.shm.segment import Segment, list_segments
from tests.system_helpers import REPO, titled, wait_for

pytestmark = pytest.mark.system  # starts the real system


def test_a_benchmark_stopped_by_sigterm_stops_the_run_it_started(tmp_path):
    """The run lives in its own session (a Ctrl-C in the terminal must not reach it twice), so only
    the benchmark can stop it: `timeout` or `kill` on the benchmark must not leave a run training."""
    cmd = [sys.executable, "-m", "benchmarks.learning", "--envs", "cartpole", "--systems", "mp_rl", "--seeds", "1",
           "--budget-cartpole", "300", "--out", str(tmp_path)]  # fmt: skip
    bench = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs, run_id = tmp_path / "runs", None
    try:
        run_dir = wait_for(lambda: next((d for d in runs.glob("*") if (d / "manifest.json").exists()), None),
                           60, "the run folder")  # fmt: skip
        run_id = run_dir.name
        wait_for(lambda: "learner" in titled(run_id), 60, "the run's learner")
        bench.send_signal(signal.SIGTERM)
        bench.communicate(timeout=120)
        wait_for(lambda: not titled(run_id), 30, "the run's processes to end")
        assert not [s for s in list_segments() if run_id in s], "the run's segments outlived it"
        assert (run_dir / "checkpoints" / "final.pt").exists()  # stopped as by Ctrl-C: it kept its weights
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.communicate(timeout=10)
        if run_id:  # what a failing test must not leave behind: the run's processes, then its segments
            left = list(titled(run_id).values())
            for p in left:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(left, timeout=10)
            for name in (s for s in list_segments() if run_id in s):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(Segment.path(name))
