"""Test helpers that run in child processes (spawn needs them importable): checksummed writers,
verifying samplers, a capacity resizer, a weight publisher and readers.

Row content is a pure function of (writer, k), so a sampled row that mixes two writes, or holds
an older write than the seq it was drawn for, is caught by `check_rows` and the writers' records.
The fake environments live in `testing.envs` and are importable from here too (`mp_rl.testing:GridEnv`).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from mp_rl.shm.board import WeightBoard
from mp_rl.shm.ring import ReplayRing, RingClosed, RingSpec
from mp_rl.testing.envs import (  # noqa: F401 (env ids name them here: mp_rl.testing:CountingEnv)
    CountingEnv,
    CrashOnceCartPole,
    GridEnv,
    HangOnceCartPole,
    StackedStampFrames,
    StampFrames,
    register_test_envs,
)

OBS = 4


def checked_spec(capacity_max: int, block: int = 64) -> RingSpec:
    return RingSpec.for_transitions((OBS,), "float32", capacity_max, block)


def make_rows(writer: int, k0: int, n: int) -> dict[str, np.ndarray]:
    k = np.arange(k0, k0 + n, dtype=np.int64)
    obs = np.stack([np.full(n, writer), k, (k * 7 + writer) % 1009, -k], axis=1).astype(np.float32)
    return {
        "obs": obs,
        "action": k * 3 + writer,
        "reward": ((k % 97) + writer * 0.5).astype(np.float32),
        "discount": np.full(n, 0.99, np.float32),
        "next_obs": obs + 1.0,
    }


def frame_spec(capacity_max: int, block: int = 64) -> RingSpec:
    """Frame rows of 4-frame stacks, 3-step rows, tiny int32 frames: for stress tests."""
    return RingSpec.for_frames((OBS,), "int32", 4, 3, capacity_max, block, action_dtype="int64")


def _frame(writer, k0, p) -> np.ndarray:
    """Frame `p` of the block that `writer` wrote starting at its row `k0`: it names all three."""
    return np.stack(np.broadcast_arrays(writer, k0, p, (k0 * 7 + writer * 13 + p) % 1009), axis=-1).astype(np.int32)


def _frame_pos(k, i) -> np.ndarray:
    """Row i (row k of its writer) of a block: horizons of 1..3 and episode starts that cut some stacks."""
    o = i + 3
    return np.stack([o, o + 1 + k % 3, np.maximum(o - k % 4, 0)], axis=-1)


def make_frame_block(writer: int, k0: int, n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`n` frame rows and their block's frames, a pure function of (writer, k0): see `check_frame_rows`."""
    i = np.arange(n)
    k = k0 + i
    rows = {"action": k * 1000 + writer, "reward": i.astype(np.float32), "discount": np.full(n, 0.99, np.float32),
            "pos": _frame_pos(k, i).astype(np.int16)}  # fmt: skip
    return rows, _frame(writer, k0, np.arange(n + 6))


def check_frame_rows(batch: dict[str, torch.Tensor]) -> np.ndarray:
    """Boolean mask of rebuilt rows whose every frame is the one its row's (writer, k) put there."""
    action = batch["action"].numpy()
    writer, k, i = action % 1000, action // 1000, batch["reward"].numpy().astype(np.int64)
    o, x, s = _frame_pos(k, i).T
    back = np.arange(-3, 1)
    want_obs = _frame(writer[:, None], (k - i)[:, None], np.maximum(o[:, None] + back, s[:, None]))
    want_next = _frame(writer[:, None], (k - i)[:, None], np.maximum(x[:, None] + back, s[:, None]))
    ok = (batch["obs"].numpy() == want_obs).all(axis=(1, 2)) & (batch["next_obs"].numpy() == want_next).all(axis=(1, 2))
    return ok & (batch["discount"].numpy() == np.float32(0.99))


def row_ids(batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """(writer, k) of each row of a batch of either kind of checksummed rows."""
    if batch["obs"].ndim == 3:  # frame rows
        action = np.asarray(batch["action"])
        return action % 1000, action // 1000
    obs = np.asarray(batch["obs"])
    return obs[:, 0].astype(np.int64), obs[:, 1].astype(np.int64)


def check_rows(batch: dict[str, torch.Tensor]) -> np.ndarray:
    """Boolean mask of rows whose fields all agree with one (writer, k)."""
    obs = batch["obs"].numpy()
    writer, k = obs[:, 0].astype(np.int64), obs[:, 1].astype(np.int64)
    ok = (obs[:, 2] == (k * 7 + writer) % 1009) & (obs[:, 3] == -k)
    ok &= batch["action"].numpy() == k * 3 + writer
    ok &= batch["reward"].numpy() == ((k % 97) + writer * 0.5).astype(np.float32)
    ok &= (batch["next_obs"].numpy() == obs + 1.0).all(axis=1)
    return ok


def writer_proc(entry: dict, writer: int, blocks: int, sizes: list[int], out) -> None:
    """Write `blocks` blocks (sizes cycled) and report [(first_seq or -1, k0, n), ...]."""
    ring = ReplayRing.from_manifest(entry)
    w = ring.writer(token=writer + 1)
    records, k = [], 0
    for b in range(blocks):
        n = sizes[b % len(sizes)]
        rows, frames = make_frame_block(writer, k, n) if ring.frames is not None else (make_rows(writer, k, n), None)
        while not w.write(rows, timeout=1.0, frames=frames):
            pass
        records.append((w.last_seq, k, n))
        k += n
    out.put((writer, records))
    ring.close()


def sampler_proc(entry: dict, batch: int, stop_after: float, out, check_limit: bool = False) -> None:
    """Sample until the writers are done; report (samples, torn, [(seq, writer, k)], limit_violations)."""
    ring = ReplayRing.from_manifest(entry)
    s = ring.sampler(max_batch=batch, seed=1)
    check = check_frame_rows if ring.frames is not None else check_rows
    torn = violations = 0
    seen = []
    deadline = time.monotonic() + stop_after
    while time.monotonic() < deadline and not ring.closed:
        try:
            got = s.sample(batch, timeout=0.2)
        except RingClosed:
            break
        if got is None:
            continue
        torn += int((~check(got)).sum())
        seen.append(np.stack([s.seqs[:batch], *row_ids(got)], axis=1).astype(np.int64))
        if check_limit:
            c = ring.counts()
            lim = ring.limit
            slack = 8 * lim.block * (lim.samples_per_insert or 0)  # concurrent writers may overshoot
            d = c["inserts"] * (lim.samples_per_insert or 0) - c["samples"]
            violations += int(c["inserts"] >= lim.min_fill and not (lim.min_diff - batch <= d <= lim.max_diff + slack))
    rows = np.concatenate(seen) if seen else np.zeros((0, 3), np.int64)
    out.put(("sampler", (int(ring.counts()["samples"]), torn, rows, violations)))
    ring.close()


def resizer_proc(entry: dict, sizes: list[int], period: float, duration: float) -> None:
    """Move the live capacity through `sizes` every `period` seconds."""
    ring = ReplayRing.from_manifest(entry)
    end, i = time.monotonic() + duration, 0
    while time.monotonic() < end:
        ring.capacity = sizes[i % len(sizes)]
        i += 1
        time.sleep(period)  # a pacing interval for the test, not a wait for a condition
    ring.close()


def publisher_proc(entry: dict, numel: int, duration: float, out) -> None:
    """Publish versions 1, 2, ... as constant vectors (value = version) at full speed."""
    board = WeightBoard.attach(entry["segment"], numel)
    flat = torch.empty(numel)
    end, v = time.monotonic() + duration, 0
    while time.monotonic() < end:
        flat.fill_(float(v + 1))
        v = board.publish(flat)
    out.put(("publisher", v))
    board.close()


def reader_proc(entry: dict, numel: int, duration: float, out) -> None:
    """Read as fast as possible; count torn snapshots and version regressions."""
    board = WeightBoard.attach(entry["segment"], numel)
    flat = torch.empty(numel)
    end, have, reads, torn, regressions = time.monotonic() + duration, 0, 0, 0, 0
    while time.monotonic() < end:
        v = board.read_into(flat, have=0, timeout=5.0)
        if v == 0:
            continue
        reads += 1
        lo, hi = float(flat.min()), float(flat.max())
        torn += int(lo != hi or lo != float(v))
        regressions += int(v < have)
        have = v
    out.put(("reader", (reads, torn, regressions, board.retries)))
    board.close()


GROWN = (1_000, 300_000)  # the two layouts a growing publisher alternates between, by parameter count


def layout_of(version: int) -> int:
    """Which of `GROWN` a growing publisher gives `version`: it changes every third version."""
    return (version // 3) % 2


def growing_publisher_proc(entry: dict, numel: int, duration: float, out) -> None:
    """Publish versions 1, 2, ... (value = version) in a layout that changes every third version."""
    board = WeightBoard.attach(entry["segment"], numel)
    end, v = time.monotonic() + duration, 0
    while time.monotonic() < end:
        kind = layout_of(v + 1)
        v = board.publish(torch.full((GROWN[kind],), float(v + 1)), shape=(kind + 1,))
    out.put(("publisher", v))
    board.close()


def following_reader_proc(entry: dict, numel: int, duration: float, out) -> None:
    """Follow a growing publisher as an actor does: rebuild for `latest_shape()` when a read of its own
    layout is refused. Count versions held in another layout than theirs, or torn."""
    board = WeightBoard.attach(entry["segment"], numel)
    kind, have, reads, wrong, rebuilds = 0, 0, 0, 0, 0
    flat = torch.empty(GROWN[kind])
    end = time.monotonic() + duration
    while time.monotonic() < end:
        v = board.read_into(flat, have=have, timeout=5.0, shape=(kind + 1,))
        if v == have:
            if board.version > have:  # a newer version in another layout: rebuild, as an actor would
                n, code = board.latest_shape()
                kind, flat, rebuilds = code - 1, torch.empty(n), rebuilds + 1
            continue
        reads += 1
        lo, hi = float(flat.min()), float(flat.max())
        wrong += int(lo != hi or lo != float(v) or layout_of(v) != kind or flat.numel() != GROWN[kind])
        have = v
    out.put(("reader", (reads, wrong, rebuilds)))
    board.close()


def waiter_proc(addr_entry: dict, timeout: float, out) -> None:
    """Attach a segment, sleep on its wakeup until word 8 is non-zero; report when it woke."""
    from mp_rl.shm import atomics
    from mp_rl.shm.segment import Segment
    from mp_rl.shm.sync import Wakeup

    seg = Segment.attach(addr_entry["segment"])
    flag = seg.address + 8
    ok = Wakeup(seg.address).wait_for(lambda: atomics.load(flag) != 0, timeout)
    out.put(("waiter", (ok, time.monotonic())))
    seg.close()


def claimer_proc(entry: dict, tries: int, out) -> None:
    """Claim and release member slots in a loop; report every slot number claimed."""
    from mp_rl.shm.control import ControlBlock, Kind

    cb = ControlBlock.from_manifest(entry)
    slots = []
    for _ in range(tries):
        try:
            slot = cb.claim(Kind.ACTOR)
        except RuntimeError:
            continue
        slots.append(slot)
        # While we hold it nobody else may: mark it with our pid and check it stays ours.
        assert cb.pid(slot) == os.getpid()
        cb.leave(slot)
    out.put((os.getpid(), slots))
    cb.close()


def attached_actor_proc(run_dir: str, out) -> None:
    """Join a run from its folder alone: claim a slot, read weights, write rows, count steps, leave."""
    from mp_rl.shm.control import ATTACHED, Kind
    from mp_rl.shm.manifest import SharedRun

    run = SharedRun.attach(run_dir)
    slot = run.control.claim(Kind.ACTOR, flags=ATTACHED)
    flat = torch.zeros(run.board.numel)
    version = run.board.read_into(flat)
    w = run.ring.writer(token=slot + 1)
    for b in range(4):
        w.write(make_rows(slot, 64 * b, 64))
    run.control.add("env_steps", 256)
    out.put(("attached", (slot, version, float(flat[0]), run.control.live_members())))
    run.control.leave(slot)
    run.close()
