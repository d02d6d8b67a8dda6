"""What fits the machine: cgroup CPU and memory limits, clamping, Ape-X epsilons; the learner on CUDA."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import requires_cuda

from mp_rl.agent.actor import ape_x_epsilon
from mp_rl.config import load_config
from mp_rl.start import resources
from mp_rl.start.preflight import plan


def test_cgroup_cpu_quota_caps_the_affinity_mask(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs
    assert resources.cgroup_cpu_limit(tmp_path) == 1.5
    assert resources.usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert resources.usable_cpus(tmp_path) == len(os.sched_getaffinity(0))
    assert resources.usable_cpus(tmp_path / "absent") == len(os.sched_getaffinity(0))


def test_cgroup_memory_headroom_caps_available_memory(tmp_path):
    (tmp_path / "memory.max").write_text(str(3 * 2**30))
    (tmp_path / "memory.current").write_text(str(2 * 2**30))
    assert resources.available_memory(tmp_path) <= 2**30
    (tmp_path / "memory.max").write_text("max")
    assert resources.available_memory(tmp_path) > 0


def test_forty_eight_actors_on_a_small_box_become_what_fits(monkeypatch, tmp_path):
    monkeypatch.setattr(resources, "usable_cpus", lambda root=None: 2)
    p = plan(load_config("configs/smoke.yaml", ["actors.count=48", f"run.runs_dir={tmp_path}"]))
    assert p.actors == 1
    assert any("actors.count 48 clamped to 1: 2 usable CPUs" in w for w in p.warnings)


def test_ape_x_epsilons_span_from_base_to_base_to_the_eighth():
    eps = [ape_x_epsilon(i, 8, 0.4, 7.0) for i in range(8)]
    assert eps[0] == pytest.approx(0.4) and eps[-1] == pytest.approx(0.4**8)
    assert eps == sorted(eps, reverse=True)
    assert ape_x_epsilon(0, 1) == 0.4  # a single explorer explores with the base epsilon


@pytest.mark.parametrize("per", ["env", "actor"])
def test_every_env_of_every_actor_is_one_ape_x_explorer(tmp_path, shm_name, per):
    """Per env (the default), actor i of 2 with 4 envs holds explorers 4i..4i+3 of 8, so one actor's envs
    already span a range of epsilons; per actor, all its envs share actor i's."""
    from mp_rl.agent.actor import Actor
    from mp_rl.shm.manifest import SharedRun

    cfg = load_config("configs/smoke.yaml", ["env.envs_per_actor=4", f"actors.eps_per={per}"])
    p = plan(cfg)
    shared = SharedRun.create(tmp_path, shm_name("x").split(".")[1], p.ring, p.limit, p.numel, 4)
    try:
        got = []
        for index in range(2):
            actor = Actor(cfg, shared, p.spec, slot=index, index=index, count=2, seed=0)
            got.append(actor.epsilons)
            actor.close()
        if per == "env":
            want = [ape_x_epsilon(i, 8, 0.4, 7.0) for i in range(8)]
            assert np.concatenate(got) == pytest.approx(want)
        else:
            assert list(got[0]) == [0.4] * 4 and got[1] == pytest.approx([0.4**8] * 4)
    finally:
        shared.close()


@requires_cuda
def test_the_learner_trains_on_cuda_with_amp_prefetch_and_pinned_publishing(tmp_path):
    from mp_rl.agent.learner import Learner
    from mp_rl.shm.manifest import SharedRun
    from mp_rl.start.preflight import new_run_dir
    from mp_rl.testing import make_rows

    cfg = load_config("configs/smoke.yaml", [f"run.runs_dir={tmp_path}", "learner.device=cuda", "replay.min_fill=64"])
    p = plan(cfg)
    shared = SharedRun.create(new_run_dir(cfg), "gpu", p.ring, p.limit, p.numel, 4, p.capacity)
    try:
        learner = Learner(cfg, shared, p.spec, p.knobs.batch_size)
        assert learner.amp_dtype in (torch.bfloat16, torch.float16) and shared.board._pinned
        rows = make_rows(0, 0, 32)
        rows["action"] = rows["action"] % 2
        for _ in range(16):  # more rows than the learner has sampled: not held back by samples_per_insert
            shared.ring.writer(1).write(rows, limited=False)
        assert sum(learner.step(timeout=5.0) for _ in range(20)) == 20
        v = learner.publish()
        out = torch.empty(shared.board.numel)
        assert shared.board.read_into(out) == v and torch.equal(out, learner.flat.float().cpu())
        learner.close()
    finally:
        shared.close()


def _pinned_affinity(cfg_json: dict, index: int | None, out) -> None:
    from mp_rl.config import Config
    from mp_rl.system.entrypoints import pin

    pin(Config.model_validate(cfg_json), index)
    out.put(sorted(os.sched_getaffinity(0)))


@pytest.mark.skipif(resources.usable_cpus() < 2, reason="pinning needs two usable CPUs")
def test_pinning_puts_the_learner_and_the_actors_on_different_cpus(spawn):
    cpus = sorted(os.sched_getaffinity(0))[: resources.usable_cpus()]
    cfg_json = load_config("configs/smoke.yaml", ["run.pin_cpus=true"]).model_dump(mode="json")
    got = {}
    for who in (None, 0, len(cpus) - 1):  # the learner, the first actor, an actor that wraps around
        q = spawn.Queue()
        p = spawn.Process(target=_pinned_affinity, args=(cfg_json, who, q))
        p.start()
        got[who] = q.get(timeout=30)
        p.join(10)
    assert got[None] == [cpus[-1]] and got[0] == [cpus[0]] and got[len(cpus) - 1] == [cpus[0]]
    off = load_config("configs/smoke.yaml").model_dump(mode="json")
    q = spawn.Queue()
    p = spawn.Process(target=_pinned_affinity, args=(off, 0, q))
    p.start()
    assert q.get(timeout=30) == sorted(os.sched_getaffinity(0)), "off by default"
    p.join(10)
