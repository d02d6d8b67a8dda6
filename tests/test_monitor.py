"""The monitor object in one process: container limits, attached actors, decisions file, shared snapshot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mp_rl.config import load_config
from mp_rl.monitor.monitor import Monitor
from mp_rl.monitor.sources import MachineSource
from mp_rl.runfolder import DECISIONS
from mp_rl.shm import RateLimit, SharedRun
from mp_rl.shm.control import ATTACHED, Kind
from mp_rl.start.preflight import plan
from mp_rl.testing import checked_spec


@pytest.fixture
def shared(tmp_path, shm_name):
    run_id = shm_name("x").split(".")[1]
    run = SharedRun.create(tmp_path, run_id, checked_spec(8192), RateLimit(None, 1, 0, 64, 64), 100, 8, 4096)
    yield run
    run.close()


class FakeMachine:
    def __init__(self, **values):
        self.values = {"cpu_busy": 0.3, "cpu_per_core": [0.3, 0.3], "usable_cpus": 4, "ram_headroom": 0.35,
                       "ram_available": 4 << 30, "ram_total": 8 << 30, "gpu_util": None, **values}  # fmt: skip

    def sample(self, now):
        return dict(self.values)


class FakePipeline:
    def __init__(self, **values):
        self.values = {"env_steps_per_s": 1000.0, "learner_wait_frac": 0.0, "actor_blocked_frac": 0.0,
                       "actors": 1, "attached": 0, "replay_size": 5000, "members": []}  # fmt: skip
        self.values.update(values)

    def sample(self, now):
        return dict(self.values)


def monitor(shared, tmp_path, *overrides, machine=None, pipeline=None) -> Monitor:
    cfg = load_config("configs/smoke.yaml", ["actors.count=auto", "monitor.window_s=1", "monitor.cooldown_s=0",
                                             "replay.min_fill=100", *overrides])  # fmt: skip
    shared.control.set_target("actors", 1)
    return Monitor(cfg, shared, tmp_path, plan(cfg).knobs, machine or FakeMachine(), pipeline or FakePipeline())


def test_the_cgroup_limits_are_the_machine_the_monitor_sees(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs of however many the host has
    (tmp_path / "memory.max").write_text(str(1 << 30))
    (tmp_path / "memory.current").write_text(str(768 << 20))
    (tmp_path / "cpu.stat").write_text("usage_usec 1000000\n")
    src = MachineSource(cgroup=tmp_path)
    (tmp_path / "cpu.stat").write_text("usage_usec 1750000\n")  # 0.75 CPU-seconds used ...
    snap = src.sample(src.last_time + 1.0)  # ... in one second
    assert snap["usable_cpus"] == 1 and snap["cpu_quota"] == 1.5
    assert snap["cpu_busy"] == pytest.approx(0.75)
    assert snap["ram_total"] == 1 << 30 and snap["ram_available"] <= 256 << 20
    assert snap["ram_headroom"] == pytest.approx(snap["ram_available"] / (1 << 30), abs=1e-3)


def test_decisions_wait_for_a_full_window_of_training(shared, tmp_path):
    m = monitor(shared, tmp_path, pipeline=FakePipeline(replay_size=50, learner_wait_frac=0.9))
    assert m.tick(100.0) == [] and m.tick(110.0) == []  # below min_fill the learner waits by design
    m.pipeline.values["replay_size"] = 5000
    assert m.tick(111.0) == []  # ready, but the window is not measured yet
    recs = m.tick(112.5)
    assert [r["knob"] for r in recs if r["kind"] == "move"] == ["actors"]
    assert shared.control.target("actors") == 2  # written for the supervisor
    written = [json.loads(x) for x in (tmp_path / DECISIONS).read_text().splitlines()]
    assert written[-1]["kind"] == "move" and written[-1]["snapshot"]["learner_wait_frac"] == pytest.approx(0.9)
    m.close()


def test_attached_actors_count_toward_the_cpu_bound(shared, tmp_path):
    for _ in range(3):  # three actors attached by hand on a 4-CPU machine
        shared.control.claim(Kind.ACTOR, flags=ATTACHED)
    m = monitor(shared, tmp_path, pipeline=FakePipeline(attached=3, learner_wait_frac=0.9))
    m.usable = 4
    for t in range(8):
        m.tick(100.0 + t)
    assert m.policy.knobs["actors"].hi == 1  # 4 CPUs - 3 attached
    assert shared.control.target("actors") == 1
    assert any(r["kind"] == "declined" and "bound" in r["reason"] for r in map(json.loads,
               (tmp_path / DECISIONS).read_text().splitlines()))  # fmt: skip
    m.close()


def test_the_latest_snapshot_is_shared_with_tools(shared, tmp_path):
    m = monitor(shared, tmp_path)
    assert shared.control.read_snapshot() is None
    m.tick(100.0)
    snap = shared.control.read_snapshot()
    assert snap["env_steps_per_s"] == 1000.0 and snap["bottleneck"] == "none" and snap["last_decision"] is None
    m.close()


def test_the_window_holds_the_median_return_of_the_episodes_that_ended_in_it(shared, tmp_path):
    from mp_rl.monitor.sources import PipelineSource

    shared.control.report_episodes(0, np.array([1.0, 2.0]), np.array([10, 10]))  # before the monitor started
    source = PipelineSource(shared)
    shared.control.report_episodes(0, np.array([5.0, 7.0, 100.0]), np.array([10, 10, 10]))
    assert source.sample(0.0)["episode_returns"] == [5.0, 7.0, 100.0]  # only those since, each once
    assert source.sample(1.0)["episode_returns"] == []
    m = monitor(shared, tmp_path)
    for t, returns in enumerate(([10.0, 20.0], [30.0], [], [90.0])):
        m.pipeline.values["episode_returns"] = returns
        m.tick(100.0 + 0.4 * t)
    w = m.window(101.2)  # the last second: three samples
    assert (w["return_count"], w["return_median"]) == (2, 60.0)
    assert "episode_returns" not in shared.control.read_snapshot()  # tools read the status line's returns
    m.close()
