"""Both sides of `ports.ActorRun`, the run's shared memory and the Ray link, have every member the
actor uses, with the parameters the port names (so an actor runs on either unchanged)."""

from __future__ import annotations

import inspect

import pytest

from mp_rl.config import load_config
from mp_rl.ports import PORTS, ActorRun, BlockWriter, RowSink, RunView, WeightSource
from mp_rl.remote.link import Link, LinkedRun, Transport
from mp_rl.shm.manifest import SharedRun
from mp_rl.start.preflight import plan


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def conforms(obj: object, port: type) -> list[str]:
    """What `obj` lacks of `port`: missing members, or methods without the port's parameters (in order)."""
    problems = []
    for name in PORTS[port]:
        if not hasattr(obj, name):
            problems.append(f"{type(obj).__name__} has no {name}")
            continue
        want = getattr(port, name, None)
        if inspect.isfunction(want):
            have = _params(getattr(obj, name))
            if have[: len(_params(want))] != _params(want):
                problems.append(f"{type(obj).__name__}.{name}{tuple(have)}: the port takes {tuple(_params(want))}")
    return problems


def _sides(run) -> list[tuple[object, type]]:
    return [(run, ActorRun), (run.ring, RowSink), (run.ring.writer(1), BlockWriter),
            (run.control, RunView), (run.board, WeightSource)]  # fmt: skip


@pytest.fixture
def shared(tmp_path, shm_name):
    p = plan(load_config("configs/smoke.yaml"))
    run = SharedRun.create(tmp_path, shm_name("x").split(".")[1], p.ring, p.limit, p.numel, 4)
    yield run
    run.close()


def test_the_shared_memory_side_implements_every_port(shared):
    for obj, port in _sides(shared):
        assert not conforms(obj, port), conforms(obj, port)


def test_the_ray_link_side_implements_every_port(shared):
    transport = Transport(call=lambda *a: None, wait=lambda refs, t: [], get=lambda ref: None)
    linked = LinkedRun(Link(transport, key=0), shared.ring.spec)
    for obj, port in _sides(linked):
        assert not conforms(obj, port), conforms(obj, port)


def test_a_side_that_lacks_a_member_or_its_parameters_is_named():
    class Board:
        def read_into(self, have: int = 0): ...

    class Control:
        stopping = False

    assert conforms(Board(), WeightSource) == [
        "Board.read_into('have',): the port takes ('flat', 'have', 'timeout', 'shape')",
        "Board has no latest_shape",
    ]
    assert "Control has no heartbeat" in conforms(Control(), RunView)
