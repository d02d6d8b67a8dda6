"""Replay: bytes per transition, sampling rate into the learner's batch, the actor's write cost.

    python -m benchmarks.replay [--repeats 5] [--out bench_out/replay]   (needs the atari extra)

Pong rows go through the real actor: its builder, staging and ring writer, on a real run's shared
segments, with the env replaced by recorded Pong observations (so env stepping and inference do not
hide the cost being measured). Both layouts run in the same process and alternate: "whole rows"
(obs and next_obs stored whole, `replay.frames_once: false`, the layout before frame rows) is the
baseline of "frame rows" (each frame once). Bytes per transition are every shared segment of the
run as backed by memory: the ring's divided by the rows it holds, and the fixed rest (control block,
weight board after a publish) shown beside it, with what it adds per row at 2M rows.
CartPole rows (4 float32) give the prioritized-vs-uniform figure where sampling cost is all there is.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import table, write_results
from mp_rl.agent.actor import Actor
from mp_rl.agent.envs import make_vector_env
from mp_rl.agent.priorities import Priorities
from mp_rl.cli import Parser
from mp_rl.config import load_config
from mp_rl.shm.manifest import SharedRun
from mp_rl.shm.ring import ReplayRing, RingSpec, rows_like
from mp_rl.shm.sync import RateLimit
from mp_rl.start.preflight import plan

OPEN = RateLimit(None, 1, 0, 64, 1024)
ROWS = 8192  # ring rows for the Pong runs: one whole chunk of frame rows
ENVS = 8
LAYOUTS = {"whole rows": False, "frame rows": True}


def pong_config(frames_once: bool, extra: tuple[str, ...] = ()):
    return load_config("configs/threadripper.yaml", [
        "learner.device=cpu", f"env.envs_per_actor={ENVS}", f"replay.frames_once={str(frames_once).lower()}",
        f"replay.capacity={ROWS}", f"replay.max_capacity={ROWS}", "replay.min_fill=64", "actors.count=1", *extra,
    ])  # fmt: skip


class Recorded:
    """Stands in for the actor's vector env: recorded Pong steps, replayed in a loop."""

    def __init__(self, steps: int, seed: int = 0):
        env = make_vector_env(pong_config(True).env, seed, ENVS)
        rng, self.steps, self.i = np.random.default_rng(seed), [], 0
        for _ in range(steps):
            obs, rew, term, trunc, _ = env.step(rng.integers(0, 6, ENVS))
            self.steps.append((obs.copy(), rew, term, trunc, {}))
        env.close()

    def step(self, actions):
        self.i += 1
        return self.steps[self.i % len(self.steps)]

    def close(self) -> None:
        pass


class PongRun:
    """A real run's segments and one actor on them, its env replaced by `recorded`."""

    def __init__(self, frames_once: bool, recorded: Recorded, folder: Path):
        cfg = pong_config(frames_once)
        p = plan(cfg)
        run_id = f"bench{time.time_ns()}"
        (folder / run_id).mkdir()
        self.shared = SharedRun.create(folder / run_id, run_id, p.ring, OPEN, p.numel, 4, p.capacity)
        self.actor = Actor(cfg, self.shared, p.spec, slot=0, index=0, count=1, seed=0)
        self.actor.env.close()
        self.actor.env = recorded
        rng = np.random.default_rng(0)
        self.actor.act = lambda obs, eps=None: rng.integers(0, 6, ENVS)  # not the cost measured here
        self.shared.board.publish(torch.zeros(p.numel))  # as a run's learner does: its pages are backed

    def lap(self) -> float:
        """Seconds per env step to write one ring's worth of rows."""
        ring, steps = self.shared.ring, 0
        target = ring.cursor + ring.spec.capacity_max
        t0 = time.perf_counter()
        while ring.cursor < target:
            steps += self.actor.step()
        return (time.perf_counter() - t0) / steps

    def bytes_per_row(self) -> float:
        """Memory-backed bytes of the ring segment over the rows it holds (padding slots count against it)."""
        ring = self.shared.ring
        lo, hi = ring.window()
        seqs = np.arange(lo, hi)
        return ring.segment.allocated_bytes() / int((ring.stamps[seqs % ring.spec.capacity_max] == seqs + 1).sum())

    def fixed_bytes(self) -> int:
        """Memory-backed bytes of the run's other segments: the control block and the weight board."""
        return self.shared.control.segment.allocated_bytes() + self.shared.board.segment.allocated_bytes()

    def close(self) -> None:
        self.shared.close()


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


def cartpole_ring() -> ReplayRing:
    spec = RingSpec.for_transitions((4,), "float32", 65_536)
    ring = ReplayRing.create(f"mp_rl.bench{time.time_ns()}.cartpole", spec, OPEN)
    w = ring.writer(1)
    for _ in range(ring.spec.capacity_max // 64):
        w.write(rows_like(spec, 64))
    return ring


def pong_figures(repeats: int, batch: int, folder: Path) -> dict:
    """Per layout, alternated: write cost (fresh and touched pages), bytes per row, sampling rates."""
    recorded = Recorded(400)
    keys = ("fresh", "touched", "bytes", "fixed", "uniform", "prioritized")
    got = {name: {k: [] for k in keys} for name in LAYOUTS}
    for _ in range(repeats):
        for name, frames_once in LAYOUTS.items():
            run = PongRun(frames_once, recorded, folder)
            try:
                g = got[name]
                g["fresh"].append(run.lap())  # a new ring: every page is touched for the first time
                g["touched"].append(run.lap())
                g["bytes"].append(run.bytes_per_row())
                g["fixed"].append(run.fixed_bytes())
                g["uniform"].append(sample_rate(run.shared.ring, batch, False))
                g["prioritized"].append(sample_rate(run.shared.ring, batch, True))
            finally:
                run.close()
    return {name: {k: statistics.median(v) for k, v in g.items()} for name, g in got.items()}


def plan_rows(pong: dict) -> list[dict]:
    """What threadripper.yaml's 2M rows need, and where `capacity: auto` starts (64 GB computed, here measured)."""
    out = []
    for name, frames_once in LAYOUTS.items():
        cfg = load_config(
            "configs/threadripper.yaml", ["learner.device=cpu", f"replay.frames_once={str(frames_once).lower()}"]
        )
        p = plan(cfg)
        row, fixed, cap = pong[name]["bytes"], pong[name]["fixed"], p.ring.capacity_max
        out += [
            {"what": f"{name}: threadripper.yaml's 2,000,000 rows, all segments",
             "value": f"{(2e6 * row + fixed) / 2**30:,.1f} GiB ({row + fixed / 2e6:,.0f} B a row)"},
            {"what": f"{name}: capacity auto start, 64 GB machine (a quarter of it, computed)",
             "value": f"{min(cap, 16e9 // p.ring.bytes_per_row):,.0f} rows"
                      + (" (all of max_capacity)" if 16e9 // p.ring.bytes_per_row >= cap else "")},
            {"what": f"{name}: capacity auto start here (preflight)", "value": f"{p.knobs.capacity.start:,} rows"},
        ]  # fmt: skip
    sb3 = 4 * 84 * 84 + 8 + 4 + 4 + 8  # one stacked observation per row, next_obs is the next row's
    out.append({"what": "SB3 optimize_memory_usage (computed, per row)", "value": f"{sb3:,} B"})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="benchmarks.replay", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        pong = pong_figures(args.repeats, args.batch, Path(folder))
    ring = cartpole_ring()
    try:
        uniform, prio = [], []
        for _ in range(args.repeats):  # alternated, so drift hits both alike
            uniform.append(sample_rate(ring, args.batch, False))
            prio.append(sample_rate(ring, args.batch, True))
    finally:
        ring.destroy()
    base, new = pong["whole rows"], pong["frame rows"]
    layout = [{"layout": name, **fig, "fresh_us": fig["fresh"] * 1e6, "touched_us": fig["touched"] * 1e6,
               "fixed_mb": fig["fixed"] / 1e6} for name, fig in pong.items()]  # fmt: skip
    ratios = {"bytes": base["bytes"] / new["bytes"], "uniform": new["uniform"] / base["uniform"],
              "fresh": new["fresh"] / base["fresh"], "touched": new["touched"] / base["touched"]}  # fmt: skip
    sampling = [
        {"rows": "CartPole", "uniform": statistics.median(uniform), "prioritized": statistics.median(prio)},
        {"rows": "Pong, frame rows", "uniform": new["uniform"], "prioritized": new["prioritized"]},
        {"rows": "Pong, whole rows", "uniform": base["uniform"], "prioritized": base["prioritized"]},
    ]
    for r in sampling:
        r["ratio"] = r["prioritized"] / r["uniform"]
    results = {"pong": layout, "ratios": ratios, "sampling": sampling, "plan": plan_rows(pong)}
    print(f"replay: Pong rows through the actor, batch {args.batch}, medians of {args.repeats} alternated repeats\n")
    print(table(layout, [("layout", "Pong layout", "s"), ("bytes", "ring bytes / transition", ",.0f"),
                         ("fixed_mb", "control + board, MB", ".1f"),
                         ("uniform", f"rows/s into a {args.batch} batch", ",.0f"),
                         ("fresh_us", "actor µs / step, fresh pages", ".1f"),
                         ("touched_us", "actor µs / step, touched pages", ".1f")]))  # fmt: skip
    print(
        f"\nframe rows vs whole rows: {ratios['bytes']:.1f}x fewer bytes, {ratios['uniform']:.2f}x the sampling "
        f"rate, {ratios['fresh']:.2f}x / {ratios['touched']:.2f}x the actor's time per step (fresh / touched)\n"
    )
    print(table(sampling, [("rows", "rows", "s"), ("uniform", "uniform rows/s", ",.0f"),
                           ("prioritized", "prioritized rows/s", ",.0f"),
                           ("ratio", "prioritized ÷ uniform", ".2f")]))  # fmt: skip
    print()
    print(table(results["plan"], [("what", "", "s"), ("value", "", "s")]))
    print(f"\nresults: {write_results('replay', args.out, results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
