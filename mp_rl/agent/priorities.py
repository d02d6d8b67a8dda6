"""Prioritized replay (Schaul et al. 2016, as Ape-X uses it): the learner's own priorities, one per ring slot.

`SumTree` is a binary tree of sums over `capacity_max` leaves, updated and searched one tree level
at a time with numpy (log2(capacity) vector operations per batch, no per-row Python loop).

`Priorities` is what the sampler draws through. Each leaf remembers the seq its priority belongs to:
a slot whose stamp no longer says that seq (overwritten, voided, outside the live window) is void
and is never drawn with the old row's priority. New rows enter at the running maximum priority,
found by scanning the stamps of the seqs written since the last draw. Why not priorities computed by
the actors, as Ape-X does: an actor has no target network and would need one more field in every row
(bytes a Pong row cannot spare); the maximum costs nothing and the row's first replay corrects it.

Probabilities are p_i^alpha / sum; importance-sampling weights (N * P(i))^-beta are normalised by the
batch's largest, with beta annealed from `beta0` to 1 over `beta_steps` updates.
"""

from __future__ import annotations

import threading

import numpy as np

from mp_rl.shm.ring import ReplayRing


class SumTree:
    """Sums over leaves; `set` and `find` work on whole vectors of leaves at once.

    >>> t = SumTree(4); t.set(np.array([0, 3]), np.array([1.0, 3.0])); t.total
    4.0
    >>> t.find(np.array([0.5, 1.5, 3.9])).tolist()
    [0, 3, 3]
    """

    def __init__(self, size: int):
        self.size = size
        self.leaves = 1 << max(0, (size - 1).bit_length())
        self.tree = np.zeros(2 * self.leaves)  # node i has children 2i, 2i+1; leaves start at `leaves`

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def get(self, slots: np.ndarray) -> np.ndarray:
        return self.tree[self.leaves + slots]

    def set(self, slots: np.ndarray, values: np.ndarray) -> None:
        """Set leaves, then recompute every ancestor, one level at a time."""
        idx = np.asarray(slots, dtype=np.int64) + self.leaves
        if len(idx) == 0:
            return
        self.tree[idx] = values
        while idx[0] > 1:
            # No unique(): a parent listed twice is written twice with the same sum (its children are
            # final for this level), which is cheaper than sorting the indices on every level.
            idx = idx >> 1
            self.tree[idx] = self.tree[2 * idx] + self.tree[2 * idx + 1]

    def find(self, mass: np.ndarray) -> np.ndarray:
        """The leaf under each cumulative mass (0 <= mass < total): a descent per level, vectorised."""
        idx = np.ones(len(mass), dtype=np.int64)
        mass = np.array(mass, dtype=np.float64)
        while idx[0] < self.leaves:
            left = self.tree[2 * idx]
            right = mass >= left
            mass -= left * right
            idx = 2 * idx + right
        return np.minimum(idx - self.leaves, self.size - 1)


class Priorities:
    """Per-slot priorities of one ring, with the seq each belongs to. Thread-safe (prefetch and learner).

    Invariant at every draw: a leaf holds mass only for a seq inside the live window `[lo, hi)` the
    draw was asked for. Rows that left the window (it moved on, or shrank) are zeroed before the
    descent, so the tree's probabilities are those of live rows and a draw never serves another.
    """

    def __init__(self, ring: ReplayRing, alpha: float, beta0: float, beta_steps: int, eps: float):
        self.ring, self.alpha, self.beta0, self.beta_steps, self.eps = ring, alpha, beta0, beta_steps, eps
        cap = ring.spec.capacity_max
        self.tree = SumTree(cap)
        self.seqs = np.full(cap, -1, dtype=np.int64)  # the seq whose priority a leaf holds; -1: none
        self.max_priority = 1.0  # before alpha
        self.pending = np.zeros(0, dtype=np.int64)  # seqs reserved but not stamped at the last look
        self.synced = 0  # every seq below this has been looked at
        self.low = 0  # the window's lower bound at the last draw: no leaf holds a seq below it
        self.live = 1  # rows in the window at the last draw (N in the importance weights)
        self.lock = threading.Lock()
        self.updates = 0

    def beta(self) -> float:
        return min(1.0, self.beta0 + (1.0 - self.beta0) * self.updates / max(1, self.beta_steps))

    def _sync(self, lo: int, hi: int) -> None:
        """Move the window to [lo, hi): zero the leaves of rows that left it, give the rows stamped
        since the last look (and rows a grown window took back) the maximum priority."""
        cap = self.ring.spec.capacity_max
        if lo > self.low:
            gone = np.arange(cap) if lo - self.low >= cap else np.arange(self.low, lo) % cap
            gone = gone[(self.seqs[gone] >= 0) & (self.seqs[gone] < lo)]
            self.tree.set(gone, np.zeros(len(gone)))
            self.seqs[gone] = -1
        back = np.arange(lo, min(self.low, self.synced), dtype=np.int64)  # a grown capacity: [lo, old lo)
        self.low = lo
        fresh = np.arange(max(self.synced, lo), hi, dtype=np.int64)
        look = np.concatenate([back, self.pending[self.pending >= lo], fresh])
        stamped = self.ring.stamps[look % cap] == look + 1
        new = look[stamped]
        self.pending = look[~stamped]  # a row still being written; dropped once it leaves the window
        self.synced = max(self.synced, hi)
        if len(new):
            slots = new % cap
            self.seqs[slots] = new
            self.tree.set(slots, np.full(len(new), self.max_priority**self.alpha))

    def admit(self, lo: int, hi: int) -> None:
        """Take in the window [lo, hi) now (its rows at the maximum priority), as a draw would."""
        with self.lock:
            self._sync(lo, hi)

    def draw(self, lo: int, hi: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`n` seqs in [lo, hi) drawn by priority (stratified), and the probability each was drawn with.
        Uniform while no priority is known."""
        with self.lock:
            self._sync(lo, hi)
            self.live = hi - lo
            total = self.tree.total
            if total <= 0:
                return rng.integers(lo, hi, size=n), np.full(n, 1.0 / (hi - lo))
            mass = (np.arange(n) + rng.random(n)) * (total / n)
            slots = self.tree.find(mass)
            seqs, probs = self.seqs[slots], self.tree.get(slots) / total
            # Rounding in the descent can end on an empty leaf (seq -1): such a row is drawn uniformly.
            empty = seqs < lo
            if empty.any():
                seqs[empty] = rng.integers(lo, hi, size=int(empty.sum()))
                probs[empty] = 1.0 / (hi - lo)
            return seqs, probs

    def _void(self, seqs: np.ndarray) -> None:
        slots = seqs % self.ring.spec.capacity_max
        mine = self.seqs[slots] == seqs
        self.tree.set(slots[mine], np.zeros(int(mine.sum())))
        self.seqs[slots[mine]] = -1

    def void(self, seqs: np.ndarray) -> None:
        """Seqs whose stamps said otherwise when drawn: overwritten or voided rows."""
        with self.lock:
            self._void(np.asarray(seqs, dtype=np.int64))

    def weights(self, probs: np.ndarray) -> np.ndarray:
        """Importance-sampling weights (N * P(i))^-beta from the probabilities the rows were drawn
        with (N: the rows in the window then), normalised by the largest."""
        with self.lock:
            w = (self.live * np.maximum(probs, 1e-12)) ** -self.beta()
        return (w / w.max()).astype(np.float32)

    def update(self, seqs: np.ndarray, td_errors: np.ndarray) -> None:
        """New priorities from a batch's TD errors; a row overwritten since it was drawn keeps its own,
        and a row that left the window since is zeroed at the next draw."""
        with self.lock:
            self.updates += 1
            slots = seqs % self.ring.spec.capacity_max
            same = self.seqs[slots] == seqs
            p = np.abs(td_errors[same]).astype(np.float64) + self.eps
            if len(p):
                self.max_priority = max(self.max_priority, float(p.max()))
                self.tree.set(slots[same], p**self.alpha)
