"""The actor: a vector env, a CPU copy of the policy, Ape-X epsilon, n-step rows written in blocks.

`Actor` is a plain object (one process can run it, a test can step it); `system.entrypoints.actor_main` is the
process shell around it. What it uses of its run is written down in `ports.ActorRun`: shared memory on
the learner's machine (`SharedRun`), calls to an ingest on another (`remote.link.LinkedRun`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from mp_rl.agent import growth
from mp_rl.agent.envs import make_actor_envs
from mp_rl.agent.envspec import EnvSpec
from mp_rl.agent.models import q_values
from mp_rl.agent.nstep import BlockPacker, FrameBlockBuilder, NStepBuilder
from mp_rl.config import Config
from mp_rl.ports import ActorRun
from mp_rl.shm.control import State
from mp_rl.shm.ring import RingClosed, RingSpec


def ape_x_epsilon(index: int, count: int, base: float = 0.4, alpha: float = 7.0) -> float:
    """Ape-X: actor i of N explores with eps ** (1 + alpha * i / (N - 1)).

    >>> round(ape_x_epsilon(0, 8), 3), round(ape_x_epsilon(7, 8), 5)
    (0.4, 0.00066)
    """
    return base ** (1 + alpha * index / (count - 1)) if count > 1 else base


RETIRE_GRACE_S = 5.0  # a retired actor held by the rate limiter waits this long to write its last block


class Detached(Exception):
    """The actor was told to go (retired, or its run is gone) while the rate limiter held it back."""


class Lane:
    """Envs stepped together, their row builder, their latest observations and the actions in flight."""

    def __init__(self, env, builder: NStepBuilder, obs: np.ndarray):
        self.env, self.builder, self.obs = env, builder, obs
        self.actions: np.ndarray | None = None
        self.epsilons: np.ndarray | None = None


class Actor:
    """Steps `envs_per_actor` environments with one batched policy call per step.

    One lane (a Gymnasium vector env) is stepped synchronously. EnvPool gives two lanes, stepped in
    turn: receive one lane's step, choose its actions, send them, and build its rows while that
    lane's C++ threads step and the other lane's step is still in flight.
    """

    def __init__(self, cfg: Config, shared: ActorRun, spec: EnvSpec, slot: int, index: int, count: int, seed: int,
                 follow_envs: bool = False):  # fmt: skip
        self.cfg, self.shared, self.spec, self.slot = cfg, shared, spec, slot
        self.index, self.count, self.seed = index, count, seed
        # The supervisor's actors take their env count from the control block (the tuner's trials move
        # it); an actor attached by hand keeps the count it was started with.
        self.follow_envs = follow_envs
        self.copy = growth.Copy(spec, cfg.learner)  # the policy: the learner's network, resizes followed
        self.since_sync = 0  # env steps since they were read
        self.rng = np.random.default_rng(seed)
        self.asynchronous = cfg.env.backend == "envpool"
        self.lanes: list[Lane] = []
        self.replaced_steps = 0  # steps of lanes a resize closed
        want = shared.control.target("envs_per_actor") if follow_envs else 0
        self._make_lanes(want or cfg.env.envs_per_actor)
        self.writer = shared.ring.writer(token=slot + 1)
        self.held_since: float | None = None  # monotonic time the rate limiter began holding a block back
        self.on_blocked: Callable[[], object] | None = None
        self.run_alive: Callable[[], bool] = lambda: True  # an attached actor's check on its supervisor

    def _make_lanes(self, num_envs: int) -> None:
        envs = make_actor_envs(self.cfg.env.model_copy(update={"envs_per_actor": num_envs}), self.seed)
        self.num_envs = sum(e.num_envs for e in envs)
        self.epsilons = self._epsilons(self.cfg, self.index, self.count)
        self.lanes, first, self.turn = [], 0, 0
        ring = self.shared.ring.spec
        packer = BlockPacker(ring.block)  # one partial block per actor, whatever its lanes
        for env in envs:
            obs, _ = env.reset(seed=self.seed)
            lane = Lane(env, self._builder(self.cfg, ring, self.spec, env.num_envs, packer), obs)
            lane.epsilons, first = self.epsilons[first : first + env.num_envs], first + env.num_envs
            lane.builder.start(obs)
            self.lanes.append(lane)

    def resize(self, num_envs: int) -> None:
        """Step `num_envs` envs from now on: write what the old ones know (as a retiring actor does),
        close them, start new ones."""
        self.finish()
        self.replaced_steps = self.steps
        for lane in self.lanes:
            lane.env.close()
        self._make_lanes(num_envs)

    def _epsilons(self, cfg: Config, index: int, count: int) -> np.ndarray:
        """One epsilon per env. Per env (the default), every env of every actor is one of Ape-X's
        explorers, so even a single actor's envs span eps_base .. eps_base ** (1 + alpha); per actor,
        actor i of N gives all its envs the same one."""
        a, n = cfg.actors, self.num_envs
        if a.eps_per == "env":
            return np.array([ape_x_epsilon(index * n + j, count * n, a.eps_base, a.eps_alpha) for j in range(n)])
        return np.full(n, ape_x_epsilon(index, count, a.eps_base, a.eps_alpha))

    @property
    def epsilon_range(self) -> str:
        lo, hi = float(self.epsilons.min()), float(self.epsilons.max())
        return f"{hi:.4f}" if lo == hi else f"{hi:.4f}..{lo:.5f}"

    @staticmethod
    def _builder(
        cfg: Config, ring: RingSpec, spec: EnvSpec, num_envs: int, packer: BlockPacker | None = None
    ) -> NStepBuilder:
        """Frame rows when the ring keeps frames (one block per env per `block` steps), whole rows otherwise
        (packed into blocks by `packer`, which the actor's lanes share)."""
        n, gamma = cfg.replay.n_step, cfg.replay.gamma
        if ring.frames is not None:
            f = ring.frames
            return FrameBlockBuilder(num_envs, f.shape, f.dtype, n, gamma, f.stack, ring.block)
        chunk = NStepBuilder.chunk_for(num_envs, spec.obs_shape, spec.obs_dtype)
        return NStepBuilder(num_envs, spec.obs_shape, spec.obs_dtype, n, gamma, chunk=chunk, block=ring.block,
                            packer=packer)  # fmt: skip

    # The first lane, by the names a one-lane actor has always had (tests and benchmarks swap its env).
    env = property(lambda self: self.lanes[0].env, lambda self, env: setattr(self.lanes[0], "env", env))
    builder = property(lambda self: self.lanes[0].builder)
    obs = property(lambda self: self.lanes[0].obs)

    def act(self, obs: np.ndarray, epsilons: np.ndarray | None = None) -> np.ndarray:
        with torch.inference_mode():
            actions = q_values(self.policy(torch.as_tensor(obs))).argmax(dim=1).numpy()
        explore = self.rng.random(len(actions)) < (self.epsilons if epsilons is None else epsilons)
        actions[explore] = self.rng.integers(0, self.spec.n_actions, int(explore.sum()))
        return actions

    @property
    def steps(self) -> int:
        """Env steps accounted so far (per chunk; autoreset steps are not steps of any episode)."""
        return self.replaced_steps + sum(lane.builder.taken for lane in self.lanes)

    def step(self) -> int:
        """One vector step of one lane: act, step its envs; every chunk, write its rows and report its
        episodes. Returns the lane's width, the steps attempted (`steps` is the exact count, per chunk)."""
        if self.asynchronous:
            return self._step_async()
        lane = self.lanes[0]
        actions = self.act(lane.obs, lane.epsilons)
        lane.obs, reward, terminated, truncated, _ = lane.env.step(actions)
        self._emit(lane.builder.add(actions, reward, lane.obs, terminated, truncated), lane.builder)
        return len(actions)

    def _step_async(self) -> int:
        lane = self.lanes[self.turn]
        self.turn = (self.turn + 1) % len(self.lanes)
        if lane.actions is None:  # the lane's first step: nothing in flight yet
            lane.actions = self.act(lane.obs, lane.epsilons)
            lane.env.send(lane.actions)
            return 0
        obs, reward, terminated, truncated, _ = lane.env.recv()
        sent, lane.obs = lane.actions, obs
        lane.actions = self.act(obs, lane.epsilons)
        lane.env.send(lane.actions)  # the lane steps from here; its rows are built meanwhile
        self._emit(lane.builder.add(sent, reward, obs, terminated, truncated), lane.builder)
        return len(sent)

    def _emit(self, out, builder: NStepBuilder) -> None:
        """Write what the builder returned, block by block, then report the chunk's finished episodes."""
        if out is None:
            return
        for fields, frames in builder.blocks(out):
            self._write(fields, frames)
        returns, lengths = builder.episodes
        if len(returns):
            self.shared.control.report_episodes(self.slot, returns, lengths)

    def _write(self, block: dict[str, np.ndarray], frames: np.ndarray | None = None) -> None:
        """One block into the ring, waiting (and counting the wait) while the rate limiter says no.

        While held back the actor is healthy, so it keeps beating. It stops waiting (`Detached`) when
        the run stops, when `run_alive` says its run is gone (an attached actor whose supervisor was
        SIGKILLed), or `RETIRE_GRACE_S` after it was retired (the block is dropped then: its rows were
        never reserved, so nothing half-written is left)."""
        if self.writer.write(block, timeout=0.0, frames=frames):
            return  # the common case: no wait, nothing to count
        control, t0 = self.shared.control, time.monotonic_ns()
        next_check, give_up = time.monotonic() + 1.0, float("inf")
        self.held_since = time.monotonic()
        try:
            while not self.writer.write(block, timeout=0.0 if self.on_blocked else 0.25, frames=frames):
                if control.stopping:
                    raise RingClosed("stopping")
                if self.on_blocked is not None:  # serial mode: let the learner catch up instead of waiting
                    self.on_blocked()
                now = time.monotonic()
                if now < next_check:
                    continue
                next_check = now + 1.0  # about once a second: beat, and ask whether to go on
                control.heartbeat(self.slot, steps=self.steps, weights=self.weights_version)
                if not self.run_alive():
                    raise Detached("the run is gone")
                if control.state(self.slot) != State.RUNNING:
                    give_up = min(give_up, now + RETIRE_GRACE_S)
                if now >= give_up:
                    raise Detached("retired while held by the rate limiter")
        finally:
            self.held_since = None
            control.add("actor_blocked_ns", time.monotonic_ns() - t0)

    def finish(self) -> None:
        """A retiring actor completes what it has: the known rows of the open chunk, the partial block."""
        for lane in self.lanes:
            self._emit(lane.builder.flush(), lane.builder)
            for fields, frames in lane.builder.rest():
                self._write(fields, frames)

    def sync_weights(self) -> None:
        """Read the board's newest weights into the policy (nothing is copied when they are not newer; a
        resized network is rebuilt first: `growth.Copy`)."""
        self.copy.sync(self.shared.board)
        self.since_sync = 0

    # The policy, by the names the actor has always had (the copy swaps its network when it resizes).
    policy = property(lambda self: self.copy.net)
    flat = property(lambda self: self.copy.flat)
    arch = property(lambda self: self.copy.arch)
    weights_version = property(lambda self: self.copy.version)  # of the weights held, as the board numbered them

    def keep_weights_fresh(self, steps: int) -> None:
        """Count `steps` more env steps; every `actors.sync_every` of them, read the newest weights.
        The one cadence of the supervisor's actors, attached ones and serial mode."""
        self.since_sync += steps
        if self.since_sync >= self.cfg.actors.sync_every:
            self.sync_weights()

    def run(self, run_alive: Callable[[], bool] | None = None) -> None:
        """Act until the run stops or this actor is retired (then finish the block and leave).

        `run_alive`, checked at each heartbeat and while held by the rate limiter, lets an actor
        attached by hand notice a supervisor that died without setting the stop flag."""
        control = self.shared.control
        if run_alive is not None:
            self.run_alive = run_alive
        since_beat = 0
        reported = self.steps
        self.sync_weights()
        try:
            while not control.stopping and control.state(self.slot) == State.RUNNING:
                width = self.step()
                self.keep_weights_fresh(width)
                since_beat += width
                if since_beat >= 256:
                    control.add("env_steps", self.steps - reported)
                    control.heartbeat(self.slot, steps=self.steps, weights=self.weights_version)
                    reported, since_beat = self.steps, 0
                    if not self.run_alive():
                        break
                    want = control.target("envs_per_actor") if self.follow_envs else 0
                    if want and want != self.num_envs:
                        self.resize(want)
            if control.state(self.slot) == State.RETIRING and self.run_alive():  # complete what we have
                self.finish()
        except (RingClosed, Detached):
            pass
        control.add("env_steps", self.steps - reported)

    def close(self) -> None:
        for lane in self.lanes:
            lane.env.close()
