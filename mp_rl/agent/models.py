"""Q-networks: an MLP for vector observations, the Nature CNN for stacked frames; optional dueling head."""

from __future__ import annotations

import math

import torch
from torch import nn


class DuelingHead(nn.Module):
    """Q = V + A - mean(A): separates the state value from the action advantages."""

    def __init__(self, features: int, n_actions: int):
        super().__init__()
        self.value, self.advantage = nn.Linear(features, 1), nn.Linear(features, n_actions)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.advantage(h)
        return self.value(h) + a - a.mean(dim=1, keepdim=True)


def mlp_q(obs_dim: int, n_actions: int, hidden: tuple[int, ...] = (128, 128), dueling: bool = True) -> nn.Module:
    layers, width = [], obs_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    head = DuelingHead(width, n_actions) if dueling else nn.Linear(width, n_actions)
    return nn.Sequential(*layers, head)


class NatureCNN(nn.Module):
    """Mnih et al. 2015: 84x84 uint8 frames in, Q-values out (about 1.7M parameters for 4 frames)."""

    def __init__(self, in_frames: int, n_actions: int, dueling: bool = False):
        super().__init__()
        self.torso = nn.Sequential(
            nn.Conv2d(in_frames, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(),
        )  # fmt: skip
        self.head = DuelingHead(512, n_actions) if dueling else nn.Linear(512, n_actions)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.torso(frames.float() / 255.0))


def build_q_network(obs_shape: tuple[int, ...], n_actions: int, hidden: tuple[int, ...], dueling: bool) -> nn.Module:
    """Nature CNN for (frames, 84, 84) observations, an MLP for flat vectors."""
    if len(obs_shape) == 3:
        return NatureCNN(obs_shape[0], n_actions, dueling)
    return mlp_q(math.prod(obs_shape), n_actions, hidden, dueling)
