"""The supervisor's own processes: the learner, the actors and the monitor, each a `Member` in a slot.

`Crew` spawns them, and on each tick of the supervisor's watch loop restarts the dead with backoff,
kills the silent, forgives the healthy, frees the slots of attached actors whose process is gone,
and moves the actor count toward the target the monitor writes. `stop` ends them in stages (join ->
terminate -> kill) under one deadline.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mp_rl.shm.control import Kind
from mp_rl.shm.manifest import SharedRun
from mp_rl.start.preflight import Plan
from mp_rl.system import forks
from mp_rl.system.entrypoints import (
    ActorArgs,
    LearnerArgs,
    MonitorArgs,
    actor_main,
    learner_main,
    monitor_main,
    run_member,
)
from mp_rl.system.lifecycle import apply_capacity

log = logging.getLogger("mp_rl.supervisor")

HEALTHY_S = 60.0  # a member up this long since its last start has its restart count forgiven


@dataclass
class Member:
    kind: Kind
    slot: int
    index: int
    process: mp.process.BaseProcess | None = None
    restarts: int = 0
    restart_at: float | None = None
    started: float = field(default_factory=time.monotonic)
    retiring: bool = False
    generation: int = 0  # of its slot's claim: a slot claimed again since is not this member's to clear

    @property
    def name(self) -> str:
        return f"actor-{self.index}" if self.kind is Kind.ACTOR else self.kind.name.lower()


def reap_attached(shared: SharedRun, ours: set[int], timeout: float, silent: set[int]) -> set[int]:
    """Free the slots of attached actors whose process is gone (voiding their half-written blocks).

    A silent one whose process lives keeps its slot: freeing it would let another member claim the
    slot while the old process still writes with the slot's token and, on its way out, frees the new
    occupant's slot. Returns the pids seen silent now (each is logged once)."""
    control, seen = shared.control, set()
    for m in control.live_members():
        if not m["attached"] or m["slot"] in ours:
            continue
        if forks.running(m["pid"]):
            if m["heartbeat_age_s"] > timeout:
                seen.add(m["pid"])
                if m["pid"] not in silent:
                    log.warning("attached actor in slot %d (pid %d) silent for %.0fs; it keeps its slot while its "
                                "process lives", m["slot"], m["pid"], m["heartbeat_age_s"])  # fmt: skip
            continue
        # Held by generation, not freed from the snapshot: had the old actor left and a new member
        # claimed the slot meanwhile, the void would take the newcomer's lease and free its slot.
        if not control.take_over(m["slot"], m["generation"]):
            continue
        voided = shared.ring.void_member(m["slot"] + 1)  # its half-written block is never stamped
        control.leave(m["slot"])
        log.warning("attached actor in slot %d (pid %d) is gone: slot freed, %d block(s) voided",
                    m["slot"], m["pid"], voided)  # fmt: skip
    return seen


class Crew:
    """The members one supervisor spawned, by slot. `error` is set when the run cannot go on."""

    def __init__(self, plan: Plan, run_dir: Path, shared: SharedRun, resume: Path | None = None):
        self.plan, self.cfg, self.run_dir, self.shared, self.resume = plan, plan.cfg, run_dir, shared, resume
        self.ctx = forks.context()  # forks of a clean server: no inherited CUDA context, torch imported once
        self.members: dict[int, Member] = {}
        self.silent: set[int] = set()  # pids of attached actors already reported silent
        self.error: str | None = None

    def add(self, kind: Kind, index: int = 0) -> None:
        """Claim a slot for a new member and spawn it; RuntimeError when every slot is taken."""
        self._spawn(self._claim(Member(kind, -1, index)))

    def _claim(self, m: Member) -> Member:
        control = self.shared.control
        m.slot = control.claim(m.kind, pid=0, index=m.index)
        m.generation = control.generation(m.slot)
        return m

    def _clear(self, m: Member) -> None:
        """Void the leases a gone member's process held and free its slot, if the slot is still that
        member's claim (by compare-and-swap on its generation): one it left, that a newcomer took
        meanwhile, keeps the newcomer's lease and slot."""
        control = self.shared.control
        if control.take_over(m.slot, m.generation):
            self.shared.ring.void_member(m.slot + 1)
            control.leave(m.slot)

    def _spawn(self, m: Member) -> None:
        base = dict(run_dir=str(self.run_dir), cfg_json=self.cfg.model_dump(mode="json"), slot=m.slot,
                    parent_pid=os.getpid())  # fmt: skip
        if m.kind is Kind.LEARNER:
            resume = str(self.resume) if self.resume else None
            target, args = learner_main, LearnerArgs(**base, resume=resume)
        elif m.kind is Kind.MONITOR:
            target, args = monitor_main, MonitorArgs(**base)
        else:
            seed = self.cfg.run.seed + 1000 * m.restarts + m.index
            target, args = actor_main, ActorArgs(**base, index=m.index, count=self.plan.epsilons_for, seed=seed)
        m.process = self.ctx.Process(target=run_member, args=(target, args), name=m.name)
        self.shared.control.heartbeat(m.slot)  # a fresh member gets a full timeout to start
        try:
            m.process.start()
        except (OSError, EOFError) as exc:  # no fork (EAGAIN: a pids limit, ENOMEM), or the server died of it
            self._clear(m)
            self.members.pop(m.slot, None)
            self.error = f"could not start {m.name}: {type(exc).__name__}: {exc} (members start by {forks.method()})"
            return
        m.started, m.restart_at = time.monotonic(), None
        self.members[m.slot] = m

    def tick(self) -> None:
        """One pass of the watch loop: our members, the attached ones, then the targets."""
        self.check_members()
        if self.error:
            return
        timeout = self.cfg.run.heartbeat_timeout_s
        self.silent |= reap_attached(self.shared, set(self.members), timeout, self.silent)  # not ours to restart
        self.reconcile()

    def check_members(self) -> None:
        if forks.server_died():  # its members died with it (their death signal), and their exit codes
            self.error = "the members' fork server died (killed, or a fork failed), and the members with it"
            return
        control, now = self.shared.control, time.monotonic()
        timeout = self.cfg.run.heartbeat_timeout_s
        for m in list(self.members.values()):
            if m.restart_at is not None:
                if now >= m.restart_at:
                    self._spawn(m)
                continue
            if m.restarts and now - m.started > max(HEALTHY_S, 2 * timeout):
                log.info("%s healthy for %.0fs: its %d restart(s) are forgiven", m.name, now - m.started, m.restarts)
                m.restarts = 0
            age = control.heartbeat_age(m.slot)  # None once it has left its slot (retired)
            if m.process.is_alive() and age is not None and age > timeout:
                log.warning("%s silent for %.0fs: killing it", m.name, age)
                m.process.kill()
                m.process.join(5)
            if m.process.exitcode is None:
                continue
            if m.retiring:  # asked to leave: it finished its block and released its slot
                log.info("%s retired (exit code %s)", m.name, m.process.exitcode)
                self._retired(m)
                continue
            if m.kind is Kind.LEARNER:
                self.error = (
                    f"learner exited with code {m.process.exitcode} (traceback in {self.run_dir}/logs/learner.log)"
                )
                return
            self._schedule_restart(m)

    def reconcile(self) -> None:
        """Move toward the targets in the control block (the monitor writes them): actors, capacity."""
        control = self.shared.control
        actors = sorted((m for m in self.members.values() if m.kind is Kind.ACTOR and not m.retiring),
                        key=lambda m: m.index)  # fmt: skip
        want = max(1, control.target("actors"))
        if len(actors) < want:
            used = {m.index for m in self.members.values() if m.kind is Kind.ACTOR}
            index = next(i for i in range(len(used) + 1) if i not in used)
            try:
                self.add(Kind.ACTOR, index)
                log.info("actor-%d started (target %d actors)", index, want)
            except RuntimeError as exc:  # every slot taken (attached actors): the target waits
                log.warning("cannot add an actor: %s", exc)
        elif len(actors) > want:
            m = actors[-1]
            if m.restart_at is not None:  # not running: just do not bring it back
                self._retired(m)
            elif control.retire(m.slot):
                m.retiring = True
                log.info("actor-%d retiring (target %d actors)", m.index, want)
        apply_capacity(self.shared)

    def _retired(self, m: Member) -> None:
        self._clear(m)  # nothing half-written stays, even if it died retiring
        del self.members[m.slot]

    def _schedule_restart(self, m: Member) -> None:
        self._clear(m)  # leases its dead writer held
        m.restarts += 1
        name = m.name
        if m.restarts > self.cfg.run.max_restarts:
            self.error = f"{name} failed {m.restarts} times (see {self.run_dir}/logs/{name}.log)"
            return
        del self.members[m.slot]
        try:  # a fresh claim now: no one takes the slot while the restart waits
            self._claim(m)
        except RuntimeError as exc:  # every slot taken meanwhile (attached actors): reconcile adds it later
            log.warning("%s not restarted: %s", name, exc)
            return
        self.members[m.slot] = m
        delay = min(10.0, 0.5 * 2 ** (m.restarts - 1))
        log.warning("%s exited with code %s; restart %d in %.1fs", name, m.process.exitcode, m.restarts, delay)
        m.restart_at = time.monotonic() + delay

    def stop(self, hurry: Callable[[], bool]) -> None:
        """join -> terminate -> kill under one deadline; `hurry()` true (a second signal) skips to kill."""
        procs = [m.process for m in self.members.values() if m.process is not None]
        deadline = time.monotonic() + self.cfg.run.stop_deadline_s
        for stage in ("join", "terminate", "kill"):
            alive = [p for p in procs if p.is_alive()]
            if not alive:
                break
            if stage == "terminate":
                for p in alive:
                    p.terminate()
            elif stage == "kill":
                for p in alive:
                    p.kill()
            end = deadline if stage == "join" else time.monotonic() + 1.0
            while time.monotonic() < end and any(p.is_alive() for p in alive):
                if stage == "join" and hurry():
                    break
                for p in alive:
                    p.join(0.05)
        # A killed member is gone once the kernel has freed what it held (pinned or CUDA memory takes a
        # while): wait for that, bounded, so that a run started next finds it free.
        end = time.monotonic() + 10.0
        for p in procs:
            p.join(max(0.0, end - time.monotonic()))
            if p.is_alive():
                log.warning("%s (pid %d) still alive after it was killed", p.name, p.pid)
        for m in self.members.values():
            if m.process is not None and m.process.exitcode is not None:
                self.shared.control.leave(m.slot)
