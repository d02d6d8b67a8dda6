"""IQN: a network asked at any quantile fractions, deterministic when it acts, and a loss that recovers
a known return distribution."""

from __future__ import annotations

import copy

import pytest
import torch

from mp_rl.agent.iqn import ACTING
from mp_rl.agent.losses import LossSpec, loss_terms
from mp_rl.agent.models import build_q_network, q_values
from mp_rl.agent.quantiles import midpoints


@pytest.mark.parametrize("merge", ["head", "hidden"])
@pytest.mark.parametrize("dueling", [False, True])
@pytest.mark.parametrize("shape", [(4,), (10, 10, 4), (4, 84, 84)])
def test_it_answers_at_any_fractions_and_acts_on_fixed_ones(shape, dueling, merge):
    net = build_q_network(shape, 3, (16, 16), dueling, implicit=True, merge=merge)
    x = torch.rand(2, *shape)
    assert net(x, torch.rand(2, 7)).shape == (2, 3, 7)
    z = net(x)
    assert z.shape == (2, 3, 1 if merge == "head" else ACTING) and q_values(z).shape == (2, 3)
    assert torch.equal(q_values(net(x)), q_values(z)), "the acting fractions are fixed: a deterministic policy"
    at_all = net(x, midpoints(ACTING).expand(2, -1))
    assert torch.allclose(q_values(z), q_values(at_all), atol=1e-6), "the Q-value is the mean over the 32"


def test_the_fraction_changes_the_answer_and_only_its_own_row():
    torch.manual_seed(0)
    net = build_q_network((4,), 2, (32, 32), False, implicit=True)
    x = torch.rand(1, 4).expand(2, -1)
    z = net(x, torch.tensor([[0.1, 0.9], [0.1, 0.5]]))
    assert torch.allclose(z[0, :, 0], z[1, :, 0]), "the same observation at the same fraction"
    assert not torch.allclose(z[0, :, 1], z[1, :, 1])


@pytest.mark.system  # trains for seconds, as QR-DQN's bandit does
@pytest.mark.parametrize("merge", ["head", "hidden"])
def test_it_recovers_a_known_return_distribution(merge):
    """One state, two arms, episodes of one step: arm 0 pays U(0, 10), arm 1 U(5, 25). The quantile
    function at fraction tau is 10 tau and 5 + 20 tau; the learned one must be within 0.7 of them
    (kappa = 1 pulls each level slightly toward the middle) at fractions it was never asked exactly."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = build_q_network((3,), 2, (64, 64), False, implicit=True, merge=merge)
    target = copy.deepcopy(net)  # discount 0: the target network's answer is multiplied away
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    spec = LossSpec("iqn", 32)
    for step in range(1500):
        if step == 1000:
            opt.param_groups[0]["lr"] = 2e-4
        action = torch.randint(0, 2, (64,))
        reward = torch.where(action == 0, 10 * torch.rand(64), 5 + 20 * torch.rand(64))
        batch = {"obs": torch.ones(64, 3), "next_obs": torch.ones(64, 3), "action": action, "reward": reward,
                 "discount": torch.zeros(64)}  # fmt: skip
        loss, td, _ = loss_terms(net, target, batch, spec)
        assert td.shape == (64,)
        opt.zero_grad()
        loss.backward()
        opt.step()
    taus = torch.tensor([[0.1, 0.25, 0.5, 0.75, 0.9]])
    with torch.no_grad():
        z = net(torch.ones(1, 3), taus)[0]
    assert (z[0] - 10 * taus[0]).abs().max() < 0.7, z[0]
    assert (z[1] - (5 + 20 * taus[0])).abs().max() < 0.7, z[1]
    assert q_values(net(torch.ones(1, 3))).argmax().item() == 1
