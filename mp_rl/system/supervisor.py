"""The supervisor: create the shared segments, spawn learner and actors, watch them, stop in stages.

Order of a run: preflight (nothing created on bad input) -> run folder + segments -> learner ->
actors -> watch loop (status line, metrics, evaluation, restarts) -> staged stop (stop flag ->
join -> terminate -> kill, under one deadline) -> final evaluation -> unlink every segment.
The processes themselves (spawn, restart, retire, stop) are the `Crew`'s (crew.py).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from pathlib import Path

from setproctitle import setproctitle

from mp_rl import report
from mp_rl.agent.evaluation import Evaluator
from mp_rl.files import write_json_atomic
from mp_rl.runfolder import RunFolder
from mp_rl.shm.control import Kind
from mp_rl.shm.manifest import SharedRun
from mp_rl.shm.reaper import remove_dead
from mp_rl.start import autotune
from mp_rl.start.autotune import Tuner
from mp_rl.start.preflight import Plan
from mp_rl.system.crew import Crew
from mp_rl.system.entrypoints import title
from mp_rl.system.lifecycle import keep_replay, open_run, restore_replay
from mp_rl.system.progress import Metrics, StatusOutput

log = logging.getLogger("mp_rl.supervisor")


class Supervisor:
    def __init__(self, plan: Plan, run_dir: Path, resume: Path | None = None, counters: dict | None = None,
                 retune: bool = False, stop_when_tuned: bool = False, knobs: dict | None = None):  # fmt: skip
        self.plan, self.cfg, self.run_dir, self.run_id = plan, plan.cfg, run_dir, run_dir.name
        self.resume, self.counters, self.knobs = resume, counters or {}, knobs
        self.crew: Crew | None = None  # set once the segments exist
        self.signals = 0
        self.error: str | None = None
        self.reason = ""
        self.shared: SharedRun | None = None
        self.metrics: Metrics | None = None  # set once the watch loop starts
        self.evaluator: Evaluator | None = None
        self.retune, self.stop_when_tuned = retune, stop_when_tuned
        self.tuner: Tuner | None = None

    # --- start --------------------------------------------------------------------------------
    def start(self, out: StatusOutput) -> None:
        setproctitle(title(self.run_id, "supervisor"))
        for run_id in remove_dead():  # never raises: a cleanup failure must not stop a start
            log.warning("removed the segments of dead run %s", run_id)
        self.shared = open_run(self.plan, self.run_dir, self.counters, self.knobs)
        if self.resume is not None and (line := restore_replay(self.shared, self.run_dir)):
            out.say(line)  # before the learner and the actors start
        self.crew = crew = Crew(self.plan, self.run_dir, self.shared, self.resume)
        if self.cfg.run.autotune:
            self.tuner = autotune.for_run(self.plan, self.shared.control, self._sampling, self.retune)
            self.tuner.say = out.say
            if self.tuner.cached:  # start at the recorded point; the tuner only probes it
                self.tuner.apply(self.tuner.best)
        crew.add(Kind.LEARNER)
        for i in range(self.shared.control.target("actors")):
            crew.add(Kind.ACTOR, i)
        if self.cfg.monitor.enabled and self.tuner is None:  # while tuning, the tuner moves the knobs
            crew.add(Kind.MONITOR)

    def _sampling(self) -> bool:
        """The learner samples: from here on the rate limiter holds the replay ratio."""
        return self.shared.control.counters()["updates"] > 0

    def _tuned(self, out: StatusOutput) -> None:
        t = self.tuner
        write_json_atomic(RunFolder(self.run_dir).autotune, t.result())
        p = t.best
        how = f"searched {len(t.trials)} points in {t.seconds:.0f}s" if t.searched else "cached point, probed"
        out.say(f"autotune: {p.envs_per_actor} envs per actor, {p.actors} actor(s), batch {p.batch}: "
                f"{t.best_rate:,.0f} env steps/s ({how})")  # fmt: skip
        if self.stop_when_tuned:
            self.reason = "tuned"
        elif self.cfg.monitor.enabled:  # the monitor starts from the tuned point
            self.crew.add(Kind.MONITOR)

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
            write_json_atomic(RunFolder(self.run_dir).summary_file, final)
        if self.cfg.logging.report and not self.stop_when_tuned:  # a tuning run trains nothing worth a report
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
            self.crew.tick()
            if self.crew.error:
                self.error = self.crew.error
                break
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

    # --- stop ---------------------------------------------------------------------------------
    def _shutdown(self, out: StatusOutput) -> dict | None:
        if self.shared is None:
            return None
        try:
            return self._stop_and_report(out)
        finally:
            if self.evaluator is not None:  # after an error or a second Ctrl-C, one may still be running
                self.evaluator.close()
            self.shared.close()  # unlink every segment we created, whatever happened above

    def _stop_and_report(self, out: StatusOutput) -> dict | None:
        self.reason = self.error or self.reason or "stopped"
        out.say(f"stopping: {self.reason}")
        self.shared.control.request_stop()
        self.shared.ring.close_waiters()
        if self.crew is not None:
            self.crew.stop(hurry=lambda: self.signals >= 2)
        clean = self.signals < 2 and not self.error and not self.stop_when_tuned  # and no writer is left
        if clean and (line := keep_replay(self.shared, self.cfg, self.run_dir)):
            out.say(line)
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
