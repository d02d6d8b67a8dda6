"""The Impala CNN (Espeholt et al. 2018), as "Beyond The Rainbow" (Clark et al. 2025) uses it in a DQN:
three stacks of a 3x3 convolution, a 3x3 max-pool of stride 2 and two residual blocks, then an
adaptive max-pool, 256 units and the head. Optional spectral normalization on the residual blocks'
convolutions, where BTR puts it.

One network for every image size: a stack's max-pool halves the map only while it is larger than the
6x6 the adaptive pool ends at, so 84x84 Atari frames go 84 -> 42 -> 21 -> 11 -> 6x6 and 10x10 MinAtar
grids 10 -> 5 -> 5 -> 5 (no 2x2 map that has thrown away where things are).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS, FC, POOL = (16, 32, 32), 256, 6


class SpectralConv(nn.Conv2d):
    """A 3x3 convolution whose weight is divided by its largest singular value (Miyato et al. 2018).

    sigma = u W v with v = normalize(W^T u): a pure function of the weight and the vector `u`, so the
    forward pass changes nothing and every copy holding the same parameters computes the same output.
    `u` is sharpened toward the top singular vector by one power iteration per update, which the
    learner runs before its loss (`power_iterations`); actors and the evaluator never run it. `u` is a
    parameter that takes no gradient, not a buffer: the weight board publishes parameters, so every
    actor divides by the learner's sigma (a buffer would stay at each copy's random start). Adam
    and the gradient clip skip it (it never has a gradient)."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, padding=1)
        self.u = nn.Parameter(F.normalize(torch.randn(channels), dim=0), requires_grad=False)

    @torch.no_grad()
    def power_iteration(self) -> None:
        w = self.weight.detach().float().flatten(1)
        self.u.copy_(F.normalize(w @ F.normalize(w.t() @ self.u.float(), dim=0), dim=0))

    def sigma(self) -> torch.Tensor:
        # In float32 whatever autocast does, so the learner's sigma is the actors'. `u` normalised
        # here too: a Polyak-averaged target network's `u` is not of length 1.
        with torch.autocast(self.weight.device.type, enabled=False):
            w, u = self.weight.float().flatten(1), F.normalize(self.u.detach().float(), dim=0)
            v = F.normalize(w.t() @ u, dim=0).detach()
            return u @ w @ v  # the gradient flows through the weight only, as in Miyato et al.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight / self.sigma().to(self.weight.dtype), self.bias)


def power_iterations(net: nn.Module) -> None:
    """One power iteration in every spectrally normalised convolution of `net` (none: nothing to do)."""
    for m in net.modules():
        if isinstance(m, SpectralConv):
            m.power_iteration()


class Residual(nn.Module):
    def __init__(self, channels: int, spectral: bool):
        super().__init__()
        conv = (lambda: SpectralConv(channels)) if spectral else (lambda: nn.Conv2d(channels, channels, 3, padding=1))
        self.conv0, self.conv1 = conv(), conv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


def impala_trunk(c: int, h: int, w: int, channels: tuple[int, ...], fc: int, spectral: bool = False) -> list[nn.Module]:
    """The Impala CNN over (C, H, W) images up to its hidden layer's ReLU (`fc` units); the caller adds the
    head. `channels` are the stacks' widths (16, 32, 32 times the width multiplier)."""
    layers: list[nn.Module] = []
    for out in channels:
        layers.append(nn.Conv2d(c, out, 3, padding=1))
        if max(h, w) > POOL:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            h, w = (h + 1) // 2, (w + 1) // 2
        layers += [Residual(out, spectral), Residual(out, spectral)]
        c = out
    h, w = min(h, POOL), min(w, POOL)
    return [*layers, nn.ReLU(), nn.AdaptiveMaxPool2d((h, w)), nn.Flatten(), nn.Linear(c * h * w, fc), nn.ReLU()]
