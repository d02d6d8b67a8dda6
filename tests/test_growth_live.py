"""A live run's network grows by hand while three actors act (its own and two attached from another
terminal): every actor goes on with the new layout without a restart, the run stops cleanly, and its
grown network is evaluated and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from system_helpers import REPO, wait_for

from mp_rl.shm.manifest import SharedRun

pytestmark = pytest.mark.system  # the real CLI, as subprocesses


@pytest.mark.timeout(300)
def test_a_live_network_grows_and_its_actors_follow_then_it_evaluates_and_resumes(live):
    run = live("--config", "configs/smoke.yaml", "learner.grow=auto", "run.total_env_steps=1000000000",
               "run.wall_time_s=240", "actors.sync_every=20")  # fmt: skip
    run.wait_members({"learner", "actor-0"})
    cmd = [sys.executable, "-m", "mp_rl.attach", str(run.run_dir), "--actors", "2"]
    more = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    wait_for(lambda: run.metrics() and run.metrics()[-1]["updates"] > 20, 120, "the learner training")
    grow = subprocess.run([sys.executable, "-m", "mp_rl.tools.grow", str(run.run_dir), "--wider"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert grow.returncode == 0, grow.stderr
    stats = run.run_dir / "learner.jsonl"

    def grown() -> dict | None:
        lines = [json.loads(x) for x in stats.read_text().splitlines()] if stats.exists() else []
        return next((x for x in lines if "width" in x), None)

    resize = wait_for(grown, 60, "the learner to widen its network")
    assert (resize["width_was"], resize["width"], resize["q_change"]) == (100, 200, pytest.approx(0, abs=1e-5))
    with SharedRun.attach(run.run_dir) as shared:
        assert shared.board.latest_shape()[1:] == tuple(resize["arch"])
        after = shared.board.version  # published in the new layout: an actor holds it only once rebuilt

        def followed() -> bool:
            actors = [m for m in shared.control.live_members() if m["kind"] == "actor"]
            return len(actors) == 3 and all(m["weights"] >= after for m in actors)

        wait_for(followed, 90, "all three actors to hold weights of the new layout")
    os.killpg(more.pid, signal.SIGINT)  # Ctrl-C in the attach's terminal: its actors leave
    assert more.wait(timeout=60) == 0, more.communicate()[1]
    rc, _, err = run.stop(timeout=60)
    assert rc == 0, err
    assert set(run.members()) == set()  # no actor crashed and none was restarted: all stopped with the run
    log = (run.run_dir / "logs" / "supervisor.log").read_text()
    assert "restart" not in log, log
    ev = subprocess.run([sys.executable, "-m", "mp_rl.evaluate", str(run.run_dir), "--checkpoint", "final",
                         "--episodes", "2"], cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    steps = json.loads((run.run_dir / "summary.json").read_text())["env_steps"]
    again = subprocess.run([sys.executable, "-m", "mp_rl.run", "--resume", str(run.run_dir),
                            f"run.total_env_steps={steps + 2000}"], cwd=REPO, capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "resumed from" in (run.run_dir / "logs" / "learner.log").read_text()
