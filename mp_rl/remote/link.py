"""A remote actor's view of the run: what `Actor` uses of `SharedRun`, carried by calls to the ingest.

`Actor` steps envs, builds n-step rows and writes blocks through `shared.ring.writer(...)`, reports
to `shared.control` and picks up weights from `shared.board`. On another machine none of those
segments exist, so `LinkedRun` gives it the same three names backed by a `Link`:

- a block written is sent to the ingest as one call, with at most `window` calls in flight; a full
  window is the rate limiter's backpressure arriving here (the ingest's write waits in the ring), so
  `write` returns False just as the ring's writer does and the actor waits and beats as it would;
- heartbeats, episodes and counters ride along with the next call (or a beat when there is none);
- every reply carries the run's word (stopping, this slot's state) and the newest weights' version
  with a reference to them: one object per version, fetched by each remote actor that wants it.

The transport is three callables (call, wait, get), so the same code runs over Ray and, in tests,
over a direct call to an `Ingest` in the same process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mp_rl.agent.actor import Detached
from mp_rl.shm.control import State
from mp_rl.shm.ring import Written
from mp_rl.shm.ringspec import RingSpec

BEAT_S = 1.0  # with nothing sent for this long, a heartbeat goes on its own


@dataclass(frozen=True)
class Transport:
    """How calls reach the ingest: `call(method, *args) -> ref`, `wait(refs, timeout) -> done refs`
    (at least one when any finished, none after `timeout`), `get(ref) -> value` (raises when lost)."""

    call: Callable[..., Any]
    wait: Callable[[Sequence[Any], float], list[Any]]
    get: Callable[[Any], Any]


def fresh_report() -> dict:
    return {"steps": None, "weights": None, "returns": [], "lengths": [], "counters": {}}


class Link:
    """One remote actor's calls to the ingest: a bounded window of writes, the report, the replies."""

    def __init__(self, transport: Transport, key: int, window: int = 4):
        self.t, self.key, self.window = transport, key, max(1, window)
        self.inflight: list[Any] = []
        self.report = fresh_report()
        self.stopping, self.state, self.version, self.weights = False, State.RUNNING, 0, None
        self.shape: tuple[int, ...] = ()  # of the newest weights: their count, then their layout
        self.lost: str | None = None
        self.last_call = time.monotonic()
        self.sent_blocks = 0

    def _take_report(self) -> dict:
        report, self.report = self.report, fresh_report()
        return report

    def _call(self, method: str, *args) -> None:
        self.inflight.append(self.t.call(method, self.key, *args, self._take_report()))
        self.last_call = time.monotonic()

    def absorb(self, reply: dict) -> None:
        self.stopping = self.stopping or reply["stopping"]
        self.state = State(reply["state"])
        if reply["version"] > self.version:
            self.version, self.weights = reply["version"], reply["weights"]
            self.shape = tuple(reply.get("shape") or ())

    def reap(self, timeout: float) -> None:
        """Take the replies of finished calls, waiting up to `timeout` for one when none has."""
        if not self.inflight:
            return
        for ref in self.t.wait(self.inflight, timeout):
            self.inflight.remove(ref)
            try:
                reply = self.t.get(ref)
            except Exception as exc:  # the ingest died (or its node): this actor has nowhere to write
                self.lost = f"{type(exc).__name__}: {exc}".splitlines()[0]
                raise Detached(f"the ingest is gone ({self.lost})") from None
            self.absorb(reply)

    def send_block(self, rows: dict[str, np.ndarray], frames: np.ndarray | None, timeout: float) -> bool:
        """Send one block; False when the window stayed full for `timeout` seconds (backpressure).
        The arrays are serialised by the call itself, so the caller may reuse them at once."""
        self.reap(0.0)
        if len(self.inflight) >= self.window:
            self.reap(timeout)
            if len(self.inflight) >= self.window:
                return False
        self._call("write", rows, frames)
        self.sent_blocks += 1
        return True

    def beat(self) -> None:
        """Send the report on its own when nothing has gone for `BEAT_S` (an actor between blocks)."""
        self.reap(0.0)
        if time.monotonic() - self.last_call >= BEAT_S and len(self.inflight) < self.window:
            self._call("beat")

    def drain(self, timeout: float = 30.0) -> None:
        """Send what is reported and wait for every call in flight (blocks land before the slot goes)."""
        deadline = time.monotonic() + timeout
        self._call("beat")
        while self.inflight and time.monotonic() < deadline:
            self.reap(min(0.25, max(deadline - time.monotonic(), 0.0)))


class LinkWriter:
    def __init__(self, link: Link):
        self.link = link

    def write(self, rows, timeout: float | None = None, frames: np.ndarray | None = None) -> Written:
        sent = self.link.send_block(rows, frames, 3600.0 if timeout is None else timeout)
        return Written.ROWS if sent else Written.HELD  # the ingest's ring counts a block it voids


class LinkRing:
    def __init__(self, link: Link, spec: RingSpec):
        self.link, self.spec = link, spec

    def writer(self, token: int) -> LinkWriter:
        return LinkWriter(self.link)


class LinkControl:
    """The calls `Actor` makes on the control block; what it reports is sent with the next call."""

    def __init__(self, link: Link):
        self.link = link

    @property
    def stopping(self) -> bool:
        return self.link.stopping

    def state(self, slot: int) -> State:
        return self.link.state

    def target(self, name: str) -> int:
        return 0  # a remote actor keeps the env count it was started with

    def heartbeat(self, slot: int, steps: int | None = None, weights: int | None = None) -> None:
        r = self.link.report
        r["steps"], r["weights"] = steps, weights
        self.link.beat()

    def add(self, counter: str, n: int) -> None:
        counters = self.link.report["counters"]
        counters[counter] = counters.get(counter, 0) + int(n)

    def report_episodes(self, slot: int, returns: np.ndarray, lengths: np.ndarray) -> None:
        self.link.report["returns"] += np.asarray(returns, np.float64).tolist()
        self.link.report["lengths"] += np.asarray(lengths, np.int64).tolist()


class LinkBoard:
    def __init__(self, link: Link):
        self.link = link

    def read_into(self, flat: torch.Tensor, have: int = 0, timeout: float = 1.0, shape: tuple[int, ...] = ()) -> int:
        """The newest weights the ingest has shared, if newer than `have` and of `flat`'s layout (`shape`,
        as on the board): one fetch of its object."""
        link = self.link
        if link.version <= have or link.weights is None:
            return have
        if link.shape and (link.shape[0] != flat.numel() or (shape and tuple(link.shape[1:]) != tuple(shape))):
            return have  # another layout: the actor rebuilds for `latest_shape()`
        flat.numpy()[:] = link.t.get(link.weights)  # read-only in the object store: copied into the policy
        return link.version

    def latest_shape(self) -> tuple[int, ...]:
        """The newest weights' count and layout, as the ingest read them from the board."""
        return self.link.shape


class LinkedRun:
    """`ports.ActorRun` (ring, control, board) over a `Link`: what `SharedRun` is to a local actor."""

    def __init__(self, link: Link, spec: RingSpec):
        self.link = link
        self.ring, self.control, self.board = LinkRing(link, spec), LinkControl(link), LinkBoard(link)
