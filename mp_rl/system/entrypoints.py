"""Process shells: each child names itself, ignores SIGINT, dies with its owner, and runs one object.

How a member starts (a fork of a server that imported torch once, not of the supervisor, which may
hold CUDA): `forks`. Why ignore SIGINT: Ctrl-C in a terminal goes to the whole process group; only
the supervisor should act on it and stop the others in order.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import psutil
from setproctitle import setproctitle

from mp_rl.agent.envspec import EnvSpec
from mp_rl.config import Config
from mp_rl.knobs import Knobs
from mp_rl.runfolder import RunFolder
from mp_rl.shm.control import State
from mp_rl.shm.manifest import SharedRun
from mp_rl.start import resources
from mp_rl.system import forks


def run_member(main: Callable[[Spawn], None], args: Spawn) -> None:
    """A member's process: `main(args)`, then `leave`. An exception still ends it the usual way."""
    forks.let_go()
    main(args)
    leave(0)


def leave(code: int) -> NoReturn:
    """Exit now, without the interpreter's teardown: freeing torch's modules and objects takes about a
    second on a small machine, and a stop waits for every member's exit. Only where the work is done:
    segments closed, children joined, files written. What registered to run at exit still runs (a
    user's env module, logging's flush, multiprocessing's join of children), then the standard
    streams are flushed."""
    atexit._run_exitfuncs()  # the public atexit has no other way to run them, and os._exit skips them
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe (`| head -1`) must not change the exit code
            stream.flush()
    os._exit(code)


def title(run_id: str, member: str) -> str:
    return f"mp_rl[{run_id}] {member}"


def die_with_parent(owner_pid: int) -> None:
    """Have the kernel SIGKILL us when our parent dies; exit now if it already has. Our parent is the
    process that started us (`owner_pid`: an attach), or the owner's fork server (a supervisor's
    member, `forks`), which exits when the supervisor does: the signal then comes one step later."""
    parent = os.getppid()
    forks.death_signal()
    if os.getppid() != parent or not _ours(parent, owner_pid):  # it died before prctl took effect
        os._exit(1)


def _ours(parent: int, owner_pid: int) -> bool:
    """Whether `parent` is the owner or the owner's child (its fork server), and the owner is running
    (not a zombie its own parent has yet to reap)."""
    if not forks.running(owner_pid):
        return False
    try:
        return parent == owner_pid or psutil.Process(parent).ppid() == owner_pid
    except psutil.Error:
        return False


def child_setup(
    run_dir: Path, run_id: str, member: str, parent_pid: int | None, ignore_sigint: bool = True
) -> logging.Logger:
    setproctitle(title(run_id, member))
    if ignore_sigint:  # the supervisor's children: only the supervisor acts on Ctrl-C
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_pid is not None:
        die_with_parent(parent_pid)
    log = logging.getLogger(f"mp_rl.{member}")
    name = member.split(" ")[0] + ("-attached" if member.endswith("(attached)") else "")
    handler = logging.FileHandler(RunFolder(run_dir).log(name))
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return log


@dataclass(frozen=True)
class Spawn:
    """What every child is given: where the run is, its config, its slot, who its parent is."""

    run_dir: str
    cfg_json: dict
    slot: int
    parent_pid: int | None

    @property
    def cfg(self) -> Config:
        return Config.model_validate(self.cfg_json)


@dataclass(frozen=True)
class ActorArgs(Spawn):
    index: int  # place in the Ape-X schedule
    count: int  # size of the schedule
    seed: int


@dataclass(frozen=True)
class LearnerArgs(Spawn):
    resume: str | None = None  # checkpoint to start from


MonitorArgs = Spawn  # the monitor needs nothing more: its knobs' bounds are in the manifest


@contextlib.contextmanager
def member_of(run_dir: str, slot: int, log: logging.Logger) -> Iterator[SharedRun]:
    """Attach to the run as the member in `slot`; a crash is logged with its traceback, exit code 1."""
    shared = SharedRun.attach(run_dir)
    try:
        shared.control.heartbeat(slot)
        shared.control.set_pid(slot, os.getpid())
        yield shared
    except Exception:
        log.error("%s crashed:\n%s", log.name.removeprefix("mp_rl."), traceback.format_exc())
        sys.stderr.write(traceback.format_exc())
        raise SystemExit(1) from None
    finally:
        shared.close()


def env_spec_of(shared: SharedRun) -> EnvSpec:
    """The env spec the supervisor recorded in the manifest (members never probe the env again)."""
    return spec_from_info(shared.info)


def spec_from_info(info: dict) -> EnvSpec:
    e = info["env"]
    return EnvSpec(tuple(e["obs_shape"]), e["obs_dtype"], int(e["n_actions"]), obs_scale=float(e["obs_scale"]))


def pin(cfg: Config, actor_index: int | None) -> None:
    """`run.pin_cpus`: the learner on the last usable CPU, actor i on CPU i of the others (wrapping),
    so the scheduler does not move them across cores or stack two on one while another idles."""
    if not cfg.run.pin_cpus:
        return
    cpus = sorted(os.sched_getaffinity(0))[: resources.usable_cpus()]
    if len(cpus) < 2:
        return
    os.sched_setaffinity(0, {cpus[-1]} if actor_index is None else {cpus[actor_index % (len(cpus) - 1)]})


def actor_main(a: ActorArgs) -> None:
    import torch  # here, not with the module: attach's own process takes `title` from it without torch

    from mp_rl.agent.actor import Actor

    log = child_setup(Path(a.run_dir), Path(a.run_dir).name, f"actor-{a.index}", a.parent_pid)
    cfg = a.cfg
    pin(cfg, a.index)
    torch.set_num_threads(cfg.actors.torch_threads)  # N actors must not oversubscribe the cores
    with member_of(a.run_dir, a.slot, log) as shared:
        actor = Actor(cfg, shared, env_spec_of(shared), a.slot, a.index, a.count, a.seed, follow_envs=True)
        log.info("actor %d (slot %d) %d envs, epsilon %s", a.index, a.slot, actor.num_envs, actor.epsilon_range)
        actor.run()
        actor.close()
        if shared.control.state(a.slot) == State.RETIRING:  # retired: its block is finished, the slot is free
            shared.control.leave(a.slot)
            log.info("actor %d retired", a.index)


def learner_main(a: LearnerArgs) -> None:
    from mp_rl.agent import checkpoint
    from mp_rl.agent.learner import Learner

    run_dir = Path(a.run_dir)
    log = child_setup(run_dir, run_dir.name, "learner", a.parent_pid)
    cfg = a.cfg
    pin(cfg, None)
    with member_of(a.run_dir, a.slot, log) as shared:
        learner = Learner(cfg, shared, env_spec_of(shared), Knobs.of_info(shared.info).batch_size, seed=cfg.run.seed)
        learner.fit_threads = resources.usable_cpus  # intra-op threads: the CPUs the live actors leave
        if a.resume:
            learner.restore(checkpoint.load(Path(a.resume)))
            log.info("resumed from %s at update %d", a.resume, learner.updates)
        learner.publish()
        log.info("learner on %s, amp %s", learner.device, learner.amp_dtype)
        learner.run(a.slot, RunFolder(run_dir).checkpoints, log)


def monitor_main(a: MonitorArgs) -> None:
    from mp_rl.monitor.monitor import Monitor

    log = child_setup(Path(a.run_dir), Path(a.run_dir).name, "monitor", a.parent_pid)
    with member_of(a.run_dir, a.slot, log) as shared:
        monitor = Monitor(a.cfg, shared, Path(a.run_dir), Knobs.of_info(shared.info))
        try:
            monitor.run(beat=lambda: shared.control.heartbeat(a.slot))
        finally:
            monitor.close()
