"""A trained policy any program can load and run.

    from mp_rl.policy import Policy

    policy = Policy.load("runs/20261205-101500-trading")  # best.pt (final.pt if none), on the CPU
    env = policy.make_env()                                 # the run's env, with the wrappers it trained with
    obs, _ = env.reset(seed=0)
    done = False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy.act(obs))
        done = terminated or truncated

`Policy.load` takes a run folder or one of its checkpoint files, and rebuilds the network from what
the run recorded: its config, and the widths the checkpoint was saved at (a network that grew while
it trained comes back at its grown size). Observations are the ones the run's env gives: the network
scales them itself (uint8 pixels to 0..1), and Atari's preprocessing and frame stacking are wrappers
of the env, so the frame-stacking state is the env's. Drive the env `make_env` returns, or stack and
preprocess frames the same way yourself. Everything runs under `torch.inference_mode`.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from mp_rl.agent.envs import env_factory, probe
from mp_rl.agent.envspec import EnvError
from mp_rl.agent.models import q_values
from mp_rl.config import Config, ConfigError
from mp_rl.evaluate import EvaluateError, load_policy
from mp_rl.runfolder import CONFIG


class PolicyError(ValueError):
    """What was wrong with a run folder, a checkpoint or an observation; str() is the one line to show."""


def locate(source: str | Path, checkpoint: str = "best") -> tuple[Path, str]:
    """(run folder, checkpoint) of a run folder or a checkpoint file inside one (runs/<id>/checkpoints/x.pt)."""
    path = Path(source).expanduser().resolve()
    if path.is_file() and checkpoint != "best":
        raise PolicyError(f"{source} is a checkpoint file already: it takes no checkpoint {checkpoint!r}")
    if path.is_file():
        run_dir = next((p for p in path.parents if (p / CONFIG).is_file()), None)
        if run_dir is None:
            raise PolicyError(f"{source}: a checkpoint outside any run folder (no {CONFIG} above it)")
        return run_dir, str(path)
    if not path.is_dir():
        raise PolicyError(f"{source}: no such run folder or checkpoint")
    return path, checkpoint


class Policy:
    """A run's Q-network and what is needed to act with it: `act`, `q_values`, `make_env`."""

    def __init__(self, net: torch.nn.Module, cfg: Config, device: torch.device):
        self.net, self.cfg, self.device = net.to(device).eval(), cfg, device
        spec = probe(cfg.env)
        self.obs_shape, self.n_actions = tuple(spec.obs_shape), spec.n_actions

    @classmethod
    def load(cls, source: str | Path, checkpoint: str = "best", device: str = "cpu",
             trust_imports: bool = False) -> Policy:  # fmt: skip
        """The policy of a run folder (`checkpoint`: best, final or a path) or of a checkpoint file.
        A run whose config imports code outside mp_rl needs `trust_imports` (as `--trust-imports`)."""
        run_dir, which = locate(source, checkpoint)
        try:
            cfg, net = load_policy(run_dir, which, trust_imports)
        except (EvaluateError, EnvError, ConfigError) as exc:
            raise PolicyError(str(exc)) from None
        try:
            return cls(net, cfg, torch.device(device))
        except (RuntimeError, AssertionError) as exc:  # "nonsense", "cuda:7" on one GPU, CUDA absent
            raise PolicyError(f"device {device!r}: {type(exc).__name__}: {str(exc)[:100]}") from None

    def _batch(self, obs) -> tuple[torch.Tensor, bool]:
        x = torch.as_tensor(np.asarray(obs))
        if tuple(x.shape) == self.obs_shape:
            return x.unsqueeze(0).to(self.device), True
        if tuple(x.shape[1:]) == self.obs_shape:
            return x.to(self.device), False
        raise PolicyError(f"observation of shape {tuple(x.shape)}: this policy takes {self.obs_shape} "
                          f"or a batch of them")  # fmt: skip

    def q_values(self, obs) -> np.ndarray:
        """Each action's value: (n_actions,) for one observation, (B, n_actions) for a batch."""
        x, single = self._batch(obs)
        with torch.inference_mode():
            q = q_values(self.net(x)).float().cpu().numpy()
        return q[0] if single else q

    def act(self, obs, epsilon: float = 0.0, rng: np.random.Generator | None = None):
        """The greedy action (an int), or one per row of a batch (an array); with `epsilon`, a uniformly
        random action with that probability (from `rng`, default a fresh generator)."""
        q = self.q_values(obs)
        greedy = q.argmax(axis=-1)
        if epsilon <= 0:
            return int(greedy) if q.ndim == 1 else greedy
        rng = rng or np.random.default_rng()
        explore = rng.random(greedy.shape) < epsilon
        chosen = np.where(explore, rng.integers(0, self.n_actions, greedy.shape), greedy)
        return int(chosen) if q.ndim == 1 else chosen

    def make_env(self, render_mode: str | None = None) -> gym.Env:
        """One env as the run made it (its id, kwargs, wrappers and time limit)."""
        return env_factory(self.cfg.env, render_mode)()
