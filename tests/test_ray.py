"""Actors on a Ray cluster attached to a live run (`mp_rl.attach --ray`), on `ray.cluster_utils.Cluster`: two
nodes on this machine, a small object store, usage statistics off. They join as `(ray)` members, write
whole transitions, and detach on Ctrl-C; a node removed mid-run takes its actors and the run goes on;
an ingest killed ends the attach with one line and the supervisor frees its slots; the run stopping
ends them. Skipped without the `ray` extra."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from system_helpers import REPO, readable_by_others, wait_for
from test_attach_live import ENVS, N_STEP, RUN, rows_by_env

from mp_rl.shm.control import State
from mp_rl.shm.manifest import SharedRun

pytest.importorskip("ray", reason="needs the ray extra: pip install -e '.[ray]'")
from ray.cluster_utils import Cluster

pytestmark = pytest.mark.system  # every test here starts the real system

STORE = 80 * 2**20  # bytes of object store a node: small, this machine runs everything at once


@pytest.fixture
def cluster(monkeypatch):
    """A head node (one CPU, where the run and the ingest are) and a worker node (two CPUs)."""
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 1, "object_store_memory": STORE, "include_dashboard": False})  # fmt: skip
    worker = c.add_node(num_cpus=2, object_store_memory=STORE)
    c.wait_for_nodes()
    yield c, worker
    c.shutdown()


def attach_ray(run_dir, address: str, n: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mp_rl.attach", str(run_dir), "--ray", address, "--actors", str(n)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def remote(shared: SharedRun, stepping: bool = True) -> list[dict]:
    return [m for m in shared.control.live_members() if m["remote"] and (m["steps"] > 0 or not stepping)]


def joined(proc: subprocess.Popen, shared: SharedRun, n: int) -> list[dict] | None:
    if proc.poll() is not None:
        out, err = proc.communicate()
        raise AssertionError(f"mp_rl.attach exited {proc.returncode}: {err or out}")
    got = remote(shared)
    return got if len(got) == n else None


def ray_actor_pids(run) -> set[int]:
    """The Ray workers that run the actors, by the titles they take (they are on this machine here)."""
    return {p.pid for name, p in run.members().items() if re.fullmatch(r"actor-\d+ \(ray\)", name)}


def ray_actors(run, n: int) -> set[int] | None:
    pids = ray_actor_pids(run)
    return pids if len(pids) == n else None


def check_rows(shared: SharedRun, pids: set[int], whole: set[int] = frozenset()) -> dict:
    """No transition twice for any of `pids`; for those in `whole` (actors that detached cleanly) none
    missing between an env's first and last either. An actor cut off mid-window may miss blocks it had
    in flight, never half of one (rows_by_env checks every row's obs and next_obs belong together)."""
    envs = rows_by_env(shared, pids)
    for key, steps in envs.items():
        assert len(np.unique(steps)) == len(steps), f"{key}: a transition was written twice"
        if key[0] in whole:
            assert steps[0] == 0 and np.all(np.diff(steps) == 1), f"{key}: a transition is missing"
    return envs


@pytest.mark.timeout(240)
def test_ray_actors_join_write_whole_rows_survive_a_dead_node_and_detach_on_ctrl_c(cluster, live):
    c, worker = cluster
    run = live(*RUN)
    run.wait_members({"learner", "actor-0"})
    proc = attach_ray(run.run_dir, c.address, 3)  # one on the head (its one CPU), two on the worker
    with SharedRun.attach(run.run_dir) as shared:
        members = wait_for(lambda: joined(proc, shared, 3), 120, "three Ray actors stepping")
        assert all(m["attached"] for m in members)
        pids = wait_for(lambda: ray_actors(run, 3), 30, "their titles")
        wait_for(lambda: run.metrics()[-1].get("ray") == 3, 30, "the status line counting them")
        tool = subprocess.run([sys.executable, "-m", "mp_rl.tools.status", str(run.run_dir), "--count", "1"],
                              cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert tool.stdout.count("(ray)") == 3, tool.stdout

        c.remove_node(worker)  # the worker machine dies, its actors with it
        wait_for(lambda: len(remote(shared, stepping=False)) == 1, 60, "the dead node's slots freed")
        survivor = wait_for(lambda: ray_actors(run, 1), 30, "one Ray actor left")
        steps = shared.control.counters()["env_steps"]
        wait_for(lambda: shared.control.counters()["env_steps"] > steps + 10_000, 60, "the run going on")
        assert remote(shared)[0]["state"] == "running"

        out = ctrl_c(proc)
        assert out.count("lost: its node or process died") == 2, out
        assert "detached: 1 of 3 Ray actor(s) ended cleanly" in out, out
        assert not remote(shared, stepping=False), "every slot is free again"
        assert not np.any(np.isin(shared.ring.leases, [m["slot"] + 1 for m in members])), "no lease held"
        envs = check_rows(shared, pids, whole=survivor)
        taken = int(re.search(r"\(ray\) on \S+: ([\d,]+) env steps, detached", out)[1].replace(",", ""))
        # The survivor detached cleanly: every step it took is a row, but the last n-1 of each env.
        assert sum(len(v) for k, v in envs.items() if k[0] in survivor) == taken - ENVS * (N_STEP - 1)
    rc, _, err = run.stop(timeout=30)
    assert rc == 0, err
    assert readable_by_others(run.run_dir) == []  # the ingest's log and the attach's included


def ctrl_c(proc: subprocess.Popen, timeout: float = 60) -> str:
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err + out
    return out


@pytest.mark.timeout(240)
def test_a_killed_ingest_ends_the_attach_with_one_line_and_the_run_stopping_ends_ray_actors(cluster, live):
    c, _ = cluster
    run = live(*RUN)  # rate-limited: the ingest is often inside a held write when it dies
    run.wait_members({"learner", "actor-0"})
    proc = attach_ray(run.run_dir, c.address, 2)
    with SharedRun.attach(run.run_dir) as shared:
        members = wait_for(lambda: joined(proc, shared, 2), 120, "two Ray actors stepping")
        pids = wait_for(lambda: ray_actors(run, 2), 30, "their titles")
        ingest = {m["pid"] for m in members}
        assert len(ingest) == 1, "one ingest holds their slots"
        os.kill(ingest.pop(), signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, out + err
        said = [line for line in out.splitlines() if "ingest" in line]
        assert len(said) == 1 and "died" in said[0], out
        assert "Traceback" not in out + err
        for m in members:
            wait_for(lambda m=m: shared.control.state(m["slot"]) == State.FREE, 30, "the supervisor freeing the slot")
            assert not np.any(shared.ring.leases == m["slot"] + 1), "no block still reserved: none half-written"
        check_rows(shared, pids)
        wait_for(lambda: not ray_actor_pids(run), 30, "the Ray actors gone")

        again = attach_ray(run.run_dir, c.address, 2)  # a second attach, and then the run ends under it
        wait_for(lambda: joined(again, shared, 2), 120, "two Ray actors again")
    rc, _, err = run.stop(timeout=30)
    assert rc == 0, err
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert out.count("the run stopped") == 2, out


def test_bad_ray_input_is_one_line_and_exit_2_with_nothing_started(live):
    run = live(*RUN)
    for args, needle in [
        (["--ray", "127.0.0.1:1"], "nothing answers there"),  # ray.init would retry this for minutes
        (["--ray", "ray://head:10001"], "Ray Client addresses are not supported"),
        (["--ray", "local", "--cpus", "0"], "Ray places --ray actors itself"),
    ]:
        proc = subprocess.Popen([sys.executable, "-m", "mp_rl.attach", str(run.run_dir), *args], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)
    with SharedRun.attach(run.run_dir) as shared:
        assert not remote(shared, stepping=False)
