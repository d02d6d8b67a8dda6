"""The Impala CNN: one network for MinAtar grids and Atari frames, a width multiplier, and a spectral norm
whose every copy divides by the learner's sigma."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mp_rl.agent.impala import SpectralConv, power_iterations
from mp_rl.agent.losses import LossSpec, Munchausen, loss_terms
from mp_rl.agent.models import build_q_network, q_values
from mp_rl.shm.board import flatten_parameters


def impala(shape, scale=1.0, spectral=False, implicit=False, dueling=True) -> nn.Module:
    return build_q_network(shape, 5, (), dueling, "impala_cnn", cnn_scale=scale, spectral=spectral, implicit=implicit)


@pytest.mark.parametrize(("shape", "side"), [((10, 10, 4), 5), ((4, 84, 84), 6), ((3, 64, 48), 6), ((2, 3, 3), 3)])
def test_it_takes_minatar_grids_and_atari_frames_alike(shape, side):
    net = impala(shape)
    assert net(torch.zeros(2, *shape)).shape == (2, 5)
    fc = next(m for m in net[-1] if isinstance(m, nn.Linear))
    assert fc.in_features == 32 * side * min(side, 6), "the map the adaptive max-pool ends at"


def test_the_width_multiplier_scales_every_layer():
    small, wide = impala((10, 10, 4), 1.0), impala((10, 10, 4), 2.0)
    convs = lambda net: [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]  # noqa: E731
    assert convs(wide) == [2 * c for c in convs(small)]
    assert next(m for m in wide[-1] if isinstance(m, nn.Linear)).out_features == 512


def test_the_spectral_norm_divides_by_the_largest_singular_value():
    torch.manual_seed(0)
    conv = SpectralConv(8)
    before = conv.u.detach().clone()
    conv(torch.zeros(1, 8, 5, 5))
    assert torch.equal(conv.u, before), "the forward pass changes nothing: actors never iterate"
    for _ in range(300):  # one power iteration per update: a learner makes thousands
        conv.power_iteration()
    top = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert conv.sigma().item() == pytest.approx(top.item(), rel=1e-3)
    normalised = conv.weight.detach().flatten(1) / conv.sigma().detach()
    assert torch.linalg.matrix_norm(normalised, ord=2).item() == pytest.approx(1.0, rel=1e-3)


def test_a_copy_with_the_published_weights_acts_exactly_as_the_learner():
    """The power iteration's vector travels with the weights (a parameter): an actor's copy, whose own
    vector started elsewhere, computes the learner's Q-values once it holds the published flat tensor."""
    shape = (10, 10, 4)
    torch.manual_seed(0)
    learner = impala(shape, 0.5, spectral=True, implicit=True)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    for _ in range(5):
        power_iterations(learner)
        opt.zero_grad()
        q_values(learner(torch.rand(4, *shape))).pow(2).mean().backward()
        opt.step()
    torch.manual_seed(1)
    actor = impala(shape, 0.5, spectral=True, implicit=True)
    flat = flatten_parameters(actor)
    flat.copy_(torch.cat([p.detach().reshape(-1) for p in learner.parameters()]))
    x = torch.rand(6, *shape)
    assert torch.equal(q_values(learner(x)), q_values(actor(x)))
    assert not any(p.grad is not None for n, p in learner.named_parameters() if n.endswith(".u"))


@pytest.mark.parametrize(("algo", "munchausen"), [("dqn", False), ("dqn", True), ("iqn", False), ("qr_dqn", True)])
def test_every_loss_trains_a_spectrally_normalised_network(algo, munchausen):
    """The loss calls the online network more than once (Double DQN's choice): nothing in its forward pass
    may change what the backward pass needs."""
    shape = (10, 10, 4)
    kw = dict(spectral=True, quantiles=4 if algo == "qr_dqn" else 0, implicit=algo == "iqn")
    online = build_q_network(shape, 3, (), True, "impala_cnn", cnn_scale=0.25, **kw)
    target = build_q_network(shape, 3, (), True, "impala_cnn", cnn_scale=0.25, **kw)
    opt = torch.optim.Adam(online.parameters(), lr=1e-3, fused=True)
    b = {"obs": torch.rand(8, *shape), "next_obs": torch.rand(8, *shape), "action": torch.randint(0, 3, (8,)),
         "reward": torch.rand(8), "discount": torch.full((8,), 0.97)}  # fmt: skip
    spec = LossSpec(algo, 4, Munchausen() if munchausen else None)
    for _ in range(2):
        power_iterations(online)
        loss, td, _ = loss_terms(online, target, b, spec)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(online.parameters(), 10.0)
        opt.step()
    assert torch.isfinite(loss) and td.shape == (8,)
    assert all(p.grad is None for n, p in online.named_parameters() if n.endswith(".u"))
