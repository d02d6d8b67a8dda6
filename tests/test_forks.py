"""The members' start: forks of one fork server that exits with the run, or spawned on request."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest
from system_helpers import REPO
from test_bad_input import SMOKE, one_line_exit_2

from mp_rl import run
from mp_rl.shm.manifest import SharedRun

LONG = ["--config", "configs/smoke.yaml", "run.total_env_steps=100000000", "run.wall_time_s=300",
        "monitor.enabled=true"]  # fmt: skip


def fork_servers(parent: int | None = None) -> set[int]:
    """Pids of live multiprocessing fork servers (the children of `parent`'s only, if given)."""
    procs = psutil.Process(parent).children() if parent else psutil.process_iter()
    found = set()
    for p in procs:
        try:
            if "multiprocessing.forkserver" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                found.add(p.pid)
        except psutil.Error:
            continue
    return found


@pytest.mark.system
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_members_are_forks_of_one_server_that_ends_with_the_run(live, method):
    """By default every member (learner, actor, monitor) is a child of one fork server, itself the
    supervisor's child; with MP_RL_START_METHOD=spawn each is the supervisor's own child and there
    is no server. Either way the run stops cleanly and leaves no process."""
    r = live(*LONG, env={"MP_RL_START_METHOD": method})
    members = r.wait_members({"learner", "actor-0", "monitor"})
    members.pop("supervisor")
    servers = fork_servers(r.proc.pid)
    parents = {name: p.ppid() for name, p in members.items()}
    if method == "forkserver":
        assert len(servers) == 1, f"fork servers under the supervisor: {servers}"
        assert set(parents.values()) == servers, parents
    else:
        assert not servers and set(parents.values()) == {r.proc.pid}, (servers, parents)
    shared = SharedRun.attach(r.run_dir)
    try:
        assert {m["pid"] for m in shared.control.live_members()} == {p.pid for p in members.values()}
    finally:
        shared.close()
    gone = [*members.values(), *(psutil.Process(pid) for pid in servers)]
    rc, _, err = r.stop(60)
    assert rc == 0, err[-800:]
    _, alive = psutil.wait_procs(gone, timeout=5)
    assert not alive, f"outlived the run: {alive}"


@pytest.mark.system
def test_a_refused_start_leaves_no_fork_server_behind(tmp_path):
    """The server starts before the config is read; a start refused for bad input ends it at once,
    mid-import, rather than leave it to finish importing torch and notice its parent is gone."""
    before = fork_servers()
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mp_rl.run", "--config", SMOKE, "run.seed=-1",
                           f"run.runs_dir={tmp_path / 'runs'}"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    took = time.monotonic() - t0
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert not fork_servers() - before, f"a fork server outlived a refused start ({took:.1f} s)"


def test_an_unknown_start_method_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("MP_RL_START_METHOD", "fork")
    one_line_exit_2(run.main, ["--config", SMOKE, f"run.runs_dir={tmp_path / 'runs'}"], "MP_RL_START_METHOD=fork")
    assert not (tmp_path / "runs").exists()
