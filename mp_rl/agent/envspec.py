"""What the ring and the networks need to know of an environment, and the one error bad env input raises.

A module of its own at the bottom, so the env backends (`envs`, `envpool_backend`) and the planner
can share these without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


class EnvError(ValueError):
    """A bad environment id or a missing optional dependency; str() is the one line to show."""


@dataclass(frozen=True)
class EnvSpec:
    """What the ring and the networks need to know about an environment."""

    obs_shape: tuple[int, ...]
    obs_dtype: str
    n_actions: int
    frame_stack: int = 1  # > 1: observations are stacks whose frames overlap the next one's (frame rows)
    obs_scale: float = 1.0  # what the network multiplies stored observations by (1/255 for 0..255 pixels)
