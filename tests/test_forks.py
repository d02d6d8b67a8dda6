"""The members' start: forks of one fork server that exits with the run, or spawned on request."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest
from test_bad_input import SMOKE, one_line_exit_2

from mp_rl import run
from mp_rl.shm.manifest import SharedRun

LONG = ["--config", "configs/smoke.yaml", "run.total_env_steps=100000000", "run.wall_time_s=300",
        "monitor.enabled=true"]  # fmt: skip


def fork_servers(parent: int | None = None, mentioning: str = "") -> set[int]:
    """Pids of live multiprocessing fork servers: `parent`'s children, or any whose command line
    mentions `mentioning`."""
    procs = psutil.Process(parent).children() if parent else psutil.process_iter()
    found = set()
    for p in procs:
        try:
            line = " ".join(p.cmdline())
            if "multiprocessing.forkserver" in line and mentioning in line and p.status() != psutil.STATUS_ZOMBIE:
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
    try:  # every member the run counts, not only those found by title
        live = {m["pid"] for m in shared.control.live_members()}
    finally:
        shared.close()
    assert {psutil.Process(pid).ppid() for pid in live} == (servers or {r.proc.pid})
    gone = [*members.values(), *(psutil.Process(pid) for pid in servers)]
    rc, _, err = r.stop(60)
    assert rc == 0, err[-800:]
    _, alive = psutil.wait_procs(gone, timeout=5)
    assert not alive, f"outlived the run: {alive}"


def test_an_entry_that_ends_at_once_ends_its_server_mid_import(tmp_path):
    """The entry points start the server before they read their command line, so a refusal or
    `--help` can end them while the server still imports torch: it is ended with them, not left to
    finish (seconds) and only then notice. The script runs from a folder of its own, which the
    server's command line names (its sys.path): no other run's server is taken for this one's."""
    script = tmp_path / "entry.py"
    script.write_text("from mp_rl.system import forks\nforks.start()\n")
    subprocess.run([sys.executable, str(script)], cwd=tmp_path, timeout=60, check=True)
    assert not fork_servers(mentioning=str(tmp_path)), "the fork server outlived its entry point"


@pytest.mark.system
def test_a_dead_fork_server_takes_its_members_and_the_run_stops_saying_so(live):
    """The server can die under a run (killed; a fork that failed). The supervisor would no longer
    learn its members' exits, so they die with it, and the run stops with that reason rather than
    a learner "exited with code 255" whose log says nothing."""
    r = live(*LONG)
    members = r.wait_members({"learner", "actor-0", "monitor"})
    members.pop("supervisor")
    (server,) = fork_servers(r.proc.pid)
    psutil.Process(server).kill()
    _, alive = psutil.wait_procs(list(members.values()), timeout=10)
    assert not alive, f"members outlived their fork server: {alive}"
    rc, out, err = r.wait(60)
    assert rc == 1 and "the members' fork server died" in out + err, (rc, out[-500:], err[-500:])
    assert not r.members()


def test_an_unknown_start_method_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("MP_RL_START_METHOD", "fork")
    one_line_exit_2(run.main, ["--config", SMOKE, f"run.runs_dir={tmp_path / 'runs'}"], "MP_RL_START_METHOD=fork")
    assert not (tmp_path / "runs").exists()
