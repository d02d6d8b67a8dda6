"""Every path a run folder records resolves from the folder itself: attach, the tools, --resume and
cleanup work from any working directory, with relative and absolute run paths."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from system_helpers import REPO, wait_for

from mp_rl.shm.manifest import read_manifest

pytestmark = pytest.mark.system  # every test here starts the real system

CONFIG = str(REPO / "configs" / "smoke.yaml")
RUN = ["--config", CONFIG, "env.id=mp_rl.testing:CountingEnv", "run.total_env_steps=100000000",
       "run.wall_time_s=600", "eval.max_episode_steps=200"]  # fmt: skip


def tool(cwd, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(300)
def test_a_run_started_with_a_relative_runs_dir_is_attached_inspected_and_resumed_from_elsewhere(live, tmp_path):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    run = live(*RUN, cwd=home, runs_dir="runs")  # the folder the supervisor records is relative to `home`
    run.wait_members({"learner", "actor-0"})
    wait_for(lambda: run.metrics() and run.metrics()[-1]["replay_size"] > 0, 60, "rows in the ring")
    assert read_manifest(run.run_dir)["info"]["config"] == "config.yaml"  # relative to the run folder
    relative = os.path.relpath(run.run_dir, elsewhere)
    for path in (relative, str(run.run_dir)):
        status = tool(elsewhere, "mp_rl.tools.status", path, "--json", "--count", "1", "--interval", "0.2")
        assert status.returncode == 0 and json.loads(status.stdout)["run_id"] == run.run_id, status.stderr
        inspect = tool(elsewhere, "mp_rl.tools.inspect", path, "--json", "--rows", "1")
        assert inspect.returncode == 0 and json.loads(inspect.stdout)["rows_read"] > 0, inspect.stderr
        proc = subprocess.Popen([sys.executable, "-m", "mp_rl.attach", path], cwd=elsewhere, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        joined = lambda p=proc: any(k.endswith("(attached)") for k in run.members()) or p.poll() is not None  # noqa: E731
        wait_for(joined, 60, f"an actor attached from elsewhere with {path}")
        assert proc.poll() is None, proc.communicate()[1]
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "detached" in out, err
    listing = tool(elsewhere, "mp_rl.tools.cleanup")
    assert listing.returncode == 0 and run.run_id in listing.stdout and "alive" in listing.stdout
    rc, _, err = run.stop(timeout=60)
    assert rc == 0, err
    again = tool(elsewhere, "mp_rl.run", "--resume", relative, "run.wall_time_s=3", "eval.every_s=600", timeout=120)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in (run.run_dir / "logs" / "learner.log").read_text()
