"""The policy as a moving average of the online weights (`learner.policy_ema`).

A second network whose parameters are views of one flat tensor, like the online network's, so
folding the online weights in is one `lerp_` over the whole model and publishing it is one copy.
The learner folds at each publish, with the per-update decay raised to the updates since the last
fold, so the average's horizon (about 1 / (1 - decay) updates) does not depend on the cadence.
"""

from __future__ import annotations

import copy

import torch

from mp_rl.agent import growth
from mp_rl.shm.board import flatten_parameters


class PolicyAverage:
    """An exponential moving average of a network's weights, held in `net` (which it takes over)."""

    def __init__(self, net: torch.nn.Module, decay: float):
        self.decay = decay
        self.net = net.requires_grad_(False)
        self.flat = flatten_parameters(self.net)

    @classmethod
    def started_at(cls, online: torch.nn.Module, decay: float) -> PolicyAverage:
        """An average whose first value is `online`'s weights (a copy)."""
        return cls(copy.deepcopy(online), decay)

    def fold(self, online_flat: torch.Tensor, updates: int) -> None:
        """`updates` steps of decay at once: the average moves 1 - decay**updates of the way."""
        with torch.no_grad():
            self.flat.lerp_(online_flat, 1.0 - self.decay**updates)

    def regrown(self, online: torch.nn.Module, layers: list[growth.Layer]) -> PolicyAverage:
        """This average at the widths of `online`, the online network just rebuilt by the growth plan
        `layers`: its units kept or dropped where the online network's were, and the new units the
        online network's own (fresh inputs, zero outputs), so the two agree on every added weight."""
        net = copy.deepcopy(online)
        growth.transfer(self.net, net, growth.plan_like(layers, self.net, net))
        return PolicyAverage(net, self.decay)
