"""The learner's loss and its targets: Double DQN, QR-DQN and IQN, each optionally with Munchausen targets.

Every target is n-step: a batch row carries the discounted n-step reward `reward` and `discount` =
gamma^n (0 where the episode ended inside the n steps).

- **Double DQN** (van Hasselt et al. 2016): the online network picks the next action, the target
  network values it. QR-DQN and IQN do the same with their mean over quantiles, and the target is the
  whole shifted distribution of that action, learned with the quantile Huber loss.
- **IQN** (Dabney et al. 2018): the online network is asked at `n` fractions sampled per row, the
  target network at `n` others; the Double DQN action choice uses the fixed acting fractions.
- **Munchausen** (Vieillard, Pietquin & Geist 2020): with pi = softmax(q / tau) of the target network,
  y = r + alpha * tau * clip(log pi(a | s), l0, 0) + discount * sum_a' pi(a' | s') (q(s', a') - tau log pi(a' | s')).
  The soft expectation replaces Double DQN's choice; for quantiles, q(s', a') is each quantile in
  turn (M-IQN, the paper's appendix). With n-step returns the bonus is the first action's alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mp_rl.agent import quantiles
from mp_rl.agent.iqn import sample_taus
from mp_rl.agent.models import q_values


@dataclass(frozen=True)
class Munchausen:
    alpha: float = 0.9  # the bonus's scale
    tau: float = 0.03  # the softmax policy's temperature
    clip: float = -1.0  # log pi's lower clip, l0


@dataclass(frozen=True)
class LossSpec:
    """What a learner's config asks of its loss."""

    algo: str = "dqn"  # dqn | qr_dqn | iqn
    n_quantiles: int = 50  # iqn: fractions sampled per row, for the online and for the target network
    munchausen: Munchausen | None = None

    @classmethod
    def of(cls, lc) -> LossSpec:
        m = Munchausen(lc.munchausen_alpha, lc.munchausen_tau, lc.munchausen_clip) if lc.munchausen else None
        return cls(lc.algo, lc.n_quantiles, m)


def munchausen_target(
    reward: torch.Tensor, discount: torch.Tensor, action: torch.Tensor, q_now: torch.Tensor, nxt: torch.Tensor,
    m: Munchausen,
) -> torch.Tensor:  # fmt: skip
    """The Munchausen target from the target network's Q-values at s (`q_now`, (B, A)) and its output at
    s' (`nxt`: Q-values (B, A) or quantiles (B, A, N)): (B,) or (B, N)."""
    log_pi = F.log_softmax(q_now.float() / m.tau, dim=1)  # log-sum-exp: stable at tau 0.03
    bonus = m.alpha * m.tau * log_pi.gather(1, action.long().view(-1, 1)).squeeze(1).clamp(min=m.clip)
    log_pi_next = F.log_softmax(q_values(nxt).float() / m.tau, dim=1)
    pi_next = log_pi_next.exp()
    if nxt.dim() == 3:  # each quantile level: sum_a' pi(a') (z_j(a') - tau log pi(a'))
        soft = (pi_next.unsqueeze(2) * (nxt.float() - m.tau * log_pi_next.unsqueeze(2))).sum(dim=1)
        return (reward + bonus).unsqueeze(1) + discount.unsqueeze(1) * soft
    soft = (pi_next * (nxt.float() - m.tau * log_pi_next)).sum(dim=1)
    return reward + bonus + discount * soft


def double_target(
    reward: torch.Tensor, discount: torch.Tensor, best: torch.Tensor, nxt: torch.Tensor
) -> torch.Tensor:  # fmt: skip
    """r + discount * the target network's value (or quantiles) of the online network's choice."""
    if nxt.dim() == 3:
        return reward.unsqueeze(1) + discount.unsqueeze(1) * quantiles.pick(nxt, best).float()
    return reward + discount * nxt.gather(1, best.unsqueeze(1)).squeeze(1).float()


def loss_terms(
    online: nn.Module, target: nn.Module, b: dict[str, torch.Tensor], spec: LossSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(loss, each row's TD error, mean Q) of a batch: importance-weighted where the batch carries
    weights; for quantiles the TD error is the row's quantile loss, the magnitude its priority follows."""
    rows, device = b["obs"].shape[0], b["obs"].device
    implicit = spec.algo == "iqn"
    taus = sample_taus(rows, spec.n_quantiles, device) if implicit else None
    out = online(b["obs"], taus) if implicit else online(b["obs"])
    with torch.no_grad():
        nxt = target(b["next_obs"], sample_taus(rows, spec.n_quantiles, device)) if implicit else target(b["next_obs"])
        if spec.munchausen is not None:
            y = munchausen_target(b["reward"], b["discount"], b["action"], q_values(target(b["obs"])), nxt,
                                  spec.munchausen)  # fmt: skip
        else:
            best = q_values(online(b["next_obs"])).argmax(dim=1)  # Double DQN: online picks, target values
            y = double_target(b["reward"], b["discount"], best, nxt)
    if out.dim() == 3:  # quantiles (B, A, N): against the whole target distribution
        z = quantiles.pick(out, b["action"]).float()
        per_row = quantiles.quantile_huber(z, y, taus=taus)
        td, q_mean = per_row.detach(), z.detach().mean()
    else:
        q = out.gather(1, b["action"].long().unsqueeze(1)).squeeze(1).float()
        per_row = F.smooth_l1_loss(q, y, reduction="none")
        td, q_mean = (y - q).detach(), q.detach().mean()
    loss = (per_row * b["weight"]).mean() if "weight" in b else per_row.mean()
    return loss, td, q_mean
