"""Replay: bytes per transition, sampling rate into the learner's batch, the actor's write cost.

    python -m benchmarks.replay [--repeats 5] [--out bench_out/replay]

Rows are CartPole-shaped (4 float32) and Pong-shaped (4 stacked 84x84 uint8 frames). Each sampling
figure is the median of alternated repeats, with its baseline (uniform sampling) measured in the
same run. The layouts a replay could use are compared per Pong transition: today's (obs and
next_obs stored whole, measured from the ring's own layout), Stable-Baselines3's
`optimize_memory_usage` (each stacked observation once) and a store that keeps each frame once
(DQN Zoo, Dopamine), both computed. What `configs/threadripper.yaml`'s 2M rows need follows.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.common import table, write_results
from mp_rl.agent.priorities import Priorities
from mp_rl.shm.ring import ReplayRing, RingSpec, rows_like
from mp_rl.shm.sync import RateLimit
from mp_rl.start import resources

OPEN = RateLimit(None, 1, 0, 64, 1024)
SHAPES = {"CartPole": ((4,), "float32", 65_536), "Pong": ((4, 84, 84), "uint8", 8_192)}
FRAME = 84 * 84  # one greyscale frame, bytes
SMALL = 8 + 4 + 4 + 8  # action (int64), reward, discount, stamp


def bytes_per_row(spec: RingSpec) -> float:
    """Every byte of the ring's segment per row it can hold (stamps, leases and counters included)."""
    return spec.layout().size / spec.capacity_max


def layouts() -> list[dict]:
    big = RingSpec.for_transitions((4, 84, 84), "uint8", 2_000_000).normalised()
    today = bytes_per_row(big)
    sb3 = 4 * FRAME + SMALL  # one stacked observation per row; next_obs is the next row's
    once = FRAME + SMALL + 1  # one new frame per row, plus an episode-start flag to rebuild stacks
    return [
        {"layout": "mp_rl today: obs + next_obs whole (measured)", "bytes": today, "x": 1.0},
        {"layout": "SB3 optimize_memory_usage: each stack once (computed)", "bytes": sb3, "x": today / sb3},
        {"layout": "each frame once, stacks rebuilt (computed)", "bytes": once, "x": today / once},
    ]


def filled(name: str, obs_shape, dtype, rows: int) -> ReplayRing:
    spec = RingSpec.for_transitions(obs_shape, dtype, rows)
    ring = ReplayRing.create(f"mp_rl.bench{time.time_ns()}.{name}", spec, OPEN)
    block = rows_like(spec, 64)
    block["obs"][:] = 7
    w = ring.writer(1)
    for _ in range(ring.spec.capacity_max // 64):
        w.write(block)
    return ring


def sample_rate(ring: ReplayRing, batch: int, prioritized: bool, seconds: float = 0.5) -> float:
    """Rows per second into a preallocated batch, with priorities changing after every batch as a learner's do."""
    pr = Priorities(ring, 0.6, 0.4, 10_000, 1e-6) if prioritized else None
    sampler = ring.sampler(batch, seed=0, priorities=pr)
    rng = np.random.default_rng(0)
    sampler.sample(batch, timeout=1.0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        out = sampler.sample(batch, timeout=1.0)
        if pr is not None:
            pr.update(out["seq"].numpy(), rng.random(batch))
        n += batch
    return n / (time.perf_counter() - t0)


def write_cost(ring: ReplayRing) -> tuple[float, float]:
    """Seconds per 64-row block: into fresh pages, then into pages already touched."""
    block, w = rows_like(ring.spec, 64), ring.writer(2)
    times = []
    for _ in range(ring.spec.capacity_max // 64 * 2):
        t0 = time.perf_counter()
        w.write(block)
        times.append(time.perf_counter() - t0)
    half = len(times) // 2
    return statistics.median(times[:half]), statistics.median(times[half:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks.replay", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    results: dict = {"layouts": layouts(), "sampling": [], "write": []}
    for name, (shape, dtype, rows) in SHAPES.items():
        ring = filled(name, shape, dtype, rows)
        try:
            uniform, prio = [], []
            for _ in range(args.repeats):  # alternated, so drift hits both alike
                uniform.append(sample_rate(ring, args.batch, False))
                prio.append(sample_rate(ring, args.batch, True))
            u, p = statistics.median(uniform), statistics.median(prio)
            results["sampling"].append({"rows": name, "uniform": u, "prioritized": p, "ratio": p / u})
        finally:
            ring.destroy()
    pong = RingSpec.for_transitions((4, 84, 84), "uint8", 4096)
    ring = ReplayRing.create(f"mp_rl.bench{time.time_ns()}.write", pong, OPEN)
    try:
        fresh, warm = write_cost(ring)
        results["write"].append({"rows": "Pong", "fresh_ms": fresh * 1e3, "warm_ms": warm * 1e3,
                                 "per_step_us": warm / 64 * 1e6})  # fmt: skip
    finally:
        ring.destroy()
    today = results["layouts"][0]["bytes"]
    avail = resources.available_memory()
    here = f"capacity: auto start here ({avail / 2**30:.1f} GiB available)"
    plan_rows = [
        {"what": "threadripper.yaml's 2,000,000 Pong rows, today's layout", "value": f"{2e6 * today / 2**30:,.1f} GiB"},
        {"what": "capacity: auto start on a 64 GB machine (a quarter of it)", "value": f"{16e9 / today:,.0f} rows"},
        {"what": here, "value": f"{avail / 4 / today:,.0f} rows"},
    ]
    results["plan"] = plan_rows
    print(f"replay: batch {args.batch}, medians of {args.repeats} alternated repeats\n")
    print(table(results["layouts"], [("layout", "Pong row layout", "s"), ("bytes", "bytes / transition", ",.0f"),
                                     ("x", "today is ×", ".1f")]))  # fmt: skip
    print()
    print(table(results["sampling"], [("rows", "rows", "s"), ("uniform", "uniform rows/s", ",.0f"),
                                      ("prioritized", "prioritized rows/s", ",.0f"),
                                      ("ratio", "prioritized ÷ uniform", ".2f")]))  # fmt: skip
    print()
    print(table(results["write"], [("rows", "rows", "s"), ("fresh_ms", "64-row block, fresh pages (ms)", ".2f"),
                                   ("warm_ms", "64-row block, touched pages (ms)", ".2f"),
                                   ("per_step_us", "per step (µs)", ".1f")]))  # fmt: skip
    print()
    print(table(plan_rows, [("what", "", "s"), ("value", "", "s")]))
    print(f"\nresults: {write_results('replay', args.out, results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
