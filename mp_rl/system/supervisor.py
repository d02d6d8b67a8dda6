"""The supervisor: create the shared segments, spawn learner and actors, watch them, stop in stages.

Order of a run: preflight (nothing created on bad input) -> run folder + segments -> learner ->
actors -> watch loop (status line, metrics, evaluation, restarts) -> staged stop (stop flag ->
join -> terminate -> kill, under one deadline) -> final evaluation -> unlink every segment.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from setproctitle import setproctitle

from mp_rl import report
from mp_rl.agent.evaluation import Evaluator
from mp_rl.shm.control import Kind, State
from mp_rl.shm.manifest import SharedRun, write_json_atomic
from mp_rl.shm.reaper import remove_dead
from mp_rl.start import tune
from mp_rl.start.preflight import Plan
from mp_rl.start.tune import Tuner
from mp_rl.system.launch import apply_capacity, open_run
from mp_rl.system.progress import Metrics, StatusOutput
from mp_rl.system.shells import ActorArgs, LearnerArgs, MonitorArgs, actor_main, learner_main, monitor_main, title

log = logging.getLogger("mp_rl.supervisor")

HEALTHY_S = 60.0  # a member up this long since its last start has its restart count forgiven


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


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
        if _alive(m["pid"]):
            if m["heartbeat_age_s"] > timeout:
                seen.add(m["pid"])
                if m["pid"] not in silent:
                    log.warning("attached actor in slot %d (pid %d) silent for %.0fs; it keeps its slot while its "
                                "process lives", m["slot"], m["pid"], m["heartbeat_age_s"])  # fmt: skip
            continue
        voided = shared.ring.void_member(m["slot"] + 1)  # its half-written block is never stamped
        control.leave(m["slot"])
        log.warning("attached actor in slot %d (pid %d) is gone: slot freed, %d block(s) voided",
                    m["slot"], m["pid"], voided)  # fmt: skip
    return seen


class Supervisor:
    def __init__(self, plan: Plan, run_dir: Path, resume: Path | None = None, counters: dict | None = None,
                 retune: bool = False, stop_when_tuned: bool = False):  # fmt: skip
        self.plan, self.cfg, self.run_dir, self.run_id = plan, plan.cfg, run_dir, run_dir.name
        self.resume, self.counters = resume, counters or {}
        self.ctx = mp.get_context("spawn")  # CUDA-safe: no inherited CUDA context, clean interpreters
        self.members: dict[int, Member] = {}
        self.signals = 0
        self.error: str | None = None
        self.reason = ""
        self.shared: SharedRun | None = None
        self.metrics: Metrics | None = None  # set once the watch loop starts
        self.evaluator: Evaluator | None = None
        self.silent: set[int] = set()  # pids of attached actors already reported silent
        self.retune, self.stop_when_tuned = retune, stop_when_tuned
        self.tuner: Tuner | None = None

    # --- start --------------------------------------------------------------------------------
    def start(self, out: StatusOutput) -> None:
        setproctitle(title(self.run_id, "supervisor"))
        for run_id in remove_dead():  # never raises: a cleanup failure must not stop a start
            log.warning("removed the segments of dead run %s", run_id)
        self.shared = open_run(self.plan, self.run_dir, self.counters)
        control = self.shared.control
        if self.cfg.run.autotune:
            self.tuner = tune.for_run(self.plan, control, self._sampling, self.retune)
            self.tuner.say = out.say
            if self.tuner.cached:  # start at the recorded point; the tuner only probes it
                self.tuner.apply(self.tuner.best)
        self._spawn(Member(Kind.LEARNER, control.claim(Kind.LEARNER, pid=0), 0))
        for i in range(control.target("actors")):
            self._spawn(Member(Kind.ACTOR, control.claim(Kind.ACTOR, pid=0, index=i), i))
        if self.cfg.monitor.enabled and self.tuner is None:  # while tuning, the tuner moves the knobs
            self._spawn(Member(Kind.MONITOR, control.claim(Kind.MONITOR, pid=0), 0))

    def _sampling(self) -> bool:
        """The learner samples: from here on the rate limiter holds the replay ratio."""
        return self.shared.control.counters()["updates"] > 0

    def _tuned(self, out: StatusOutput) -> None:
        t = self.tuner
        write_json_atomic(self.run_dir / "autotune.json", t.result())
        p = t.best
        how = f"searched {len(t.trials)} points in {t.seconds:.0f}s" if t.searched else "cached point, probed"
        out.say(f"autotune: {p.envs_per_actor} envs per actor, {p.actors} actor(s), batch {p.batch}: "
                f"{t.best_rate:,.0f} env steps/s ({how})")  # fmt: skip
        if self.stop_when_tuned:
            self.reason = "tuned"
        elif self.cfg.monitor.enabled:  # the monitor starts from the tuned point
            self._spawn(Member(Kind.MONITOR, self.shared.control.claim(Kind.MONITOR, pid=0), 0))

    def _spawn(self, m: Member) -> None:
        base = dict(run_dir=str(self.run_dir), cfg_json=self.cfg.model_dump(mode="json"), slot=m.slot,
                    parent_pid=os.getpid())  # fmt: skip
        knobs = self.plan.knobs.to_json()
        if m.kind is Kind.LEARNER:
            resume = str(self.resume) if self.resume else None
            target, args = learner_main, LearnerArgs(**base, knobs=knobs, resume=resume)
        elif m.kind is Kind.MONITOR:
            target, args = monitor_main, MonitorArgs(**base, knobs=knobs)
        else:
            seed = self.cfg.run.seed + 1000 * m.restarts + m.index
            target, args = actor_main, ActorArgs(**base, index=m.index, count=self.plan.epsilons_for, seed=seed)
        m.process = self.ctx.Process(target=target, args=(args,), name=m.name)
        self.shared.control.heartbeat(m.slot)  # a fresh member gets a full timeout to start
        m.process.start()
        m.started, m.restart_at = time.monotonic(), None
        self.members[m.slot] = m

    # --- watch --------------------------------------------------------------------------------
    def run(self) -> int:
        """Start, watch until a stop condition, stop in stages. Returns the process exit code."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        out = StatusOutput(self.run_dir, self.run_id, (self.cfg.run.total_env_steps, self.cfg.run.wall_time_s))
        try:
            self.start(out)
            if self.cfg.logging.tensorboard and not out.enable_tensorboard(self.run_dir):
                out.say("logging.tensorboard: tensorboard is not installed; metrics.jsonl only")
            for note in self.plan.warnings:
                out.say(f"note: {note}")
            out.say(f"run folder {self.run_dir}")
            self._watch(out)
        finally:
            final = self._shutdown(out)
            out.close()
        if final:
            write_json_atomic(self.run_dir / "summary.json", final)
        if not self.stop_when_tuned:  # a tuning run trains nothing worth a report
            self._report()
        return 1 if self.error else 0

    def _report(self) -> None:
        """The training report (PNG and text) beside the run's files; a run never fails for its sake."""
        try:
            png, _ = report.write(self.run_dir)
        except report.ReportError as exc:
            log.info("no training report: %s", exc)
            return
        except Exception:  # plotting is the run's last courtesy, not its result
            log.exception("the training report could not be written")
            return
        with contextlib.suppress(OSError):  # a closed stdout (`| head -1`) must not fail a finished run
            print(f"training report: {png}", flush=True)

    def _on_signal(self, signum, _frame) -> None:
        self.signals += 1
        self.reason = self.reason or f"{signal.Signals(signum).name.lower()} received"
        if self.shared is not None:
            self.shared.control.request_stop()
        if self.signals >= 2 and self.evaluator is not None:  # a second Ctrl-C: no evaluation holds the stop
            self.evaluator.cancel.set()

    def _watch(self, out: StatusOutput) -> None:
        control, cfg = self.shared.control, self.cfg
        self.metrics = metrics = Metrics(self.shared)
        self.evaluator = Evaluator(cfg, self.plan.spec, self.shared, self.run_dir)
        started, next_status = time.monotonic(), time.monotonic() + cfg.logging.status_every_s
        while not control.wait_stop(0.1):
            self._check_members()
            if self.error:
                break
            self._check_attached()
            self._reconcile()
            now = time.monotonic()
            if self.tuner is not None and not self.tuner.done and self.tuner.step(now):
                self._tuned(out)
            if now >= next_status:
                m = metrics.snapshot()
                m["eval_return"] = self.evaluator.last
                out.show(m, self.evaluator.describe())
                next_status = now + cfg.logging.status_every_s
            self.evaluator.maybe_start()
            if control.counters()["env_steps"] >= cfg.run.total_env_steps:
                self.reason = f"run.total_env_steps {cfg.run.total_env_steps:,} reached"
            elif cfg.run.wall_time_s and now - started >= cfg.run.wall_time_s:
                self.reason = f"run.wall_time_s {cfg.run.wall_time_s:g} reached"
            elif self.evaluator.reached_target():
                self.reason = f"evaluation return {self.evaluator.last:.1f} reached run.target_return"
            if self.reason:
                break

    def _check_members(self) -> None:
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

    def _check_attached(self) -> None:
        """Actors attached by hand are not ours to restart or kill."""
        self.silent |= reap_attached(self.shared, set(self.members), self.cfg.run.heartbeat_timeout_s, self.silent)

    def _reconcile(self) -> None:
        """Move toward the targets in the control block (the monitor writes them): actors, capacity."""
        control = self.shared.control
        actors = sorted((m for m in self.members.values() if m.kind is Kind.ACTOR and not m.retiring),
                        key=lambda m: m.index)  # fmt: skip
        want = max(1, control.target("actors"))
        if len(actors) < want:
            used = {m.index for m in self.members.values() if m.kind is Kind.ACTOR}
            index = next(i for i in range(len(used) + 1) if i not in used)
            try:
                self._spawn(Member(Kind.ACTOR, control.claim(Kind.ACTOR, pid=0, index=index), index))
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
        self.shared.ring.void_member(m.slot + 1)  # nothing half-written stays, even if it died retiring
        if self.shared.control.state(m.slot) is not State.FREE:
            self.shared.control.leave(m.slot)
        del self.members[m.slot]

    def _schedule_restart(self, m: Member) -> None:
        self.shared.ring.void_member(m.slot + 1)  # leases its dead writer held
        m.restarts += 1
        name = m.name
        if m.restarts > self.cfg.run.max_restarts:
            self.error = f"{name} failed {m.restarts} times (see {self.run_dir}/logs/{name}.log)"
            return
        delay = min(10.0, 0.5 * 2 ** (m.restarts - 1))
        log.warning("%s exited with code %s; restart %d in %.1fs", name, m.process.exitcode, m.restarts, delay)
        m.restart_at = time.monotonic() + delay

    # --- stop ---------------------------------------------------------------------------------
    def _shutdown(self, out: StatusOutput) -> dict | None:
        if self.shared is None:
            return None
        try:
            return self._stop_and_report(out)
        finally:
            self.shared.close()  # unlink every segment we created, whatever happened above

    def _stop_and_report(self, out: StatusOutput) -> dict | None:
        self.reason = self.error or self.reason or "stopped"
        out.say(f"stopping: {self.reason}")
        self.shared.control.request_stop()
        self.shared.ring.close_waiters()
        self._stop_processes()
        if self.metrics is not None:
            out.show(self.metrics.snapshot(), "stopped")  # the last line of metrics.jsonl is the final state
        final = None
        if self.signals < 2 and not self.error and not self.stop_when_tuned:
            final = self.evaluator.final() if self.evaluator is not None else None
            if final:
                best = ""
                if self.evaluator.best > final["eval_return_mean"]:  # DQN wobbles: say where the best weights are
                    best = f"; best {self.evaluator.best:.1f}, kept in checkpoints/best.pt"
                out.say(f"final greedy evaluation: mean return {final['eval_return_mean']:.1f} "
                        f"over {final['eval_episodes']} episodes{best}")  # fmt: skip
        if self.error:
            out.say(f"error: {self.error}")
        return final

    def _stop_processes(self) -> None:
        """join -> terminate -> kill under one deadline; a second signal skips to kill."""
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
                if stage == "join" and self.signals >= 2:
                    break
                for p in alive:
                    p.join(0.05)
        for p in procs:
            p.join(1.0)
        for m in self.members.values():
            if m.process is not None and m.process.exitcode is not None:
                self.shared.control.leave(m.slot)
