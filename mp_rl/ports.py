"""The few interfaces an actor uses of its run, written down (as Acme writes its core interfaces).

An `Actor` writes blocks of rows into a `RowSink`, reads weights from a `WeightSource` and reports
to a `RunView`; `ActorRun` bundles the three. Two sides implement them:
- in shared memory, on the learner's machine: `SharedRun`'s `ReplayRing`, `WeightBoard` and
  `ControlBlock` (`shm/`);
- over calls to an ingest, on another machine: `remote.link.LinkedRun`'s `LinkRing`, `LinkBoard`
  and `LinkControl` (`mp_rl.attach --ray`).
The learner and the evaluator run only beside the segments and take a `SharedRun` itself.
`tests/test_ports.py` checks that both sides have every member named here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch

    from mp_rl.shm.control import State
    from mp_rl.shm.ringspec import RingSpec


class BlockWriter(Protocol):
    def write(
        self, rows: Mapping[str, np.ndarray], timeout: float | None = None, frames: np.ndarray | None = None
    ) -> int:
        """Write one block (frame rows with their frames); falsy when held back for `timeout` s."""
        ...


class RowSink(Protocol):
    """Where an actor's rows go: the replay ring, or the ingest that writes into it."""

    spec: RingSpec

    def writer(self, token: int) -> BlockWriter: ...


class WeightSource(Protocol):
    """Where an actor's weights come from: the weight board, or the ingest's shared copy of it."""

    def read_into(self, flat: torch.Tensor, have: int = 0, timeout: float = 1.0, shape: tuple[int, ...] = ()) -> int:
        """Copy weights newer than version `have` into `flat`, if they have its layout (`shape`: see
        `WeightBoard`); the version `flat` now holds."""
        ...

    def latest_shape(self) -> tuple[int, ...]:
        """The newest weights' parameter count, then their layout: what to rebuild for when refused."""
        ...


class RunView(Protocol):
    """The run as an actor sees it: the stop word, its own state, its targets, its reports."""

    @property
    def stopping(self) -> bool: ...

    def state(self, slot: int) -> State: ...

    def target(self, name: str) -> int: ...

    def heartbeat(self, slot: int, steps: int | None = None, weights: int | None = None) -> None: ...

    def add(self, counter: str, n: int) -> None: ...

    def report_episodes(self, slot: int, returns: np.ndarray, lengths: np.ndarray) -> None: ...


class ActorRun(Protocol):
    """Everything an `Actor` touches of its run."""

    @property
    def ring(self) -> RowSink: ...

    @property
    def control(self) -> RunView: ...

    @property
    def board(self) -> WeightSource: ...


PORTS: dict[type, tuple[str, ...]] = {  # each port's members, for the conformance test
    BlockWriter: ("write",),
    RowSink: ("spec", "writer"),
    WeightSource: ("read_into", "latest_shape"),
    RunView: ("stopping", "state", "target", "heartbeat", "add", "report_episodes"),
    ActorRun: ("ring", "control", "board"),
}
