"""Munchausen targets against a hand computation, and their limits."""

from __future__ import annotations

import math

import pytest
import torch

from mp_rl.agent.losses import Munchausen, double_target, munchausen_target


def log_softmax(q: list[float], tau: float) -> list[float]:
    top = max(x / tau for x in q)
    lse = top + math.log(sum(math.exp(x / tau - top) for x in q))
    return [x / tau - lse for x in q]


def by_hand(r: float, d: float, a: int, q_now: list[float], q_next: list[float], m: Munchausen) -> float:
    """y = r + alpha tau clip(log pi(a|s), l0, 0) + d sum_a' pi(a'|s') (q(s',a') - tau log pi(a'|s'))."""
    bonus = m.alpha * m.tau * max(log_softmax(q_now, m.tau)[a], m.clip)
    lp = log_softmax(q_next, m.tau)
    return r + bonus + d * sum(math.exp(g) * (q - m.tau * g) for q, g in zip(q_next, lp, strict=True))


@pytest.mark.parametrize("action", [0, 1, 2])  # action 2's log-policy is under the clip: the bonus is l0's
def test_the_target_matches_a_hand_computation(action):
    m = Munchausen(alpha=0.9, tau=0.5, clip=-1.0)
    q_now, q_next = [1.0, 2.0, 0.5], [0.3, 0.1, 0.2]
    want = by_hand(1.5, 0.9, action, q_now, q_next, m)
    got = munchausen_target(torch.tensor([1.5]), torch.tensor([0.9]), torch.tensor([action]),
                            torch.tensor([q_now]), torch.tensor([q_next]), m)  # fmt: skip
    assert got.shape == (1,) and got.item() == pytest.approx(want, abs=1e-6)
    if action == 2:
        assert log_softmax(q_now, m.tau)[2] < m.clip  # the case the clip is for


def test_each_quantile_level_is_the_policys_soft_expectation():
    """M-IQN: level j of the target is sum_a' pi(a') (z_j(a') - tau log pi(a')), pi from the mean over levels."""
    m = Munchausen(alpha=0.9, tau=0.3, clip=-1.0)
    z = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 3.0, 3.0]]])  # (B=1, A=2, N=3): means 1 and 3
    got = munchausen_target(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0]), torch.tensor([[0.0, 0.0]]),
                            z, m)  # fmt: skip
    lp = log_softmax([1.0, 3.0], m.tau)
    bonus = m.alpha * m.tau * max(math.log(0.5), m.clip)
    for j in range(3):
        soft = sum(math.exp(lp[a]) * (z[0, a, j].item() - m.tau * lp[a]) for a in range(2))
        assert got[0, j].item() == pytest.approx(bonus + soft, abs=1e-6)


def test_without_the_bonus_and_near_zero_temperature_it_is_the_max_target():
    q_next = torch.tensor([[0.3, 1.7, -2.0], [5.0, 4.0, 4.5]])
    r, d = torch.tensor([1.0, -1.0]), torch.tensor([0.99, 0.0])
    got = munchausen_target(r, d, torch.tensor([0, 1]), torch.zeros(2, 3), q_next, Munchausen(0.0, 1e-4, -1.0))
    assert torch.allclose(got, double_target(r, d, q_next.argmax(dim=1), q_next), atol=1e-3)
