"""QR-DQN (Dabney et al. 2018): the return distribution as N quantiles, learned with the quantile Huber loss.

The network's head gives (batch, actions, N) quantile values at the midpoints tau_i = (2i + 1) / 2N;
acting and Double DQN's action choice use their mean, the Q-value (`models.q_values`). IQN
(`agent.iqn`) learns at sampled levels with the same loss.
"""

from __future__ import annotations

import torch


def midpoints(n: int, device: torch.device | None = None) -> torch.Tensor:
    """tau_i = (2i + 1) / 2n, the quantile levels the n outputs estimate.

    >>> midpoints(4).tolist()
    [0.125, 0.375, 0.625, 0.875]
    """
    return (torch.arange(n, device=device, dtype=torch.float32) * 2 + 1) / (2 * n)


def quantile_huber(
    pred: torch.Tensor, target: torch.Tensor, kappa: float = 1.0, taus: torch.Tensor | None = None
) -> torch.Tensor:  # fmt: skip
    """Per-row loss of predicted quantiles (B, N) against target samples (B, M): the mean over targets, summed
    over quantiles, of |tau_i - 1{u < 0}| * Huber_kappa(u) / kappa with u = target_j - pred_i. The levels
    tau are QR-DQN's midpoints, or IQN's sampled fractions (B, N).

    >>> rows = quantile_huber(torch.zeros(1, 2), torch.zeros(1, 3))
    >>> rows.tolist()  # no error, no loss
    [0.0]
    """
    taus = midpoints(pred.shape[1], pred.device).view(1, -1, 1) if taus is None else taus.unsqueeze(2)
    u = target.unsqueeze(1) - pred.unsqueeze(2)  # (B, N, M)
    huber = torch.where(u.abs() <= kappa, 0.5 * u.pow(2), kappa * (u.abs() - 0.5 * kappa))
    weight = (taus - (u.detach() < 0).float()).abs()
    return (weight * huber / kappa).mean(dim=2).sum(dim=1)


def pick(z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """The quantiles (B, N) of each row's action from (B, A, N)."""
    index = actions.long().view(-1, 1, 1).expand(-1, 1, z.shape[2])
    return z.gather(1, index).squeeze(1)
