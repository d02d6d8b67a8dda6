"""The members' start: each is a fork of one server that imported torch and the members' modules once.

Why not `fork` from the supervisor: it may hold a CUDA context (its evaluator, the plan's device
query) and threads, which a forked child must not inherit; CUDA does not support that. Why not
`spawn`: each member then imports torch on its own, about 2 s of a small machine's cores per member
before it steps, at every start and restart. multiprocessing's fork server is a clean interpreter,
started before the supervisor imports torch (`start`), that imports what `PRELOAD` names and never
touches CUDA; every member is a fork of it, ready in milliseconds. The server ignores Ctrl-C, and it
exits when the supervisor does (its end of a pipe closes). A member's parent is the server, so its
death signal fires then (`entrypoints.die_with_parent`). Should the server die under a run (killed,
or a fork that failed), its members die with it, since the supervisor could no longer tell their
exits apart: the crew stops the run and says so (`server_died`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing
import os
import signal
import time
from multiprocessing import forkserver

# What the server imports before it forks anyone: every member's modules (torch, numpy, gymnasium come
# with them), and the entry modules a member imports again as its `__mp_main__` (multiprocessing's
# way). Importing must not initialise CUDA: a forked child cannot use a parent's CUDA context.
PRELOAD = ["mp_rl.system.entrypoints", "mp_rl.agent.actor", "mp_rl.agent.learner", "mp_rl.monitor.monitor",
           "mp_rl.run", "mp_rl.tune"]  # fmt: skip

# MP_RL_START_METHOD=spawn: each member a clean interpreter that imports torch itself, as before the
# server (`benchmarks/start.py` compares the two; a fallback should a library misbehave in a fork).
METHODS = ("forkserver", "spawn")
PR_SET_PDEATHSIG = 1


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
    # Ctrl-C goes to the terminal's whole process group: the server must ignore it from its first
    # instruction (it ignores SIGINT itself only once its imports are done). An ignored signal stays
    # ignored across exec, and Python then installs no handler of its own.
    sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, sigint)
    atexit.register(stop)


def wait_ready(timeout: float = 15.0) -> None:
    """Return once the server has done its imports (its CPU time stood still for 50 ms), or at once if
    there is none: a timing taken meanwhile (the network sizing's) would be one core short."""
    import psutil

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    deadline, last = time.monotonic() + timeout, None
    while pid is not None and time.monotonic() < deadline:
        try:
            used = sum(psutil.Process(pid).cpu_times()[:2])
        except psutil.Error:
            return
        if used == last:
            return
        last = used
        time.sleep(0.05)  # another process's progress: nothing to wait on but its clock


def running(pid: int) -> bool:
    """Whether `pid` is a live process: not gone, and not a zombie its parent has yet to reap."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def server_died() -> bool:
    """Whether a fork server was started and is gone (multiprocessing would start another on the next
    member, but the supervisor has lost its members' exit codes with the old one)."""
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    return pid is not None and not running(pid)


def death_signal() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux's PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def let_go() -> None:
    """In a member, first: close its copy of the server's keep-alive pipe. multiprocessing gives every
    fork one (so that it could start processes of its own through the server), and the server lives
    until the last copy closes: it would outlive a killed supervisor for as long as its members do."""
    server = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        os.close(fd)
        server._forkserver_alive_fd = None


def stop() -> None:
    """End the server now, mid-import if it is (a start refused for bad input leaves no process), and
    reap it: at exit, and in serial mode, which starts no member."""
    server = forkserver._forkserver  # the module's one server; multiprocessing has no public stop
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    server._stop()  # closes its pipe, waits for it, removes its socket
