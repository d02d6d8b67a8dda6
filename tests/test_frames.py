"""Frame rows: each frame stored once, stacks rebuilt at sample time, byte for byte what the env returned.

- the index arithmetic (builder positions + rebuild) against whole-row stacks, as a property;
- real vector envs through a real actor: every row in the ring against the env's own stacked
  observations (a fake image env whose pixels name env, episode and step; Pong when installed);
- the ordering points of the write and the sample, recorded as events (see test_memory_order);
- what a frame-row ring costs, and what preflight and the learner see.
"""

from __future__ import annotations

import importlib.util
from collections import deque

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mp_rl.agent.nstep import FrameBlockBuilder, NStepBuilder
from mp_rl.shm.frames import stack_indices
from mp_rl.shm.ring import ReplayRing, RingSpec
from mp_rl.shm.sampler import read_rows
from mp_rl.shm.sync import RateLimit
from mp_rl.testing import frame_spec, make_frame_block

FREE = RateLimit(None, 1, 0, 64, 256)


def stacked_stream(num_envs: int, length: int, k: int, seed: int):
    """Steps of a vector env of k-frame stacks (reset padding, NEXT_STEP autoreset) with unique frames."""
    rng = np.random.default_rng(seed)
    stacks = [deque([np.int32(e)] * k, maxlen=k) for e in range(num_envs)]
    resetting = np.zeros(num_envs, bool)

    def obs() -> np.ndarray:
        return np.array([list(s) for s in stacks], np.int32)[:, :, None]  # (envs, k, 1)

    first, steps = obs(), []
    for t in range(1, length + 1):
        term, trunc = rng.random(num_envs) < 0.12, rng.random(num_envs) < 0.08
        term, trunc = term & ~resetting, trunc & ~resetting  # the autoreset step carries no flag
        for e in range(num_envs):
            frame = np.int32(t * 16 + e)
            if resetting[e]:
                stacks[e].extend([frame] * k)  # a new episode: its first frame repeated
            else:
                stacks[e].append(frame)
        reward = np.where(resetting, 0.0, rng.integers(-2, 3, num_envs).astype(np.float64))
        steps.append((rng.integers(0, 4, num_envs), reward, obs(), term, trunc))
        resetting = term | trunc
    return first, steps


def row_set(rows: dict | None) -> list[tuple]:
    """A batch's rows as comparable tuples (whole observations as bytes)."""
    if rows is None:
        return []
    fields = (rows[k] for k in ("obs", "action", "reward", "discount", "next_obs"))
    return [(o.tobytes(), int(a), float(r), float(d), x.tobytes()) for o, a, r, d, x in zip(*fields, strict=True)]


def rebuild(blocks, block: int, area: int, k: int) -> list[tuple]:
    """Frame blocks as the sampler would rebuild them, from a ring of just these blocks."""
    out = []
    for fields, frames in blocks or []:
        assert len(frames) <= area and len(fields["pos"]) <= block
        slots = np.arange(len(fields["pos"]))
        obs, nxt = stack_indices(slots, fields["pos"], block, area, k)
        assert max(obs.max(), nxt.max()) < len(frames), "a row reaches a frame its block never wrote"
        out += row_set({**fields, "obs": frames[obs], "next_obs": frames[nxt]})
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 4), st.integers(1, 5), st.integers(1, 3), st.integers(1, 90), st.integers(0, 2**31),
    st.sampled_from([1, 2, 5, 16, 64]), st.sampled_from([3, 16, 64]),
)  # fmt: skip
def test_rebuilt_frame_rows_are_the_whole_rows_of_the_same_steps(n, k, num_envs, length, seed, block, chunk):
    first, steps = stacked_stream(num_envs, length, k, seed)
    whole = NStepBuilder(num_envs, (k, 1), "int32", n, 0.9, chunk=chunk)
    framed = FrameBlockBuilder(num_envs, (1,), "int32", n, 0.9, k, block)
    whole.start(first)
    framed.start(first)
    area, want, got = block + k - 1 + n, [], []
    for step in steps:
        want += row_set(whole.add(*step))
        got += rebuild(framed.add(*step), block, area, k)  # now: the frames are views until the next add
    want += row_set(whole.flush())
    got += rebuild(framed.flush(), block, area, k)
    assert sorted(got) == sorted(want)


@given(st.integers(0, 10**6), st.lists(st.integers(-(2**15), 2**15 - 1), min_size=3, max_size=3), st.integers(1, 6))
def test_any_positions_even_torn_ones_stay_inside_the_rows_own_block(slot, pos, k):
    block, area = 64, 64 + k - 1 + 3
    obs, nxt = stack_indices(np.array([slot]), np.array([pos], np.int16), block, area, k)
    base = slot // block * area
    assert base <= obs.min() and max(obs.max(), nxt.max()) < base + area


def test_a_ring_of_frame_rows_serves_the_rows_its_blocks_were_written_with(shm_name):
    from mp_rl.testing import check_frame_rows

    ring = ReplayRing.create(shm_name("ring"), frame_spec(8192), FREE)
    try:
        w = ring.writer(1)
        for b in range(40):
            rows, frames = make_frame_block(0, 64 * b, 64 - b % 3)
            w.write(rows, frames=frames)
        batch = ring.sampler(256, seed=0).sample(256, timeout=1.0)
        assert batch["obs"].shape == (256, 4, 4) and check_frame_rows(batch).all()
        seqs, rows = read_rows(ring, np.arange(*ring.window()))
        assert (
            len(seqs) == ring.counts()["inserts"]
            and check_frame_rows({k: torch.as_tensor(v) for k, v in rows.items()}).all()
        )
        with pytest.raises(ValueError, match="frame rows need"):
            w.write(make_frame_block(0, 0, 4)[0])  # without its frames
    finally:
        ring.destroy()


def test_frame_rows_cost_a_seventh_of_whole_rows_for_pong():
    whole = RingSpec.for_transitions((4, 84, 84), "uint8", 2_000_000).normalised()
    framed = RingSpec.for_frames((84, 84), "uint8", 4, 3, 2_000_000).normalised()
    assert whole.bytes_per_row > 56_000 and framed.bytes_per_row < 8_500
    assert framed.layout().size / framed.capacity_max == pytest.approx(framed.bytes_per_row, rel=1e-3)
    assert RingSpec.from_json(framed.to_json()) == framed


class Recorder:
    """Stands in for an actor's vector env: keeps every stacked observation it returns, by newest frame."""

    def __init__(self, env, first: np.ndarray):
        self.env, self.seen = env, {}
        self.keep(first)

    def keep(self, obs: np.ndarray) -> None:
        for stack in obs:
            was = self.seen.setdefault(stack[-1].tobytes(), stack.tobytes())
            assert was == stack.tobytes(), "two different stacks end in one frame: the fake env's codes clash"

    def step(self, actions):
        out = self.env.step(actions)
        self.keep(out[0])
        return out

    def close(self) -> None:
        self.env.close()


def actor_rows(tmp_path, shm_name, env_id: str, frames_once: bool, steps: int, record: bool = False):
    """Every row one actor wrote in `steps` vector steps (after `finish`), read back from its ring."""
    from mp_rl.agent.actor import Actor
    from mp_rl.config import load_config
    from mp_rl.shm.manifest import SharedRun
    from mp_rl.start.preflight import plan

    cfg = load_config("configs/smoke.yaml", [f"env.id={env_id}", "env.max_episode_steps=25", "env.envs_per_actor=3",
                                             f"replay.frames_once={str(frames_once).lower()}"])  # fmt: skip
    p = plan(cfg)
    assert (p.ring.frames is not None) == frames_once
    limit = RateLimit(None, 1, 0, p.ring.block, 64)
    run = tmp_path / ("frames" if frames_once else "rows")
    run.mkdir()
    shared = SharedRun.create(run, shm_name("a").split(".")[1], p.ring, limit, p.numel, 4)
    try:
        torch.manual_seed(0)  # the same policy for both layouts: the same actions, the same steps
        actor = Actor(cfg, shared, p.spec, slot=0, index=0, count=1, seed=3)
        if record:
            actor.env = Recorder(actor.env, actor.obs)
        for _ in range(steps):
            actor.step()
        actor.finish()
        seqs, rows = read_rows(shared.ring, np.arange(*shared.ring.window()))
        assert len(seqs) == shared.ring.counts()["inserts"] > 0
        actor.close()
        return rows, (actor.env.seen if record else None)
    finally:
        shared.close()


def test_every_rebuilt_row_is_the_envs_own_stacked_observation_byte_for_byte(tmp_path, shm_name):
    """Fake image env: episodes of 1..40 steps, truncated at 25, 3 envs, so every stack phase of a start,
    terminations and truncations all occur many times over."""
    rows, seen = actor_rows(tmp_path, shm_name, "mp_rl.testing:StackedStampFrames", True, 700, record=True)
    for name in ("obs", "next_obs"):
        for stack in rows[name]:
            assert seen[stack[-1].tobytes()] == stack.tobytes(), f"{name} differs from the env's own stack"
    assert (rows["discount"] == 0).sum() > 50, "terminations"
    t = rows["next_obs"][:, -1, 0, 3].astype(int) + 256 * rows["next_obs"][:, -1, 0, 4].astype(int)
    assert ((t == 25) & (rows["discount"] > 0)).sum() > 10, "truncations that still bootstrap"
    whole, _ = actor_rows(tmp_path, shm_name, "mp_rl.testing:StackedStampFrames", False, 700)
    assert sorted(row_set(rows)) == sorted(row_set(whole)), "frame rows and whole rows of the same run differ"


@pytest.mark.skipif(importlib.util.find_spec("ale_py") is None, reason="needs the atari extra")
def test_pong_frame_rows_are_the_whole_rows_of_the_same_run(tmp_path, shm_name):
    framed, _ = actor_rows(tmp_path, shm_name, "ALE/Pong-v5", True, 120)
    whole, _ = actor_rows(tmp_path, shm_name, "ALE/Pong-v5", False, 120)
    assert len(framed["reward"]) > 300
    assert sorted(row_set(framed)) == sorted(row_set(whole))


class Logged(np.ndarray):
    """An array view that logs its reads and writes (by label) into a shared event list."""

    def __array_finalize__(self, obj):
        self.log, self.label = getattr(obj, "log", None), getattr(obj, "label", None)

    def __getitem__(self, key):
        self.log.append(("read", self.label))
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        self.log.append(("write", self.label))
        super().__setitem__(key, value)

    def take(self, *args, **kwargs):
        self.log.append(("read", self.label))
        return super().take(*args, **kwargs)


def logged(arr: np.ndarray, log: list, label: str) -> Logged:
    view = arr.view(Logged)
    view.log, view.label = log, label
    return view


def test_frames_are_written_and_read_between_the_stamp_fences(shm_name, monkeypatch):
    """The writer fills the frame area after zeroing the stamps and before restamping, a fence between
    each; the sampler reads frames after a fence that follows its stamp check and before a fence that
    precedes the re-check. (x86 would hide a missing fence from a race; the order is checked instead.)"""
    from mp_rl.shm import atomics

    ring = ReplayRing.create(shm_name("ring"), frame_spec(8192), FREE)
    log: list[tuple] = []
    real = atomics.fence
    monkeypatch.setattr(atomics, "fence", lambda *a: (log.append(("fence",)), real(*a)))
    try:
        ring.stamps, ring.frames = logged(ring.stamps, log, "stamps"), logged(ring.frames, log, "frames")
        rows, frames = make_frame_block(0, 0, 64)
        ring.writer(1).write(rows, frames=frames)
        marks = [e for e in log if e in (("write", "stamps"), ("fence",), ("write", "frames"))]
        assert marks == [("write", "stamps"), ("fence",), ("write", "frames"), ("fence",), ("write", "stamps")]
        sampler = ring.sampler(32, seed=0)
        log.clear()
        sampler.sample(32, timeout=1.0)
        marks = [e for e in log if e in (("read", "stamps"), ("fence",), ("read", "frames"))]
        frames_at = [i for i, e in enumerate(marks) if e == ("read", "frames")]
        checked = max(i for i, e in enumerate(marks[: frames_at[0]]) if e == ("read", "stamps"))
        assert ("fence",) in marks[checked : frames_at[0]], "frames read before the stamps that vouch for them"
        assert marks[frames_at[-1] + 1] == ("fence",) and ("read", "stamps") in marks[frames_at[-1] + 1 :]
    finally:
        ring.stamps = ring.frames = None
        ring.destroy()


def test_capacity_auto_the_memory_check_and_the_monitor_count_a_frame_rows_bytes(tmp_path, shm_name):
    from mp_rl.config import load_config
    from mp_rl.monitor.monitor import Monitor
    from mp_rl.shm.manifest import SharedRun
    from mp_rl.start import resources
    from mp_rl.start.preflight import StartError, plan

    def cfg(frames_once: bool, *more: str):
        return load_config("configs/smoke.yaml", ["env.id=mp_rl.testing:StackedStampFrames", "replay.capacity=auto",
                                                  f"replay.frames_once={str(frames_once).lower()}", *more])  # fmt: skip

    huge = "replay.max_capacity=100000000"
    framed, whole = plan(cfg(True, huge)), plan(cfg(False, huge))
    assert framed.ring.bytes_per_row < whole.ring.bytes_per_row / 6
    ratio = framed.knobs.capacity.start / whole.knobs.capacity.start
    assert ratio == pytest.approx(whole.ring.bytes_per_row / framed.ring.bytes_per_row, rel=0.05)
    rows = int(0.9 * resources.available_memory() / whole.ring.bytes_per_row * 1.5)  # fits as frame rows only
    sized = (f"replay.capacity={rows}", f"replay.max_capacity={rows}")
    assert plan(cfg(True, *sized)).knobs.capacity.start == rows
    with pytest.raises(StartError, match="does not fit"):
        plan(cfg(False, *sized))
    small = RingSpec.for_frames((84, 84), "uint8", 4, 3, 8192, 32).normalised()
    shared = SharedRun.create(
        tmp_path, shm_name("m").split(".")[1], small, RateLimit(None, 1, 0, 32, 64), framed.numel, 8
    )
    try:
        mon = Monitor(framed.cfg, shared, tmp_path, framed.knobs)
        assert mon.row_bytes == shared.ring.spec.bytes_per_row < 8_500
        mon.close()
    finally:
        shared.close()


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d["frames"].update(area=64),  # smaller than a block's steps plus its stack
        lambda d: d["frames"].update(area=40000),  # beyond what int16 positions reach
        lambda d: d["frames"].update(dtype="|O"),
        lambda d: d["frames"].update(stack=0),
        lambda d: d.update(frames=[1, 2]),
        lambda d: d["fields"].pop(),  # no positions to rebuild from
    ],
)
def test_a_damaged_frame_spec_in_a_manifest_is_refused(damage):
    d = RingSpec.for_frames((84, 84), "uint8", 4, 3, 8192).normalised().to_json()
    damage(d)
    with pytest.raises(ValueError):
        RingSpec.from_json(d)
