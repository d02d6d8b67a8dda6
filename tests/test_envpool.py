"""The EnvPool backend: the same observations as the Gymnasium path where they can agree, the same
rows (the autoreset step is no transition), two lanes per actor, and bad input as one line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from mp_rl.agent.envs import make_vector_env, probe
from mp_rl.agent.envspec import EnvError
from mp_rl.config import load_config
from mp_rl.shm.manifest import SharedRun
from mp_rl.shm.sampler import read_rows
from mp_rl.shm.sync import RateLimit
from mp_rl.start.preflight import plan

pytestmark = pytest.mark.skipif(importlib.util.find_spec("envpool") is None, reason="needs the envpool extra")
atari = pytest.mark.skipif(importlib.util.find_spec("ale_py") is None, reason="needs the atari extra")


def _cfg(backend: str, *extra: str):
    return load_config("configs/smoke.yaml", [f"env.backend={backend}", *extra])


@atari
def test_atari_observations_are_byte_identical_to_the_gymnasium_path_until_the_last():
    """Same spec (84x84 grey, 4 stacked, uint8, 6 actions); with one no-op at reset (both draw
    1..noop_max; EnvPool cannot do none), a whole game of Pong under the same actions gives the same
    bytes and rewards at every step but the last. The last cannot agree: when the game ends inside a
    frame skip, EnvPool max-pools the two frames it last wrote and Gymnasium's AtariPreprocessing
    does not. That observation is never bootstrapped from (its discount is 0)."""
    specs = [probe(_cfg(b, "env.id=ALE/Pong-v5").env) for b in ("gymnasium", "envpool")]
    assert specs[0] == specs[1] and specs[0].obs_shape == (4, 84, 84) and specs[0].frame_stack == 4
    envs = [make_vector_env(_cfg(b, "env.id=ALE/Pong-v5", "env.noop_max=1").env, seed=0, num_envs=1)
            for b in ("gymnasium", "envpool")]  # fmt: skip
    (g, _), (e, _) = envs[0].reset(seed=0), envs[1].reset(seed=0)
    assert np.array_equal(g, e) and all(np.array_equal(g[0, i], g[0, 3]) for i in range(3))
    rng, steps = np.random.default_rng(0), 0
    while True:
        a = rng.integers(0, 6, 1)
        (g, rg, tg, _, _), (e, re, te, _, _) = envs[0].step(a), envs[1].step(a)
        steps += 1
        assert tg[0] == te[0] and rg[0] == re[0], f"step {steps}"
        if tg[0]:
            break
        assert np.array_equal(g, e), f"step {steps}"
    assert steps > 500 and (g != e).mean() < 0.01  # a whole game, then the last frame's pooling
    for env in envs:
        env.close()


def test_the_autoreset_step_is_never_a_transition():
    """CartPole's position moves by exactly tau * velocity each step, so a 1-step row that spanned an
    episode's end and the next reset would break x' = x + 0.02 x_dot."""
    for backend in ("gymnasium", "envpool"):
        rows = _actor_rows(backend, steps=300)
        x, x_dot, nx = rows["obs"][:, 0], rows["obs"][:, 1], rows["next_obs"][:, 0]
        assert np.allclose(nx, x + 0.02 * x_dot, atol=1e-5), backend
        assert (rows["discount"] == 0).sum() > 10, f"{backend}: episodes ended"


def test_an_envpool_actor_steps_two_pools_in_turn(tmp_path):
    from mp_rl.agent.actor import Actor

    cfg = _cfg("envpool", "env.envs_per_actor=8")
    shared, p = _shared(cfg, tmp_path)
    try:
        actor = Actor(cfg, shared, p.spec, slot=0, index=0, count=1, seed=0)
        assert [lane.env.num_envs for lane in actor.lanes] == [4, 4]
        widths = [actor.step() for _ in range(6)]
        assert widths == [0, 0, 4, 4, 4, 4]  # each pool's first step only sends
        actor.close()
    finally:
        shared.close()


@pytest.mark.system
def test_an_env_envpool_does_not_have_is_one_line_and_exit_2(tmp_path):
    with pytest.raises(EnvError, match=r"EnvPool has no env for env\.id 'Acrobot-v9'"):
        probe(_cfg("envpool", "env.id=Acrobot-v9").env)
    out = subprocess.run([sys.executable, "-m", "mp_rl.run", "--config", "configs/smoke.yaml", "env.backend=envpool",
                          "env.id=mp_rl.testing:CountingEnv", f"run.runs_dir={tmp_path}"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "EnvPool has no env" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing started, no run folder


@pytest.mark.system
@pytest.mark.timeout(240)
def test_actors_attach_to_an_envpool_run_write_and_detach(live):
    from system_helpers import wait_for
    from test_attach_live import attach, ctrl_c, joined

    run = live("--config", "configs/smoke.yaml", "env.backend=envpool", "run.total_env_steps=100000000",
               "run.wall_time_s=600")  # fmt: skip
    run.wait_members({"learner", "actor-0"})
    wait_for(lambda: run.metrics() and run.metrics()[-1]["env_steps"] > 0, 60, "the run stepping")
    with SharedRun.attach(run.run_dir) as shared:
        before = shared.ring.counts()["inserts"]
        proc = attach(run.run_dir, "--actors", "1")
        wait_for(lambda: joined(run, proc, 1), 60, "an attached EnvPool actor")
        wait_for(lambda: any(m["attached"] and m["steps"] > 0 for m in shared.control.live_members()), 30,
                 "the attached actor stepping")  # fmt: skip
        assert "detached (exit codes [0])" in ctrl_c(proc)
        assert shared.ring.counts()["inserts"] > before
    rc, _, err = run.stop(timeout=30)
    assert rc == 0, err


def _shared(cfg, tmp_path):
    p = plan(cfg)
    limit = RateLimit(None, 1, 0, p.ring.block, 64)
    return SharedRun.create(tmp_path, f"envpool{id(cfg)}", p.ring, limit, p.numel, 4), p


def _actor_rows(backend: str, steps: int) -> dict:
    import tempfile
    from pathlib import Path

    from mp_rl.agent.actor import Actor

    # Every env acts at random (epsilon 1): an untrained network's greedy play can balance the pole for
    # hundreds of steps (about 1 init in 30), and then too few episodes end to test the reset step.
    cfg = _cfg(backend, "replay.n_step=1", "env.envs_per_actor=4", "actors.eps_base=1.0")
    with tempfile.TemporaryDirectory() as folder:
        shared, p = _shared(cfg, Path(folder))
        try:
            actor = Actor(cfg, shared, p.spec, slot=0, index=0, count=1, seed=0)
            for _ in range(steps):
                actor.step()
            actor.finish()
            _, rows = read_rows(shared.ring, np.arange(*shared.ring.window()))
            actor.close()
            return rows
        finally:
            shared.close()
