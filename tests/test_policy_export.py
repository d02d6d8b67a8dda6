"""mp_rl.policy and mp_rl.export: a trained run another program can load and act with, and files that run
without mp_rl, equal to the PyTorch policy on real observations."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from system_helpers import cli

from mp_rl.export import observations
from mp_rl.policy import Policy, PolicyError

pytestmark = pytest.mark.system  # a real run trains first


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A short finished CartPole run with IQN (a network whose output is not plain Q-values)."""
    runs = tmp_path_factory.mktemp("runs")
    done = cli("mp_rl.run", "--config", "configs/smoke.yaml", "env.id=CartPole-v1", "learner.algo=iqn",
               "learner.n_quantiles=8", "run.total_env_steps=3000", f"run.runs_dir={runs}", timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (folder,) = runs.iterdir()
    return folder


def test_a_program_loads_a_run_and_acts_on_one_observation_or_a_batch(run_dir):
    policy = Policy.load(run_dir)
    same = Policy.load(run_dir / "checkpoints" / "final.pt")
    env = policy.make_env()
    obs, _ = env.reset(seed=0)
    q = policy.q_values(obs)
    assert q.shape == (2,) and policy.act(obs) == int(q.argmax())
    batch = observations(policy, n=16)
    assert policy.q_values(batch).shape == (16, 2)
    assert np.array_equal(policy.act(batch), policy.q_values(batch).argmax(axis=1))
    assert np.allclose(same.q_values(batch), Policy.load(run_dir, "final").q_values(batch))
    rng = np.random.default_rng(0)
    random = [policy.act(obs, epsilon=1.0, rng=rng) for _ in range(200)]
    assert set(random) == {0, 1} and 60 < sum(random) < 140, "epsilon 1: uniform over the actions"
    with pytest.raises(PolicyError, match=r"observation of shape \(3,\): this policy takes \(4,\)"):
        policy.act(np.zeros(3))


def test_bad_sources_are_one_line(run_dir, tmp_path):
    with pytest.raises(PolicyError, match="no such run folder or checkpoint"):
        Policy.load(tmp_path / "missing")
    stray = tmp_path / "stray.pt"
    stray.write_bytes(b"not a checkpoint")
    with pytest.raises(PolicyError, match="outside any run folder"):
        Policy.load(stray)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_exported_file_runs_without_mp_rl_and_equals_the_policy(run_dir, tmp_path, fmt):
    if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("needs the onnx extra")
    out = tmp_path / f"policy.{'pt' if fmt == 'torchscript' else 'onnx'}"
    done = cli("mp_rl.export", str(run_dir), "--format", fmt, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"wrote {out} ({fmt})" in done.stdout and "largest difference" in done.stdout
    policy = Policy.load(run_dir)
    obs = observations(policy, n=32, seed=7)
    np.save(tmp_path / "obs.npy", obs)
    # A fresh interpreter in which `import mp_rl` fails: the file needs torch (or onnxruntime) only.
    run = (
        "import torch; q = torch.jit.load(F)(torch.as_tensor(np.load(O))).numpy()"
        if fmt == "torchscript"
        else "import onnxruntime as ort; q = ort.InferenceSession(F).run(None, {'obs': np.load(O)})[0]"
    )
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    out = Path(shutil.copy(out, moved))  # the file alone: an ONNX file keeps its weights inside
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("policy")) == [out.name]
    code = (f"import sys; sys.modules['mp_rl'] = None; import numpy as np; F, O = {str(out)!r}, "
            f"{str(tmp_path / 'obs.npy')!r}; {run}; np.save(O + '.q.npy', q)")  # fmt: skip
    alone = subprocess.run([sys.executable, "-c", code], cwd=moved, capture_output=True, text=True, timeout=120)
    assert alone.returncode == 0, alone.stderr
    got = np.load(tmp_path / "obs.npy.q.npy")
    assert got.shape == (32, 2) and np.abs(got - policy.q_values(obs)).max() < 1e-5


def test_bad_export_input_is_one_line_and_exit_2(run_dir, tmp_path):
    empty = tmp_path / "empty"
    shutil.copytree(run_dir, empty, ignore=shutil.ignore_patterns("*.pt"))
    other = tmp_path / "other.pt"
    state = torch.load(run_dir / "checkpoints" / "final.pt", weights_only=True)
    state["model"] = {k: v[..., :1] if v.dim() else v for k, v in state["model"].items()}  # another architecture
    torch.save(state, other)
    (run_dir / "checkpoints" / "other.pt").write_bytes(other.read_bytes())
    cases = [
        ((str(run_dir), "--format", "tflite", "--out", str(tmp_path / "x")),
         "--format 'tflite': one of torchscript, onnx"),
        ((str(empty), "--format", "torchscript", "--out", str(tmp_path / "x")), "no best checkpoint"),
        ((str(run_dir), "--format", "torchscript", "--checkpoint", str(run_dir / "checkpoints" / "other.pt"),
          "--out", str(tmp_path / "x")), "cannot be loaded into this run's network"),
        ((str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "no" / "x")), "its folder does not exist"),
        ((str(run_dir), "--format", "torchscript", "--out", str(tmp_path)), "is a folder; name the file to write"),
        ((str(run_dir / "checkpoints" / "final.pt"), "--format", "onnx", "--checkpoint", "final", "--out",
          str(tmp_path / "x")), "is a checkpoint file already"),
    ]  # fmt: skip
    kept = tmp_path / "kept.pt"
    kept.write_bytes(b"an earlier file")
    try:
        for args, line in cases:
            done = cli("mp_rl.export", *args)
            assert done.returncode == 2, done.stderr
            assert done.stderr.startswith("mp_rl.export: ") and line in done.stderr, done.stderr
            assert len(done.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".*.tmp")), "a failure leaves nothing"
        assert kept.read_bytes() == b"an earlier file"
    finally:
        (run_dir / "checkpoints" / "other.pt").unlink()
