"""Any Gymnasium observation and environment: networks chosen from the observation, env.kwargs,
env.register hooks, Gymnasium's module:EnvId form, MinAtar; and a network that cannot take the
observation is one line at preflight, never an actor crash loop."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch
from system_helpers import REPO

from mp_rl.agent.envs import probe
from mp_rl.agent.envspec import EnvError
from mp_rl.agent.models import NetworkError, build_q_network, choose, image_layout
from mp_rl.config import EnvConfig

MINATAR = importlib.util.find_spec("minatar") is not None


@pytest.mark.parametrize(
    ("shape", "dtype", "kind"),
    [
        ((4,), np.float32, "mlp"),
        ((4,), np.float64, "mlp"),  # cast, not a dtype clash with float32 weights
        ((4, 84, 84), np.uint8, "nature_cnn"),
        ((84, 84, 3), np.uint8, "nature_cnn"),  # channels last
        ((10, 10, 4), np.bool_, "small_cnn"),  # MinAtar
        ((4, 10, 10), np.uint8, "small_cnn"),
        ((4, 4), np.float32, "mlp"),  # a stack of vectors, flattened
        ((2, 3, 4, 5), np.float32, "mlp"),
        ((2, 2, 2), np.uint8, "mlp"),  # an image too small to convolve, flattened
    ],
)
def test_the_network_follows_the_observation(shape, dtype, kind):
    assert choose(shape) == kind
    net = build_q_network(shape, 3, (16,), dueling=True, scale=1 / 255 if dtype == np.uint8 else 1.0)
    obs = torch.as_tensor((np.random.default_rng(0).random((5, *shape)) * 2).astype(dtype))
    q = net(obs)
    assert q.shape == (5, 3) and torch.isfinite(q).all()


def test_channels_last_images_are_convolved_over_their_spatial_axes():
    assert image_layout((10, 10, 4)) == (4, 10, 10, True) and image_layout((84, 84, 3)) == (3, 84, 84, True)
    net = build_q_network((10, 10, 4), 3, (16,), dueling=False, network="small_cnn")
    assert net[1][0].in_channels == 4  # the convolution sees 4 channels, not 10


@pytest.mark.parametrize(
    ("shape", "network", "message"),
    [
        ((10, 10, 4), "nature_cnn", "nature_cnn needs (C, H, W) or (H, W, C) images of at least 36x36"),
        ((8,), "small_cnn", "small_cnn needs"),
        ((2, 2, 1), "small_cnn", "the observation is (2, 2, 1)"),
    ],
)
def test_a_network_that_cannot_take_the_observation_says_so(shape, network, message):
    with pytest.raises(NetworkError, match=message.replace("(", r"\(").replace(")", r"\)")):
        choose(shape, network)


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mp_rl.run", "--config", "configs/smoke.yaml", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.system
@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["env.id=mp_rl.testing:GridEnv", "learner.network=nature_cnn"],
         "mp_rl.run: learner.network nature_cnn needs (C, H, W) or (H, W, C) images of at least 36x36; "
         "the observation is (6, 6, 2)"),
        (["env.id=mp_rl.testing:GridEnv", "env.kwargs={size: 2}", "learner.network=small_cnn"],
         "mp_rl.run: learner.network small_cnn needs (C, H, W) or (H, W, C) images of at least 3x3; "
         "the observation is (2, 2, 2)"),
        (["env.id=mp_rl.testing:GridEnv", "env.kwargs={colour: red}"],
         "mp_rl.run: env.id 'mp_rl.testing:GridEnv' could not be created: TypeError:"),
        (["env.id=MpRlTest/Grid-v0"], "mp_rl.run: env.id 'MpRlTest/Grid-v0':"),
        (["env.id=CartPole-v1", "env.register=mp_rl.testing:no_such_hook"],
         "mp_rl.run: env.register 'mp_rl.testing:no_such_hook': no_such_hook is not a function in mp_rl.testing"),
        (["env.id=CartPole-v1", "env.register=no_such_module:f"],
         "mp_rl.run: env.register 'no_such_module:f': cannot import no_such_module"),
    ],
)  # fmt: skip
def test_bad_env_and_network_input_is_one_line_and_exit_2_before_anything_starts(tmp_path, overrides, line):
    done = run_cli(*overrides, f"run.runs_dir={tmp_path / 'runs'}")
    assert done.returncode == 2 and done.stderr.startswith(line), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_env_kwargs_reach_the_constructor_and_register_hooks_run_first():
    assert probe(EnvConfig(id="mp_rl.testing:GridEnv", kwargs={"size": 7, "channels": 3})).obs_shape == (7, 7, 3)
    with pytest.raises(EnvError):
        probe(EnvConfig(id="MpRlTest/Grid-v0"))
    spec = probe(EnvConfig(id="MpRlTest/Grid-v0", register="mp_rl.testing:register_test_envs", kwargs={"size": 9}))
    assert spec.obs_shape == (9, 9, 2) and spec.obs_dtype == "|u1" and spec.obs_scale == 1.0  # bools kept as bytes
    assert probe(EnvConfig(id="gymnasium.envs.classic_control:CartPole-v1")).obs_shape == (4,)  # module:EnvId


@pytest.mark.system
def test_a_small_image_env_learns_with_the_small_cnn_through_the_cli(tmp_path):
    """Channels-last 0/1 images: the greedy policy beats chance (5 of 10) by a margin."""
    done = run_cli("env.id=mp_rl.testing:GridEnv", "run.total_env_steps=6000",
                   "replay.min_fill=500", "learner.lr=0.001", "eval.episodes=20", f"run.runs_dir={tmp_path}",
                   timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr
    final = [ln for ln in done.stdout.splitlines() if ln.startswith("final greedy evaluation")]
    assert final and float(final[0].split("mean return ")[1].split()[0]) >= 8.0, done.stdout[-800:]


@pytest.mark.system
@pytest.mark.skipif(not MINATAR, reason="needs the minatar extra")
def test_a_minatar_id_runs_from_a_config(tmp_path):
    done = run_cli("env.id=MinAtar/Breakout-v1", "run.total_env_steps=2000", f"run.runs_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    assert "final greedy evaluation" in done.stdout


@pytest.mark.system
def test_a_minatar_id_without_the_extra_is_one_line(tmp_path):
    code = ("import sys, runpy; sys.modules['minatar'] = None; sys.argv = ['mp_rl.run', '--config', "
            f"'configs/smoke.yaml', 'env.id=MinAtar/Breakout-v1', 'run.runs_dir={tmp_path}']; "
            "runpy.run_module('mp_rl.run', run_name='__main__')")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == "mp_rl.run: env.id 'MinAtar/Breakout-v1' needs the minatar extra: pip install -e '.[minatar]'"
    )


@pytest.mark.system
def test_resuming_with_a_config_that_builds_another_network_is_one_line(tmp_path):
    done = run_cli("run.total_env_steps=1500", f"run.runs_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    (run_dir,) = tmp_path.iterdir()
    cmd = [sys.executable, "-m", "mp_rl.run", "--resume", str(run_dir), "learner.algo=qr_dqn"]
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert "holds a different network than this config builds" in again.stderr
