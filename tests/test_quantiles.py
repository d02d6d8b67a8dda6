"""QR-DQN: the quantile Huber loss, the heads' shapes, and quantiles that recover a known return distribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mp_rl.agent.models import build_q_network, q_values
from mp_rl.agent.quantiles import midpoints, pick, quantile_huber


def test_the_loss_is_minimised_at_the_targets_quantiles():
    """For samples of U(0, 100) the tau-quantile is 100 tau: moving any output away from it costs more. (The
    spread is wide against kappa = 1: inside kappa the loss is quadratic and its minimum an expectile.)"""
    target = 100 * torch.rand(1, 20_000, generator=torch.Generator().manual_seed(0))
    best = 100 * midpoints(4).view(1, -1)
    base = quantile_huber(best, target).item()
    for i in range(4):
        for shift in (-5.0, 5.0):
            moved = best.clone()
            moved[0, i] += shift
            assert quantile_huber(moved, target).item() > base


@pytest.mark.parametrize("dueling", [False, True])
@pytest.mark.parametrize("shape", [(4,), (10, 10, 4), (4, 84, 84)])
def test_quantile_heads_give_actions_by_quantiles_and_their_mean_is_q(shape, dueling):
    net = build_q_network(shape, 3, (16,), dueling, quantiles=5)
    z = net(torch.zeros((2, *shape)))
    assert z.shape == (2, 3, 5) and q_values(z).shape == (2, 3)
    assert pick(z, torch.tensor([2, 0])).shape == (2, 5)


@pytest.mark.system
def test_the_learner_recovers_a_bandits_return_distributions(tmp_path, shm_name):
    """One state, two arms: arm 0 pays 0 or 10 (a coin), arm 1 pays U(0, 20); episodes of one step. Each
    learned output must be where the quantile Huber loss has its minimum for the true distribution: near 0
    below the coin's median and near 10 above it (inside kappa of a jump it is pulled slightly), 20 tau
    for the uniform arm."""
    from mp_rl.agent.learner import Learner
    from mp_rl.config import load_config
    from mp_rl.shm import RateLimit
    from mp_rl.shm.manifest import SharedRun
    from mp_rl.start.preflight import plan

    cfg = load_config("configs/smoke.yaml", ["learner.algo=qr_dqn", "learner.n_quantiles=8", "learner.lr=0.01",
                                             "learner.prefetch=false", "learner.batch_size=64"])  # fmt: skip
    p = plan(cfg)
    shared = SharedRun.create(tmp_path, shm_name("q").split(".")[1], p.ring, RateLimit(None, 1, 0, 32, 64), p.numel, 4)
    try:
        torch.manual_seed(0)
        learner = Learner(cfg, shared, p.spec, p.knobs.batch_size)
        rng, block = np.random.default_rng(0), p.ring.block
        for _ in range(4096 // block):
            action = rng.integers(0, 2, block)
            reward = np.where(action == 0, 10.0 * rng.integers(0, 2, block), 20 * rng.random(block))
            rows = {"obs": np.zeros((block, 4), np.float32), "action": action, "reward": reward.astype(np.float32),
                    "discount": np.zeros(block, np.float32), "next_obs": np.zeros((block, 4), np.float32)}  # fmt: skip
            shared.ring.writer(1).write(rows)
        for _ in range(1500):
            assert learner.step(timeout=1.0)
        z = learner.online(torch.zeros(1, 4))[0].detach()
        learner.close()
    finally:
        shared.close()
    for arm, truth in ((0, torch.tensor([0.0, 10.0])), (1, torch.linspace(0, 20, 2001))):
        want = minimisers(truth, 8)
        assert np.abs(z[arm].numpy() - want).max() < 0.5, (arm, z[arm], want)
    assert np.abs(minimisers(torch.linspace(0, 20, 2001), 8) - 20 * midpoints(8).numpy()).max() < 0.5  # ~ quantiles


def minimisers(truth: torch.Tensor, n: int) -> np.ndarray:
    """For each of n quantile levels, the value that minimises the quantile Huber loss against `truth`
    (equally weighted outcomes), found on a grid."""
    grid = torch.linspace(-2, 22, 2401)
    out = []
    for i in range(n):
        pred = torch.full((len(grid), n), 0.0)
        pred[:, i] = grid
        losses = quantile_huber(pred, truth.expand(len(grid), -1))  # the other levels add a constant
        out.append(float(grid[losses.argmin()]))
    return np.array(out)
