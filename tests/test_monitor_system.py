"""The monitor on the real system: it measures, adds actors to an idle machine, shrinks the replay
under RAM pressure (and the memory really goes), writes every move to decisions.jsonl."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
from system_helpers import wait_for

from mp_rl.monitor.sources import FAKE_MEMORY_ENV
from mp_rl.shm.manifest import SharedRun
from mp_rl.start import resources

pytestmark = pytest.mark.system  # every test here starts the real system

FAST = ["monitor.enabled=true", "monitor.cooldown_s=1", "monitor.window_s=1", "monitor.decide_every_s=0.5"]
LONG = ["--config", "configs/smoke.yaml", "run.total_env_steps=100000000", "run.wall_time_s=300"]


def decisions(run_dir: Path) -> list[dict]:
    path = run_dir / "decisions.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def moves(run_dir: Path, knob: str) -> list[dict]:
    return [d for d in decisions(run_dir) if d["kind"] == "move" and d["knob"] == knob]


def rss_shmem_kib(pid: int) -> int:
    """Shared-memory pages this process has mapped and resident (the ring's committed pages)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssShmem:"):
            return int(line.split()[1])
    raise AssertionError("no RssShmem in /proc/<pid>/status")


NO_ENVPOOL = pytest.mark.skipif(importlib.util.find_spec("envpool") is None, reason="needs the envpool extra")


@pytest.mark.skipif(resources.usable_cpus() < 2, reason="one usable CPU: there is no room for a second actor")
@pytest.mark.parametrize("backend", ["gymnasium", pytest.param("envpool", marks=NO_ENVPOOL)])
def test_a_starved_learner_on_an_idle_machine_gets_more_actors(live, backend):
    # One actor, and a learner that may draw only one sample per four inserts: it waits for data
    # most of its time however fast or loaded the machine is (at one per insert a slow box keeps
    # the learner just busy enough to look fed). EnvPool actors are processes like any other.
    run = live(
        *LONG,
        *FAST,
        "actors.count=auto",
        "actors.initial_count=1",
        "replay.samples_per_insert=0.25",
        f"env.backend={backend}",
    )
    run.wait_members({"monitor", "learner", "actor-0"})
    added = wait_for(lambda: [m for m in moves(run.run_dir, "actors") if m["new"] > m["old"]], 60, "an actor added")
    assert added[0]["old"] == 1 and added[0]["rule"]
    assert {"cpu_busy", "learner_wait_frac", "env_steps_per_s"} <= added[0]["snapshot"].keys()
    run.wait_members({"actor-1"}, timeout=30)
    wait_for(lambda: any(m.get("last_decision") for m in run.metrics()), 30, "the last move on the status line")
    assert (run.run_dir / "hardware_profile.json").exists()
    with SharedRun.attach(run.run_dir) as shared:  # tools read the monitor's latest snapshot from shared memory
        snap = shared.control.read_snapshot()
    assert snap is not None and snap["bottleneck"] and "cpu_per_core" in snap and "members" in snap
    assert snap["gpu_util"] is None or 0 <= snap["gpu_util"] <= 1  # no driver: null, nothing fails
    rc, _, err = run.stop(timeout=30)
    assert rc == 0, err


def test_ram_pressure_shrinks_the_replay_and_its_memory_really_goes(live, tmp_path):
    fake = tmp_path / "memory.json"
    fake.write_text(json.dumps({"total": 16 << 30, "available": int(0.35 * (16 << 30))}))  # 35 %: hold
    replay = ["replay.capacity=auto", "replay.initial_capacity=65536", "replay.max_capacity=65536",
              "replay.min_capacity=1024", "replay.samples_per_insert=null"]  # fmt: skip
    run = live(*LONG, *FAST, *replay, env={FAKE_MEMORY_ENV: str(fake)})
    actor = run.wait_members({"actor-0", "monitor"})["actor-0"]
    wait_for(lambda: run.metrics() and run.metrics()[-1]["replay_size"] >= 65000, 90, "a full replay")
    full = rss_shmem_kib(actor.pid)
    assert not moves(run.run_dir, "capacity"), "35 % headroom is inside the dead band: nothing moves"
    fake.write_text(json.dumps({"total": 16 << 30, "available": int(0.10 * (16 << 30))}))  # 10 %: pressure
    wait_for(lambda: run.metrics()[-1]["replay_capacity"] <= 16384, 60, "the replay shrunk to a quarter")
    shrinks = moves(run.run_dir, "capacity")
    assert all(m["new"] < m["old"] and "ram headroom" in m["rule"] for m in shrinks)
    released = (65536 - 16384) * 56 // 1024  # rows x bytes per CartPole row (with its stamp), in KiB
    wait_for(lambda: full - rss_shmem_kib(actor.pid) >= 0.7 * released, 30, "resident ring pages released")
    rc, _, err = run.stop(timeout=30)
    assert rc == 0, err


def test_the_supervisor_follows_the_targets_adding_and_retiring_actors_and_resizing_the_batch(live):
    run = live(*LONG, "learner.batch_size=auto", "learner.initial_batch_size=32")  # monitor off: the test
    # writes the targets the monitor would
    run.wait_members({"learner", "actor-0"})
    with SharedRun.attach(run.run_dir) as shared:
        control = shared.control
        control.set_target("actors", 2)
        second = run.wait_members({"actor-1"})["actor-1"]
        slot = wait_for(lambda: [m["slot"] for m in control.live_members() if m["index"] == 1 and m["steps"]], 60,
                        "actor-1 stepping")[0]  # fmt: skip
        control.set_target("actors", 1)
        second.wait(timeout=30)
        log = run.run_dir / "logs" / "supervisor.log"
        wait_for(lambda: "actor-1 retired (exit code 0)" in log.read_text(), 10, "a retired actor exiting 0")
        wait_for(lambda: control.state(slot).name == "FREE", 10, "its slot released")
        assert not (shared.ring.leases == slot + 1).any(), "nothing half-written stays reserved"
        assert "actor 1 retired" in (run.run_dir / "logs" / "actor-1.log").read_text()
        assert set(run.members()) >= {"actor-0", "learner"} and "actor-1" not in run.members()

        def per_update(window: float = 2.0) -> float:
            a = (shared.ring.counts()["samples"], control.counters()["updates"])
            time.sleep(window)
            b = (shared.ring.counts()["samples"], control.counters()["updates"])
            return (b[0] - a[0]) / max(1, b[1] - a[1])

        assert per_update() == pytest.approx(32, rel=0.05)
        control.set_target("batch_size", 48)  # within max_batch_size 64: the prefetch buffers hold it
        done = control.counters()["updates"] + 4  # the batches already prefetched were sampled at the old size
        wait_for(lambda: control.counters()["updates"] >= done, 30, "the prefetched batches used up")
        assert per_update() == pytest.approx(48, rel=0.05)
    rc, _, err = run.stop(timeout=30)
    assert rc == 0, err
