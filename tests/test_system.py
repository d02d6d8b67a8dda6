"""The real CLI end to end: titles, metrics, checkpoints, signals, crashes, resume, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import psutil
import pytest
from system_helpers import REPO, readable_by_others, wait_for

from mp_rl.shm import reaper
from mp_rl.shm.segment import list_segments

pytestmark = pytest.mark.system  # every test here starts the real system

LONG = ["--config", "configs/smoke.yaml", "run.total_env_steps=100000000", "run.wall_time_s=300"]


def test_a_run_titles_its_processes_writes_metrics_and_checkpoints_and_stops_on_sigint(live):
    run = live(*LONG)
    members = run.wait_members({"supervisor", "learner", "actor-0"})
    assert members["supervisor"].pid == run.proc.pid
    wait_for(lambda: list((run.run_dir / "checkpoints").glob("update-*.pt")), 90, "a periodic checkpoint")
    wait_for(lambda: len(run.metrics()) >= 2, 30, "metrics lines")
    t0 = time.monotonic()
    rc, out, err = run.stop(timeout=30)
    assert rc == 0, err
    assert time.monotonic() - t0 < 5.0 + 10.0  # the stop deadline plus a final evaluation
    assert "stopping: sigint received" in out
    assert (run.run_dir / "checkpoints" / "final.pt").exists()
    assert not run.members() and run.run_id not in runs_in_shm()
    assert run.metrics()[-1]["updates"] > 0
    assert readable_by_others(run.run_dir) == []


def test_an_actor_killed_mid_run_is_restarted_and_the_run_goes_on(live):
    run = live(*LONG)
    first = run.wait_members({"actor-0", "learner"})["actor-0"]
    wait_for(lambda: run.metrics() and run.metrics()[-1]["env_steps"] > 0, 60, "env steps")
    first.kill()
    second = run.wait_replaced("actor-0", first)
    steps = run.metrics()[-1]["env_steps"]
    wait_for(lambda: run.metrics()[-1]["env_steps"] > steps + 500, 60, "steps after the restart")
    assert second.is_running()
    rc, _, err = run.stop(timeout=30)
    assert rc == 0, err


def test_a_crashing_env_is_restarted_and_a_hung_one_is_killed_and_restarted(live, tmp_path):
    env = {"MP_RL_HANG_MARKER": str(tmp_path / "hung"), "MP_RL_CRASH_MARKER": str(tmp_path / "crashed")}
    run = live("--config", "configs/smoke.yaml", "env.id=mp_rl.testing:CrashOnceCartPole",
               "run.total_env_steps=100000000", "run.heartbeat_timeout_s=4", env=env)  # fmt: skip
    first = run.wait_members({"actor-0"})["actor-0"]
    wait_for(lambda: (tmp_path / "crashed").exists(), 60, "the injected crash")
    run.wait_replaced("actor-0", first)
    rc, _, err = run.stop(timeout=30)
    assert rc == 0, err
    assert "injected env failure" in (run.run_dir / "logs" / "actor-0.log").read_text()

    hung = live("--config", "configs/smoke.yaml", "env.id=mp_rl.testing:HangOnceCartPole",
                "run.total_env_steps=100000000", "run.heartbeat_timeout_s=4", env=env)  # fmt: skip
    first = hung.wait_members({"actor-0"})["actor-0"]
    wait_for(lambda: (tmp_path / "hung").exists(), 60, "the env to hang")
    hung.wait_replaced("actor-0", first, timeout=30)
    assert not first.is_running()
    rc, _, err = hung.stop(timeout=30)
    assert rc == 0, err


def test_atari_without_the_extra_is_one_line_and_exit_2(tmp_path):
    """Whether or not ale-py is installed here, a machine without it must get one clear line."""
    code = (
        "import sys, runpy; sys.modules['ale_py'] = None; "  # import ale_py now raises ImportError
        f"sys.argv = ['mp_rl.run', '--config', 'configs/threadripper.yaml', 'run.runs_dir={tmp_path / 'runs'}']; "
        "runpy.run_module('mp_rl.run', run_name='__main__')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == "mp_rl.run: env.id 'ALE/Pong-v5' needs the atari extra: pip install -e '.[atari]'"
    assert not (tmp_path / "runs").exists()


def test_the_flagship_config_starts_on_a_small_box_clamped_and_says_so(live):
    pytest.importorskip("ale_py", reason="the atari extra is not installed")
    # It stops on its first steps, however long 16 Pong envs and the CNN take to start on this box.
    run = live("--config", "configs/threadripper.yaml", "run.total_env_steps=500", "run.wall_time_s=90",
               "replay.min_fill=1000")  # fmt: skip
    rc, out, err = run.wait(timeout=150)
    assert rc == 0, err
    assert "actors.count auto: starting" in out and "replay.capacity auto: starting at" in out
    assert run.metrics()[-1]["env_steps"] > 0


def test_a_closed_stdout_never_stops_the_cleanup(live):
    run = live("--config", "configs/smoke.yaml", "run.wall_time_s=6")
    run.proc.stdout.readline()
    run.proc.stdout.close()  # as `| head -1` would
    assert run.proc.wait(timeout=60) == 0
    assert run.run_id not in runs_in_shm() and not run.members()


def test_a_killed_learner_stops_the_run_with_an_error(live):
    run = live(*LONG)
    run.wait_members({"learner", "actor-0"})["learner"].kill()
    rc, out, _ = run.wait(timeout=60)
    assert rc == 1 and "error: learner exited" in out
    assert not run.members() and run.run_id not in runs_in_shm()


def runs_in_shm() -> set[str]:
    return {r.run_id for r in reaper.scan()}


def test_a_sigkilled_supervisor_takes_its_children_and_cleanup_removes_its_segments(live):
    run = live(*LONG)
    children = run.wait_members({"learner", "actor-0"})
    server = [p for p in psutil.Process(run.proc.pid).children() if "forkserver" in " ".join(p.cmdline())]
    assert len(server) == 1, "the members' fork server is not the supervisor's child"
    run.proc.kill()
    run.proc.wait(10)  # the server sees its pipe close and exits; the members' death signal follows
    _, alive = psutil.wait_procs([*children.values(), *server], timeout=5)
    assert not alive, f"children outlived the supervisor: {alive}"
    assert run.run_id in runs_in_shm()  # nobody unlinked them: that is cleanup's job
    # A run younger than reaper.STARTING_S counts as starting, whatever its owner: wait that out.
    wait_for(lambda: {r.run_id: r.state for r in reaper.scan()}.get(run.run_id) == "dead", 15, "the run judged dead")
    out = subprocess.run([sys.executable, "-m", "mp_rl.tools.cleanup", "--yes"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert f"removed {run.run_id}" in out.stdout, out.stdout + out.stderr
    assert run.run_id not in runs_in_shm()


def test_cleanup_never_touches_a_live_run(live):
    run = live(*LONG)
    run.wait_members({"learner"})
    out = subprocess.run([sys.executable, "-m", "mp_rl.tools.cleanup", "--yes"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert f"{run.run_id}  alive" in out.stdout
    assert run.run_id in runs_in_shm()
    rc, _, err = run.stop(timeout=30)
    assert rc == 0, err


def test_resume_continues_counters_from_the_checkpoint(live, tmp_path):
    first = live("--config", "configs/smoke.yaml", "run.total_env_steps=3000", "logging.report=true")
    rc, out, err = first.wait(timeout=120)
    assert rc == 0, err
    before = json.loads((first.run_dir / "summary.json").read_text())
    png = first.run_dir / "training_report.png"  # every run ends with its report
    assert f"training report: {png}" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "final greedy evaluation" in (first.run_dir / "training_summary.txt").read_text()
    assert [json.loads(ln)["loss"] > 0 for ln in (first.run_dir / "learner.jsonl").read_text().splitlines()]
    png.unlink()  # the resumed run is told to write no report: it must not write one
    cmd = [sys.executable, "-m", "mp_rl.run", "--resume", str(first.run_dir), "run.total_env_steps=6000",
           "logging.report=false"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "training report" not in proc.stdout and not png.exists()
    after = json.loads((first.run_dir / "summary.json").read_text())
    assert after["env_steps"] >= 6000 and after["updates"] > before["updates"] > 0
    assert "resumed from" in (first.run_dir / "logs" / "learner.log").read_text()
    # The replay the clean stop saved came back whole before the actors started, and was saved again.
    saved = re.search(r"replay saved for --resume: ([\d,]+) rows", out)
    restored = re.search(r"replay restored: ([\d,]+) rows", proc.stdout)
    assert saved and restored and restored.group(1) == saved.group(1), (out[-800:], proc.stdout[-800:])
    assert "replay saved for --resume" in proc.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--config", "configs/smoke.yaml", "env.id=NoSuchEnv-v0"], "env.id 'NoSuchEnv-v0': Environment `NoSuchEnv`"),
        (["--config", "configs/smoke.yaml", "env.id=Pendulum-v1"], "needs a Discrete action space"),
        (["--config", "configs/smoke.yaml", "learner.device=cuda"], "learner.device: cuda requested"),
        (["--config", "configs/smoke.yaml", "replay.capacity=900000000", "replay.max_capacity=900000000"],
         "does not fit"),
        (["--resume", "/nonexistent/run"], "not an mp_rl run folder"),
    ],
)  # fmt: skip
def test_bad_env_ids_and_impossible_runs_are_one_line_and_exit_2(tmp_path, args, needle):
    if "cuda" in needle and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    cmd = [sys.executable, "-m", "mp_rl.run", *args, f"run.runs_dir={tmp_path / 'runs'}"]
    before = set(list_segments())
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "runs").exists() and set(list_segments()) == before
