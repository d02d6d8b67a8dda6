"""IQN (Dabney, Ostrovski, Silver & Munos 2018): the return's whole quantile function, learned at
sampled fractions.

The network reads a quantile fraction tau in [0, 1] beside the observation: tau is embedded as
cos(pi i tau), i = 0 .. 63, through a linear layer and a ReLU, and multiplied element by element into
a layer's input features. Everything after that product is the plain network's, so one forward pass
gives every action's value at every fraction asked for: (B, A, N). Where (`learner.iqn_merge`):

- `head` (the default): the features the head reads. Only the embedding and the head run once per
  fraction: with 8 fractions a CPU learner on MinAtar's network makes 5 times the updates it makes
  with the paper's merge (docs/learners.md).
- `hidden`: the features the last hidden layer reads: after the convolutions of a CNN, as the paper
  has it. Every layer from there runs once per fraction.

Called with the observation alone, it answers the Q-value every actor, the evaluator and Double
DQN's action choice use (`models.q_values`): the mean over K = 32 fixed fractions, the midpoints of 32
equal bins, the same for every caller and every call, so a policy is deterministic. With the `head`
merge the head is affine (a linear or dueling layer), so the mean of its answers is its answer to the
mean embedding: one row per observation, not 32, returned as (B, A, 1). That is exact up to float
rounding and makes the learner's Double DQN choice and every actor's step as cheap as plain DQN's
(docs/learners.md has the figures). `hidden` has ReLUs after the merge and answers at all 32:
(B, A, 32). The learner passes sampled fractions instead (`learner.n_quantiles` of them for the
online network and as many for the target's), and the quantile Huber loss weighs each by its own fraction
(`quantiles.quantile_huber`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mp_rl.agent.quantiles import midpoints

COSINES, ACTING = 64, 32  # the paper's embedding size n and the K fractions that make a Q-value


MERGES = ("head", "hidden")


class ImplicitQuantiles(nn.Module):
    """A plain Q-network (`Sequential(prep, Sequential(..., head))`) cut before its head (`merge` head)
    or its last hidden linear layer (hidden), with the fraction embedding multiplied in there.
    forward(obs, taus=None) -> (B, A, N)."""

    def __init__(self, net: nn.Sequential, merge: str = "head"):
        super().__init__()
        prep, body = net[0], net[-1]
        if merge == "head":
            cut, head = len(body) - 1, body[-1]
            features = getattr(head, "value", head).in_features  # a dueling head's two layers read the same
        else:
            cut = max(i for i, m in enumerate(body[:-1]) if isinstance(m, nn.Linear))
            features = body[cut].in_features
        self.prep, self.torso, self.post = prep, body[:cut], body[cut:]
        self.affine = merge == "head"  # nothing but the (linear or dueling) head after the product
        self.embed = nn.Linear(COSINES, features)
        # Not parameters: constants every copy computes the same, so the board carries none of them.
        self.register_buffer("freqs", math.pi * torch.arange(COSINES, dtype=torch.float32), persistent=False)
        self.register_buffer("acting", midpoints(ACTING), persistent=False)

    def forward(self, obs: torch.Tensor, taus: torch.Tensor | None = None) -> torch.Tensor:
        h = self.torso(self.prep(obs))  # (B, F)
        if taus is None and self.affine:  # mean_k head(h * e_k) = head(h * mean_k e_k): the head is affine
            return self.post(h * self.embedding(self.acting).mean(0)).unsqueeze(-1)  # (B, A, 1)
        if taus is None:
            taus = self.acting.expand(h.shape[0], -1)
        e = self.embedding(taus)  # (B, N, F)
        q = self.post((h.unsqueeze(1) * e).flatten(0, 1))  # (B * N, A)
        return q.view(h.shape[0], taus.shape[1], -1).transpose(1, 2)

    def embedding(self, taus: torch.Tensor) -> torch.Tensor:
        """relu(W cos(pi i tau) + b) for every fraction: (..., N) -> (..., N, F)."""
        # The cosines in float32 whatever autocast does: tau near 1 times pi * 63 needs the precision.
        return F.relu(self.embed(torch.cos(taus.float().unsqueeze(-1) * self.freqs)))


def sample_taus(rows: int, n: int, device: torch.device) -> torch.Tensor:
    """n fractions per row, uniform on [0, 1), drawn afresh for every update."""
    return torch.rand(rows, n, device=device)
