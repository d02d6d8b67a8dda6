"""Frame rows: stacked observations stored one frame per step, rebuilt at sample time.

A Pong observation is 4 stacked 84x84 frames, and the next observation shares 3 of them; storing
`obs` and `next_obs` whole keeps every frame 8 times. Frame rows keep each frame once.

Layout. Each ring block (the `block` row slots one writer fills under one lease) owns an *area* of
`area = block + stack - 1 + n` frames. A block holds one environment's consecutive steps
t0 .. t0 + block - 1; area position p holds the newest frame of the observation at step
t0 - (stack - 1) + p, so the `stack - 1` frames before the block and the `n` after it are there too.
A row stores `pos = (o, x, s)`: the area positions of its observation's newest frame, of its n-step
next observation's newest frame, and of its episode's first observation (0 when that is before the
area). Steps that start no row (Gymnasium's autoreset steps) leave their slot as padding.

Rebuild. Frame j < stack of the observation is area[max(o - stack + 1 + j, s)]: Gymnasium's
`FrameStackObservation` pads an episode's first observations with its reset frame ("reset"
padding), which is exactly the clamp at s. next_obs is the same from x; a row never reaches past its
episode's end, so both share s. One `np.take` per stack, no per-row Python.

Lock-free. A row reads frames only from its own block's area, and the writer fills the area under
the block's lease, after zeroing the block's stamps and before stamping its rows, exactly as it
fills the row fields (`ring.py`). So the sampler's two stamp reads around the copy (`sampler.py`)
vouch for every frame the row draws from: a frame overwritten, half written or from a block outside
the live window fails the second read, as a row field would. Positions are clamped into the area
before use, so even a torn `pos` (which that read then discards) never reaches outside its block.
"""

from __future__ import annotations

import numpy as np


def stack_indices(
    slots: np.ndarray, pos: np.ndarray, block: int, area: int, stack: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the flat frame array of each row's observation and next observation: (rows, stack) each.

    >>> obs, nxt = stack_indices(np.array([1]), np.array([[3, 5, 2]]), block=4, area=8, stack=3)
    >>> obs.tolist(), nxt.tolist()  # frames before the episode start (2) repeat its first frame
    ([[2, 2, 3]], [[3, 4, 5]])
    """
    base = (slots // block * area)[:, None]
    pos = np.clip(pos, 0, area - 1).astype(np.int64)
    back = np.arange(1 - stack, 1)  # oldest frame first, as the wrapper stacks them
    start = pos[:, 2:3]
    return base + np.maximum(pos[:, 0:1] + back, start), base + np.maximum(pos[:, 1:2] + back, start)


def row_positions(t: np.ndarray, last: np.ndarray, episode_start: np.ndarray, first: int, stack: int) -> np.ndarray:
    """The writer's side: `pos` of rows that start at step t and end at step `last` (the next observation
    is observation last + 1), in a block whose first step is `first`; `episode_start` is the index of
    each row's episode's first observation. Returns int16 (rows, 3).

    >>> row_positions(np.array([10]), np.array([12]), np.array([4]), first=10, stack=4).tolist()
    [[3, 6, 0]]
    """
    h = stack - 1
    o = t - first + h
    return np.stack([o, last + 1 - first + h, np.maximum(episode_start - first + h, 0)], axis=1).astype(np.int16)


class FrameGather:
    """The sampler's rebuild: positions land in `pos`, then frames go straight into the batch tensors."""

    def __init__(self, ring, max_batch: int, out: dict[str, np.ndarray]):
        spec = ring.spec
        self.block, self.area, self.stack = spec.block, spec.frames.area, spec.frames.stack
        self.frames = ring.frames
        self.pos = np.empty((max_batch, 3), dtype=np.int16)
        self.obs, self.next_obs = out["obs"], out["next_obs"]

    def gather(self, slots: np.ndarray, todo: np.ndarray, whole: bool) -> None:
        """Rebuild rows `todo` (all `len(slots)` rows of the batch when `whole`) from their positions."""
        obs, nxt = stack_indices(slots, self.pos[todo], self.block, self.area, self.stack)
        if whole:  # straight into the batch tensors: one take per stack, no temporaries
            n, frame = len(slots), self.frames.shape[1:]
            np.take(self.frames, obs.reshape(-1), axis=0, out=self.obs[:n].reshape(-1, *frame))
            np.take(self.frames, nxt.reshape(-1), axis=0, out=self.next_obs[:n].reshape(-1, *frame))
        else:
            self.obs[todo] = self.frames[obs]
            self.next_obs[todo] = self.frames[nxt]
