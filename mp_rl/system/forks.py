"""The members' start: each is a fork of one server that imported torch and the members' modules once.

Why not `fork` from the supervisor: it may hold a CUDA context (its evaluator, the plan's device
query) and threads, which a forked child must not inherit; CUDA does not support that. Why not
`spawn`: each member then imports torch on its own, about 2 s of a small machine's cores per member
before it steps, at every start and restart. multiprocessing's fork server is a clean interpreter,
started before the supervisor imports torch (`start`), that imports what `PRELOAD` names and never
touches CUDA; every member is a fork of it, ready in milliseconds. The server ignores Ctrl-C, and it
exits when the supervisor does (its end of a pipe closes); a member's parent is the server, so its
death signal fires then (`entrypoints.die_with_parent`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from multiprocessing import forkserver

# What the server imports before it forks anyone: every member's modules (torch, numpy, gymnasium come
# with them). Importing must not initialise CUDA: a forked child cannot use a parent's CUDA context.
PRELOAD = ["mp_rl.system.entrypoints", "mp_rl.agent.actor", "mp_rl.agent.learner", "mp_rl.monitor.monitor"]


# MP_RL_START_METHOD=spawn: each member a clean interpreter that imports torch itself, as before the
# server (`benchmarks/start.py` compares the two; a fallback should a library misbehave in a fork).
METHODS = ("forkserver", "spawn")


def method() -> str:
    """How members start: `forkserver` unless MP_RL_START_METHOD says `spawn`."""
    return os.environ.get("MP_RL_START_METHOD") or "forkserver"


def context() -> multiprocessing.context.BaseContext:
    """The context the supervisor starts its members with."""
    ctx = multiprocessing.get_context(method())
    if method() == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start() -> None:
    """Start the server now, without waiting for its imports: called by `python -m mp_rl.run` before it
    imports torch itself, so that the two imports run side by side on two cores. Ended at exit (`stop`)."""
    if method() != "forkserver":
        return
    context()
    forkserver.ensure_running()
    import atexit

    atexit.register(stop)


def let_go() -> None:
    """In a member, first: close its copy of the server's keep-alive pipe. multiprocessing gives every
    fork one (so that it could start processes of its own through the server), and the server lives
    until the last copy closes; a member that held one would keep the server alive after its
    supervisor was killed, and so itself: its death signal comes when the server dies."""
    server = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        os.close(fd)
        server._forkserver_alive_fd = None


def stop() -> None:
    """End the server now, mid-import if it is (a start refused for bad input leaves no process), and
    reap it. Only once the members are gone: a member's death signal fires with its parent."""
    server = forkserver._forkserver  # the module's one server; multiprocessing has no public stop
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    server._stop()  # closes its pipe, waits for it, removes its socket
