"""Process shells: each child names itself, ignores SIGINT, dies with its parent, and runs one object.

Why `spawn` (set by the supervisor): a forked child would inherit the parent's CUDA context and
thread state, which CUDA does not support; spawn starts a clean interpreter. Why ignore SIGINT:
Ctrl-C in a terminal goes to the whole process group; only the supervisor should act on it and
stop the others in order.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import torch
from setproctitle import setproctitle

from mp_rl import resources
from mp_rl.config import Config
from mp_rl.envs import EnvSpec
from mp_rl.profiling import LearnerProfiler
from mp_rl.shm.control import State
from mp_rl.shm.manifest import SharedRun

PR_SET_PDEATHSIG = 1


def title(run_id: str, member: str) -> str:
    return f"mp_rl[{run_id}] {member}"


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL us when the parent dies; exit now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


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
    handler = logging.FileHandler(Path(run_dir) / "logs" / f"{name}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return log


@contextlib.contextmanager
def member_of(run_dir: str, slot: int, log: logging.Logger) -> Iterator[SharedRun]:
    """Attach to the run as the member in `slot`; a crash is logged with its traceback, exit code 1."""
    shared = SharedRun.attach(run_dir)
    try:
        shared.control.heartbeat(slot)
        shared.control.members[slot, 2] = os.getpid()
        yield shared
    except Exception:
        log.error("%s crashed:\n%s", log.name.removeprefix("mp_rl."), traceback.format_exc())
        sys.stderr.write(traceback.format_exc())
        raise SystemExit(1) from None
    finally:
        shared.close()


def env_spec_of(shared: SharedRun) -> EnvSpec:
    """The env spec the supervisor recorded in the manifest (members never probe the env again)."""
    e = shared.info["env"]
    return EnvSpec(tuple(e["obs_shape"]), e["obs_dtype"], int(e["n_actions"]))


def pin(cfg_json: dict, actor_index: int | None) -> None:
    """`run.pin_cpus`: the learner on the last usable CPU, actor i on CPU i of the others (wrapping),
    so the scheduler does not move them across cores or stack two on one while another idles."""
    if not cfg_json["run"].get("pin_cpus"):
        return
    cpus = sorted(os.sched_getaffinity(0))[: resources.usable_cpus()]
    if len(cpus) < 2:
        return
    os.sched_setaffinity(0, {cpus[-1]} if actor_index is None else {cpus[actor_index % (len(cpus) - 1)]})


def actor_main(
    run_dir: str, cfg_json: dict, slot: int, index: int, count: int, seed: int, parent_pid: int | None
) -> None:
    from mp_rl.actor import Actor

    log = child_setup(Path(run_dir), Path(run_dir).name, f"actor-{index}", parent_pid)
    pin(cfg_json, index)
    torch.set_num_threads(cfg_json["actors"]["torch_threads"])  # N actors must not oversubscribe the cores
    with member_of(run_dir, slot, log) as shared:
        actor = Actor(Config.model_validate(cfg_json), shared, env_spec_of(shared), slot, index, count, seed)
        log.info("actor %d (slot %d) epsilon %.4f", index, slot, actor.epsilon)
        actor.run()
        actor.close()
        if shared.control.state(slot) == State.RETIRING:  # retired: its block is finished, the slot is free
            shared.control.leave(slot)
            log.info("actor %d retired", index)


def learner_main(
    run_dir: str, cfg_json: dict, slot: int, actors: int, resume: str | None, parent_pid: int | None
) -> None:
    from mp_rl import checkpoint
    from mp_rl.learner import Learner

    run_dir_p = Path(run_dir)
    log = child_setup(run_dir_p, run_dir_p.name, "learner", parent_pid)
    cfg = Config.model_validate(cfg_json)
    # The CPUs the actors leave: more intra-op threads would only steal from them.
    pin(cfg_json, None)
    torch.set_num_threads(max(1, resources.usable_cpus() - actors))
    with member_of(run_dir, slot, log) as shared:
        learner = Learner(cfg, shared, env_spec_of(shared), seed=cfg.run.seed)
        if resume:
            learner.restore(checkpoint.load(Path(resume)))
            log.info("resumed from %s at update %d", resume, learner.updates)
        learner.publish()
        log.info("learner on %s, amp %s", learner.device, learner.amp_dtype)
        run_learner(learner, run_dir_p / "checkpoints", slot, log)


def monitor_main(run_dir: str, cfg_json: dict, slot: int, parent_pid: int | None) -> None:
    from mp_rl.monitor.process import Monitor

    log = child_setup(Path(run_dir), Path(run_dir).name, "monitor", parent_pid)
    with member_of(run_dir, slot, log) as shared:
        monitor = Monitor(Config.model_validate(cfg_json), shared, Path(run_dir))
        try:
            monitor.run(beat=lambda: shared.control.heartbeat(slot))
        finally:
            monitor.close()


def run_learner(learner, folder: Path, slot: int, log: logging.Logger) -> None:
    """Train until stop; periodic checkpoints (two kept), then `final.pt`."""
    control, lc = learner.shared.control, learner.cfg.logging
    prof = LearnerProfiler(lc.torch_profile, folder.parent / "profile", lc.torch_profile_schedule,
                           cuda=learner.device.type == "cuda")  # fmt: skip
    beat = 0.0
    while not control.stopping:
        trained = learner.step(timeout=0.25)
        if trained:
            prof.step()
        if trained and learner.updates % lc.checkpoint_every == 0:
            learner.save(folder / f"update-{learner.updates:09d}.pt")
            for old in sorted(folder.glob("update-*.pt"))[:-2]:
                old.unlink(missing_ok=True)
        if time.monotonic() - beat > 0.5:
            control.heartbeat(slot, steps=learner.updates, weights=learner.shared.board.version)
            beat = time.monotonic()
    prof.close()
    learner.close()
    learner.save(folder / "final.pt")
    log.info("final checkpoint at update %d", learner.updates)
