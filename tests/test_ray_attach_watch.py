"""The Ray attach's watch loop (`RayAttach.watch_until_done`) on a fake Ray: what it prints and returns
when the ingest dies, whichever of the ingest's end and an actor's end Ray reports first. No Ray needed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mp_rl.remote.ray_attach import RayAttach


class RayError(Exception):
    pass


class RayActorError(RayError):
    pass


class RayTaskError(RayError):
    pass


class FakeRay:
    """`wait` hands out `order` one ref at a time; `get` answers from `replies` (an exception is raised);
    a call on the ingest returns a ref that fails once the ingest is dead."""

    exceptions = SimpleNamespace(RayError=RayError, RayActorError=RayActorError, RayTaskError=RayTaskError)

    def __init__(self, order: list[str], replies: dict):
        self.order, self.replies, self.killed = list(order), replies, []

    def wait(self, refs, num_returns, timeout):
        ready = [r for r in self.order[:1] if r in refs]
        self.order = self.order[len(ready) :]
        return ready, [r for r in refs if r not in ready]

    def get(self, ref, timeout=None):
        reply = self.replies[ref]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def kill(self, actor):
        self.killed.append(actor)


class DeadIngest:
    """Every call on it gives a ref whose `get` raises: the actor process is gone."""

    def __getattr__(self, name):
        return SimpleNamespace(remote=lambda *args: "dead-call")


def watching(order: list[str], replies: dict) -> RayAttach:
    attach = RayAttach.__new__(RayAttach)  # the watch loop alone: no cluster, no actors started
    attach.ray = FakeRay(order, {"dead-call": RayActorError("the ingest died"), **replies})
    attach.n, attach.asked, attach.results = 2, 0, []
    attach.ingest, attach.watch = DeadIngest(), "watch"
    attach.actors = {0: "actor-0", 1: "actor-1"}
    attach.runs = {"run-0": 0, "run-1": 1}
    return attach


GONE = {"slot": 3, "host": "node", "steps": 10, "ended": "the ingest is gone"}


@pytest.mark.parametrize(
    ("order", "asked"),
    [(["watch"], 0), (["run-0", "watch"], 0), ([], 1)],
    ids=["the-ingest-first", "an-actor-first", "ctrl-c-first"],
)
def test_a_dead_ingest_ends_the_watch_with_one_line_and_code_1_whichever_ray_reports_first(order, asked, capsys):
    replies = {"watch": RayActorError("gone"), "run-0": GONE, "run-1": {**GONE, "slot": 4}}
    attach = watching(order, replies)
    attach.asked = asked  # Ctrl-C: the loop asks the (dead) ingest to retire every actor
    assert attach.watch_until_done() == 1
    said = [line for line in capsys.readouterr().out.splitlines() if "ingest" in line]
    assert len(said) == 1 and "died" in said[0], said
    assert "2 remote actor(s) stopped" in said[0], "the count is every actor the ingest's death stopped"
    assert sorted(attach.ray.killed) == ["actor-0", "actor-1"]
