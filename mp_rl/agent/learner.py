"""The learner: Double DQN, QR-DQN or IQN (optional dueling head, Munchausen targets: `losses`), n-step
targets, Adam, gradient clipping, hard or Polyak target updates, AMP on CUDA, a prefetch thread,
weights published every K updates. With `learner.policy_ema` it also keeps a moving average of the
online weights (`averaging`), folded in every K updates: the policy its checkpoints keep and the
run's final evaluation plays, while actors explore with the online weights.

Nothing in the update loop waits for the device (`staging` says how batches and TD errors move):
the loss, mean Q and mean |TD| are summed on the device and read back every `learner.stats_every`
updates; publishes complete when their copy's event fires; on CUDA Adam is fused, so the fp16
scaler's inf check stays on the device too.

The data path, as the README draws it: `step` takes a batch from `self.feed` (`staging.Prefetcher`,
or `staging.Staged` without a thread), whose `get` calls `RingSampler.sample` on the shared ring; it
runs `update`, hands the TD errors to the priorities through `PendingPriorities`, and every
`learner.publish_every` updates starts `WeightBoard.begin_publish` of `self.flat`, which a later
step's `WeightBoard.poll` completes once the copy has landed.

`Learner` is a plain object; `system.entrypoints.learner_main` is the process shell around it;
`Learner.run` is its loop.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mp_rl.agent import checkpoint, growth, impala, losses
from mp_rl.agent.averaging import PolicyAverage
from mp_rl.agent.envspec import EnvSpec
from mp_rl.agent.models import q_network
from mp_rl.agent.priorities import Priorities
from mp_rl.agent.profiling import LearnerProfiler
from mp_rl.agent.staging import PendingPriorities, Prefetcher, Staged
from mp_rl.config import Config
from mp_rl.knobs import Span
from mp_rl.runfolder import FINAL, LEARNER_STATS, PROFILE
from mp_rl.shm.board import flatten_parameters
from mp_rl.shm.control import TARGETS
from mp_rl.shm.manifest import SharedRun
from mp_rl.shm.sampler import read_rows


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


STATS_EVERY_S = 2.0  # at least this long between lines of the training report's loss and mean Q


class Learner:
    """Trains on sampled batches and publishes weights to the board."""

    def __init__(
        self, cfg: Config, shared: SharedRun, spec: EnvSpec, batch: Span, device: torch.device | None = None,
        seed: int = 0,
    ):  # fmt: skip
        self.cfg, self.shared, self.batch, self.spec = cfg, shared, batch, spec
        self.base_learner = cfg.learner  # the widths `learner.grow` counts its percentages from
        self.width = shared.control.target("width") or 100  # the width target last followed
        self.device = device or pick_device(cfg.learner.device)
        lc = cfg.learner
        self.loss_spec = losses.LossSpec.of(lc)
        self.online = q_network(spec, lc).to(self.device)
        self.flat = flatten_parameters(self.online)  # publish = one copy of this
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.average = PolicyAverage.started_at(self.online, lc.policy_ema) if lc.policy_ema else None
        cuda = self.device.type == "cuda"
        self.optimizer = self._adam(self.online)
        self.amp_dtype = None
        if cuda and lc.amp:
            bf16 = torch.cuda.is_bf16_supported() if lc.amp_dtype == "auto" else lc.amp_dtype == "bfloat16"
            self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.max_batch = batch.hi
        rc = cfg.replay
        self.priorities = (
            Priorities(shared.ring, rc.alpha, rc.beta0, rc.beta_steps, rc.priority_eps) if rc.prioritized else None
        )
        self._losses = self._loss_terms
        if lc.compile != "none":  # one graph per batch size; the monitor moves the batch rarely
            self._losses = torch.compile(self._loss_terms, mode=lc.compile, dynamic=False)
        feed = Prefetcher if lc.prefetch else Staged
        self.feed = feed(shared, self.max_batch, self.device, self.batch_size, seed, self.priorities)
        self.pending = PendingPriorities(self.priorities, self.device) if self.priorities is not None else None
        self.updates = 0
        self.folded_at = 0  # the update the average last took the online weights in at
        self.beat = 0.0  # when the last heartbeat went out
        # Loss, mean Q and mean |TD| summed on the device; read back (one host sync) every stats_every updates.
        self.sums, self.summed, self.stats_at = torch.zeros(3, device=self.device), 0, time.monotonic()
        # In its own process: usable CPUs, so intra-op threads follow what the live actors leave.
        self.fit_threads: Callable[[], int] | None = None
        if cuda:
            shared.board.pin()

    @property
    def policy(self) -> torch.nn.Module:
        """The network the run keeps as its result (checkpoints' `policy`, the final evaluation's): the
        average, or the online network when none is kept."""
        return self.online if self.average is None else self.average.net

    @property
    def policy_flat(self) -> torch.Tensor:
        """The policy's weights, as one flat tensor (what `publish_policy` copies)."""
        return self.flat if self.average is None else self.average.flat

    def _adam(self, net: torch.nn.Module) -> torch.optim.Adam:
        # Fused Adam: one kernel per step, and on CUDA it takes the fp16 scaler's found-inf flag on the
        # device (with an unfused optimizer GradScaler.step reads it on the host: a sync per update).
        return torch.optim.Adam(net.parameters(), lr=self.cfg.learner.lr, eps=1.5e-4, fused=True)

    @property
    def arch(self) -> tuple[int, ...]:
        """The network's widths as the board publishes them (`growth.arch_code`)."""
        return growth.arch_code(self.cfg.learner)

    def grow(self, hidden: tuple[int, ...] | None = None, cnn_scale: float | None = None) -> list[growth.Layer]:
        """Rebuild the online and target networks (and the average) at new widths and go on training:
        the weights, the target's, the average's and Adam's moments carried over (`agent.growth`: exact
        for growth). The next publish announces the new layout; actors rebuild when they see it.
        Returns the transfer's plan."""
        self.shared.board.flush()  # no publish of the old flat tensor in flight
        if self.pending is not None:
            self.pending.drain(wait=True)
        update = {k: v for k, v in (("hidden", hidden), ("cnn_scale", cnn_scale)) if v is not None}
        lc = self.cfg.learner.model_copy(update=update)
        online, target = q_network(self.spec, lc).to(self.device), q_network(self.spec, lc).to(self.device)
        layers = growth.transfer(self.online, online)
        growth.transfer(self.target, target, growth.plan_like(layers, self.target, target))
        if self.average is not None:
            self.average = self.average.regrown(online, layers)
        optimizer = self._adam(online)
        growth.transfer_adam(self.optimizer, optimizer, layers)
        self.cfg = self.cfg.model_copy(update={"learner": lc})
        self.online, self.target, self.optimizer = online, target.requires_grad_(False), optimizer
        self.flat = flatten_parameters(self.online)  # after Adam's state moved: it keys on these parameters
        if lc.compile != "none":
            self._losses = torch.compile(self._loss_terms, mode=lc.compile, dynamic=False)
        return layers

    def follow_width(self, stats: Path | None = None) -> float | None:
        """Grow or shrink to the width target (the monitor's, or `mp_rl.tools.grow`'s) when it moves, and
        publish at once; the largest Q change it caused on the newest rows (0 for growth), also written
        to the learner's stats for the training report. None when the target has not moved."""
        want = self.shared.control.target("width")
        if not want or want == self.width:
            return None
        lc = growth.at_width(self.base_learner, want)
        lo, hi = self.shared.ring.window()
        obs = None
        if hi > lo:
            _, rows = read_rows(self.shared.ring, np.arange(max(lo, hi - 256), hi))
            obs = torch.as_tensor(rows["obs"]).to(self.device) if len(rows["obs"]) else None
        before = copy.deepcopy(self.online) if obs is not None else None
        self.grow(hidden=lc.hidden, cnn_scale=lc.cnn_scale)
        change = growth.q_change(before, self.online, obs) if before is not None else 0.0
        old, self.width = self.width, want
        self.publish()  # the new layout goes out now; actors rebuild when they see it
        if stats is not None:
            with open(stats, "a") as f:
                f.write(json.dumps({"unix_time": round(time.time(), 3), "updates": self.updates, "width": want,
                                    "width_was": old, "arch": list(self.arch), "q_change": change}) + "\n")  # fmt: skip
        return change

    def batch_size(self) -> int:
        """The batch for the next update: the monitor's target within the plan's bounds."""
        if not self.batch.auto:
            return self.batch.start
        target = self.shared.control.target("batch_size")
        return min(max(target or self.batch.start, self.batch.lo), self.batch.hi)

    def next_batch(self, timeout: float) -> dict[str, torch.Tensor] | None:
        return self.feed.get(timeout)

    def loss(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss (importance-weighted when prioritized) and each row's TD error (QR-DQN: its
        quantile loss, the magnitude its priority follows)."""
        loss, td, _ = self._losses(b)
        return loss, td

    def _loss_terms(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, TD errors, mean Q): a pure function of the batch and the networks, so it compiles."""
        return losses.loss_terms(self.online, self.target, b, self.loss_spec)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def update(self, batch: dict[str, torch.Tensor]) -> None:
        """One gradient step; queued on the device, never waited for."""
        if self.cfg.learner.spectral_norm:  # outside the (maybe compiled) loss: it writes a parameter
            impala.power_iterations(self.online)
        with self._autocast():
            loss, td, q_mean = self._losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.online.parameters(), self.cfg.learner.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.updates += 1
        self.sums += torch.stack([loss.detach().float(), q_mean.float(), td.abs().float().mean()])
        self.summed += 1
        lc = self.cfg.learner
        if lc.target_update:
            if self.updates % lc.target_update == 0:
                self.target.load_state_dict(self.online.state_dict())
        else:
            with torch.no_grad():
                torch._foreach_lerp_(list(self.target.parameters()), list(self.online.parameters()), lc.tau)
        if self.pending is not None:  # the TD errors go back to the host, where the priorities live
            self.pending.push(batch["seq"], td)

    def step(self, timeout: float = 0.25) -> bool:
        """One update if a batch comes within `timeout`; publishes and counts. False if none came."""
        t0 = time.monotonic_ns()
        batch = self.next_batch(timeout)
        self.shared.control.add("learner_wait_ns", time.monotonic_ns() - t0)
        if batch is None:
            return False
        self.update(batch)
        self.shared.control.add("updates", 1)
        self.shared.board.poll()  # completes the last publish once its copy has landed
        if self.updates % self.cfg.learner.publish_every == 0:
            self.fold()
            self.shared.board.begin_publish(self.flat.detach(), self.arch)
        return True

    def fold(self) -> None:
        """Take the online weights into the average (if any) for the updates since it last did, so its
        horizon is counted in updates whatever the cadence."""
        if self.average is not None and self.updates > self.folded_at:
            self.average.fold(self.flat, self.updates - self.folded_at)
        self.folded_at = self.updates

    def publish(self) -> int:
        """Publish now and wait for it (start-up, resume, tests); the loop's publishes do not wait."""
        return self.shared.board.publish(self.flat.detach(), self.arch)

    def publish_policy(self) -> int:
        """At a stop: publish the policy (the average, if kept), for the run's final evaluation. Actors
        never act with the average: its greedy choice moves only as the online network's settles, and
        from a start without rewards (MinAtar Freeway) it never wandered into the first one."""
        self.fold()
        return self.shared.board.publish(self.policy_flat.detach(), self.arch)

    def run(self, slot: int, folder: Path, log: logging.Logger | None = None) -> None:
        """Train until stop: periodic checkpoints (two kept), heartbeats, the profiler; then `final.pt`.

        The same loop serves the learner process and serial mode (`step_once` there)."""
        control = self.shared.control
        self.beat = 0.0
        prof = self.profiler(folder.parent / PROFILE)
        while not control.stopping:
            self.step_and_keep(slot, folder, prof, timeout=0.25)
        prof.close()
        self.close()
        self.publish_policy()
        self.write_stats(folder.parent / LEARNER_STATS)  # the updates since the last line
        self.save(folder / FINAL)
        if log is not None:
            log.info("final checkpoint at update %d", self.updates)

    def profiler(self, folder: Path) -> LearnerProfiler:
        lc = self.cfg.logging
        return LearnerProfiler(lc.torch_profile, folder, lc.torch_profile_schedule, cuda=self.device.type == "cuda")

    def step_and_keep(self, slot: int, folder: Path, prof: LearnerProfiler | None, timeout: float) -> bool:
        """One `step`, then what the loop owes the run: profiler tick, checkpoint cadence, heartbeat."""
        trained = self.step(timeout)
        if trained and prof is not None:
            prof.step()
        if trained and self.updates % self.cfg.logging.checkpoint_every == 0:
            self.save(folder / f"update-{self.updates:09d}.pt")
            for old in sorted(folder.glob("update-*.pt"))[:-2]:
                old.unlink(missing_ok=True)
        if time.monotonic() - self.beat > 0.5:
            self.shared.control.heartbeat(slot, steps=self.updates, weights=self.shared.board.version)
            self.beat = time.monotonic()
            self._fit_threads()
            self.follow_width(folder.parent / LEARNER_STATS)
        due = trained and self.updates % self.cfg.learner.stats_every == 0
        if due and time.monotonic() - self.stats_at > STATS_EVERY_S:
            self.write_stats(folder.parent / LEARNER_STATS)
        return trained

    def write_stats(self, path: Path) -> None:
        """Append the mean loss, mean Q and mean |TD| of the updates since the last call to `learner.jsonl`."""
        self.stats_at = time.monotonic()
        if not self.summed:
            return
        loss, q, td = (self.sums / self.summed).tolist()  # the one host sync, every stats_every updates
        self.sums.zero_()
        self.summed = 0
        line = {
            "unix_time": round(time.time(), 3),
            "updates": self.updates,
            "loss": round(loss, 6),
            "q_mean": round(q, 4),
            "td_abs": round(td, 5),
        }
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")

    def _fit_threads(self) -> None:
        """Intra-op threads = the CPUs the live actors leave: more would only steal from them."""
        if self.fit_threads is None:
            return
        actors = sum(m["kind"] == "actor" for m in self.shared.control.live_members())
        want = max(1, self.fit_threads() - actors)
        if want != torch.get_num_threads():
            torch.set_num_threads(want)

    # --- checkpoints --------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "model": self.online.state_dict(),
            "target": self.target.state_dict(),
            **({} if self.average is None else {"policy": self.average.net.state_dict()}),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "counters": {**self.shared.control.counters(), "updates": self.updates},
            # The knobs the monitor or the tuner had moved to: a resume starts there, not at the plan's start.
            "knobs": {name: self.shared.control.target(name) for name in TARGETS},
            "config": self.cfg.model_dump(mode="json"),
        }

    def save(self, path: Path) -> None:
        checkpoint.save(path, self.state())

    def restore(self, ckpt: dict) -> None:
        saved = growth.saved_widths(self.cfg.learner, ckpt)
        if growth.arch_code(saved) != self.arch:  # the network had grown: rebuild at its size, then load
            self.grow(hidden=saved.hidden, cnn_scale=saved.cnn_scale)
        self.online.load_state_dict(ckpt["model"])
        self.target.load_state_dict(ckpt["target"])
        if self.average is not None:  # a run that had no average starts it at the online weights
            self.average.net.load_state_dict(ckpt.get("policy", ckpt["model"]))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.updates = self.folded_at = int(ckpt["counters"]["updates"])
        if self.priorities is not None:
            self.reprioritize()  # the replay a resume restored, before the first draw
            self.priorities.updates = self.updates  # beta's annealing goes on from where it was

    def reprioritize(self, chunk: int = 1024) -> int:
        """Priorities of the rows already in the ring (a restored replay) recomputed from their TD
        errors under the restored networks, instead of the maximum every new row enters with. Rows
        whose stamps change meanwhile are skipped. Returns the rows prioritized."""
        ring, done = self.shared.ring, 0
        lo, hi = ring.window()
        self.priorities.admit(lo, hi)
        with (
            torch.no_grad(),
            torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None),
        ):
            for a in range(lo, hi, chunk):
                seqs, rows = read_rows(ring, np.arange(a, min(a + chunk, hi)))
                if len(seqs):
                    _, td, _ = self._loss_terms({k: torch.as_tensor(v).to(self.device) for k, v in rows.items()})
                    self.priorities.update(seqs, td.float().cpu().numpy())
                    done += len(seqs)
        return done

    def close(self) -> None:
        self.feed.close()
        if self.pending is not None:
            self.pending.drain(wait=True)
        self.shared.board.flush()
