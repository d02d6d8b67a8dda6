"""Q-networks chosen from the observation: the Nature CNN for Atari-sized frames, MinAtar's small CNN for
small images (channels first or last; from 3x3), an MLP for vectors and, flattened, anything else;
optional dueling head. The Impala CNN (`agent.impala`) by choice, for any image. With `learner.algo:
iqn` any of them reads quantile fractions too (`agent.iqn`).

`learner.network` picks one by hand; `check_network` is what preflight runs so that a network that cannot
take the observation is one line before anything starts, never a crash loop in the actors.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from mp_rl.agent import impala
from mp_rl.agent.iqn import ImplicitQuantiles

if TYPE_CHECKING:
    from mp_rl.agent.envspec import EnvSpec
    from mp_rl.config import LearnerConfig

NETWORKS = ("auto", "nature_cnn", "small_cnn", "impala_cnn", "mlp")
NATURE_MIN = 36  # the Nature CNN's three convolutions need at least 36x36 pixels


class NetworkError(ValueError):
    """`learner.network` cannot take this observation; str() is the one line to show."""


class DuelingHead(nn.Module):
    """Q = V + A - mean(A): separates the state value from the action advantages. With `quantiles` > 0
    each of V and A is that many quantile values, and so is each action's output (QR-DQN)."""

    def __init__(self, features: int, n_actions: int, quantiles: int = 0):
        super().__init__()
        self.n_actions, self.quantiles = n_actions, quantiles
        self.value = nn.Linear(features, max(quantiles, 1))
        self.advantage = nn.Linear(features, n_actions * max(quantiles, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, v = self.advantage(h), self.value(h)
        if self.quantiles:
            a, v = a.view(-1, self.n_actions, self.quantiles), v.unsqueeze(1)
        return v + a - a.mean(dim=1, keepdim=True)


class QuantileHead(nn.Linear):
    """A linear layer to (batch, actions, quantiles)."""

    def __init__(self, features: int, n_actions: int, quantiles: int):
        super().__init__(features, n_actions * quantiles)
        self.n_actions, self.quantiles = n_actions, quantiles

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return super().forward(h).view(-1, self.n_actions, self.quantiles)


def head(features: int, n_actions: int, dueling: bool, quantiles: int = 0) -> nn.Module:
    if dueling:
        return DuelingHead(features, n_actions, quantiles)
    return QuantileHead(features, n_actions, quantiles) if quantiles else nn.Linear(features, n_actions)


def q_values(out: torch.Tensor) -> torch.Tensor:
    """Q-values from a network's output: as they are, or the mean of each action's quantiles."""
    return out.mean(dim=-1) if out.dim() == 3 else out


class Prep(nn.Module):
    """Observations as stored (uint8 frames, 0/1 grids, float vectors) to float32, scaled; images to (N, C, H, W)."""

    def __init__(self, scale: float, channels_last: bool = False):
        super().__init__()
        self.scale, self.channels_last = scale, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() * self.scale if self.scale != 1.0 else x.float()
        return x.permute(0, 3, 1, 2) if self.channels_last else x


def image_layout(shape: tuple[int, ...]) -> tuple[int, int, int, bool] | None:
    """(channels, height, width, channels_last) of a 3-D observation; None for any other rank.

    The channel axis is the smallest one at either end: (4, 84, 84) frame stacks, (10, 10, 4) MinAtar grids.

    >>> image_layout((4, 84, 84)), image_layout((10, 10, 4)), image_layout((8,))
    ((4, 84, 84, False), (4, 10, 10, True), None)
    """
    if len(shape) != 3:
        return None
    a, b, c = shape
    if c < min(a, b):
        return c, a, b, True
    return a, b, c, False


def scaled(n: int, scale: float) -> int:
    """A layer's width times `learner.cnn_scale`, at least 1."""
    return max(1, round(n * scale))


def nature_cnn(c: int, h: int, w: int, n_actions: int, dueling: bool, quantiles: int = 0,
               scale: float = 1.0) -> nn.Sequential:  # fmt: skip
    """Mnih et al. 2015 (about 1.7M parameters for 4 frames of 84x84); `scale` multiplies every width."""
    size = lambda x: ((x - 8) // 4 + 1 - 4) // 2 + 1 - 2  # noqa: E731 (the three convolutions, one side)
    c1, c2, c3, fc = (scaled(n, scale) for n in (32, 64, 64, 512))
    return nn.Sequential(
        nn.Conv2d(c, c1, 8, stride=4), nn.ReLU(),
        nn.Conv2d(c1, c2, 4, stride=2), nn.ReLU(),
        nn.Conv2d(c2, c3, 3, stride=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(c3 * size(h) * size(w), fc), nn.ReLU(), head(fc, n_actions, dueling, quantiles),
    )  # fmt: skip


def small_cnn(c: int, h: int, w: int, n_actions: int, dueling: bool, quantiles: int = 0,
              scale: float = 1.0) -> nn.Sequential:  # fmt: skip
    """MinAtar's reference network (Young & Tian 2019): one 3x3 convolution of 16 channels, 128 units;
    `scale` multiplies both."""
    c1, fc = scaled(16, scale), scaled(128, scale)
    return nn.Sequential(
        nn.Conv2d(c, c1, 3, stride=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(c1 * (h - 2) * (w - 2), fc), nn.ReLU(), head(fc, n_actions, dueling, quantiles),
    )  # fmt: skip


def mlp(width: int, n_actions: int, hidden: tuple[int, ...], dueling: bool, quantiles: int = 0) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, head(width, n_actions, dueling, quantiles))


def choose(obs_shape: tuple[int, ...], network: str = "auto") -> str:
    """The network `auto` means for this observation, or the one asked for; NetworkError if it cannot take it."""
    image = image_layout(obs_shape)
    if network == "auto":
        if image is None:
            return "mlp"
        side = min(image[1:3])
        return "nature_cnn" if side >= NATURE_MIN else "small_cnn" if side >= 3 else "mlp"
    need = {"nature_cnn": NATURE_MIN, "small_cnn": 3, "impala_cnn": 1}.get(network)
    if need is not None and (image is None or min(image[1:3]) < need):
        raise NetworkError(
            f"learner.network {network} needs (C, H, W) or (H, W, C) images of at least {need}x{need}; "
            f"the observation is {tuple(obs_shape)}"
        )
    if network not in NETWORKS:
        raise NetworkError(f"learner.network: unknown network {network!r}, one of {', '.join(NETWORKS)}")
    return network


def build_q_network(
    obs_shape: tuple[int, ...], n_actions: int, hidden: tuple[int, ...], dueling: bool,
    network: str = "auto", scale: float = 1.0, quantiles: int = 0, cnn_scale: float = 1.0,
    implicit: bool = False, spectral: bool = False, merge: str = "head",
) -> nn.Module:  # fmt: skip
    """The Q-network for an observation: raw stored observations in, Q-values (B, A) out, or with
    `quantiles` > 0 that many quantiles of each action's return (B, A, quantiles); `implicit`: IQN's
    network, forward(obs, taus=None) -> (B, A, N), its embedding at `merge`. `spectral`: the Impala
    CNN's spectral norm."""
    if implicit and quantiles:
        raise ValueError("an IQN network reads its quantile fractions: it has no fixed quantile head")
    kind = choose(tuple(obs_shape), network)
    if kind == "mlp":
        net = nn.Sequential(Prep(scale), mlp(math.prod(obs_shape), n_actions, hidden, dueling, quantiles))
    else:
        c, h, w, last = image_layout(tuple(obs_shape))
        if kind == "impala_cnn":
            channels, fc = tuple(scaled(n, cnn_scale) for n in impala.CHANNELS), scaled(impala.FC, cnn_scale)
            trunk = impala.impala_trunk(c, h, w, channels, fc, spectral)
            body = nn.Sequential(*trunk, head(fc, n_actions, dueling, quantiles))
        else:
            build = nature_cnn if kind == "nature_cnn" else small_cnn
            body = build(c, h, w, n_actions, dueling, quantiles, cnn_scale)
        net = nn.Sequential(Prep(scale, last), body)
    if implicit:
        return ImplicitQuantiles(net, merge)
    return net


def q_network(spec: EnvSpec, lc: LearnerConfig) -> nn.Module:
    """The network a run's learner, actors and evaluator all build for its env."""
    if lc.hidden == "auto" or lc.cnn_scale == "auto":
        raise NetworkError("learner.hidden or cnn_scale 'auto': the plan resolves it before any network is built")
    quantiles = lc.n_quantiles if lc.algo == "qr_dqn" else 0
    return build_q_network(spec.obs_shape, spec.n_actions, lc.hidden, lc.dueling, lc.network, spec.obs_scale, quantiles,
                           lc.cnn_scale, implicit=lc.algo == "iqn", spectral=lc.spectral_norm,
                           merge=lc.iqn_merge)  # fmt: skip


def check_network(net: nn.Module, obs_shape: tuple[int, ...]) -> None:
    """Run a shape-only forward pass (meta tensors: nothing allocated); raises what the real one would."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on empty tensors: the error, if any, is what counts
        net(torch.empty((2, *obs_shape)))
