"""Ray ingest: blocks delivered into the ring by Ray actors on another node, against local attached writers
and against Ray's own transfer rate for the same blocks, on a two-node local cluster, in one run.

    python -m benchmarks.ray_ingest [--seconds 5] [--repeats 3] [--senders 2] [--envs cartpole,pong]

Three ways to move the same blocks (CartPole rows: 64 whole transitions, 3 KB; Pong frame rows: 64
rows and their 70 frames of 84x84, 495 KB), each for `--seconds`, alternated `--repeats` times, medians:

- `ray raw transfer` (the limit): `--senders` Ray actors on the worker node call a receiver on the head
  node with the block, a window of 4 calls in flight each; the receiver does nothing with it.
- `ray ingest`: the same actors send through `mp_rl.remote.link.Link` to the real ingest on the head
  node, which writes each block into a live ring (the path `mp_rl.attach --ray` takes, env stepping
  aside: the blocks are built once).
- `local attached`: the same number of processes on this machine attached to the ring, writing the
  same blocks with `RingWriter` (what `mp_rl.attach` without `--ray` does, env stepping aside).

The ring's rate limiter is off, and nobody samples: the figure is the transport alone.
Bar (issue 15): ray ingest >= 70 % of ray raw transfer for Pong blocks.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import table, write_results
from mp_rl.cli import Parser
from mp_rl.runfolder import LOGS

ENVS = {
    "cartpole": ("configs/cartpole.yaml", []),
    "pong": ("configs/threadripper.yaml", ["actors.count=1", "learner.device=cpu"]),
}
CAPACITY = 1 << 15  # rows: the ring wraps many times a run, as a long run's does
WINDOW = 4


def ring_for(env: str):
    from mp_rl.config import load_config
    from mp_rl.start.preflight import plan

    path, extra = ENVS[env]
    cfg = load_config(path, [*extra, f"replay.capacity={CAPACITY}", f"replay.max_capacity={CAPACITY}"])
    p = plan(cfg, check=False)
    return p.ring, p.numel


def block_for(spec) -> tuple[dict[str, np.ndarray], np.ndarray | None, int]:
    """A full block of the ring's rows (and frames), and its bytes."""
    rng = np.random.default_rng(0)
    rows = {f.name: rng.integers(0, 100, (spec.block, *f.shape)).astype(f.dtype) for f in spec.fields}
    frames = None
    if spec.frames is not None:
        f = spec.frames
        frames = rng.integers(0, 255, (f.area, *f.shape)).astype(f.dtype)
    nbytes = sum(v.nbytes for v in rows.values()) + (0 if frames is None else frames.nbytes)
    return rows, frames, nbytes


# --- Ray actors ----------------------------------------------------------------------------------
class Receiver:
    def take(self, rows, frames) -> int:
        return 0


class Sender:
    """Sends one block over and over for `seconds`; returns blocks delivered (replies received)."""

    def __init__(self, key: int, rows, frames, receiver, ingest):
        self.key, self.rows, self.frames, self.receiver, self.target = key, rows, frames, receiver, ingest

    def raw(self, seconds: float) -> int:
        import ray

        inflight, done, end = [], 0, time.monotonic() + seconds
        while time.monotonic() < end:
            if len(inflight) >= WINDOW:
                ready, inflight = ray.wait(inflight, num_returns=1)
                done += len(ready)
            inflight.append(self.receiver.take.remote(self.rows, self.frames))
        ray.get(inflight)
        return done + len(inflight)

    def ingest(self, seconds: float) -> int:
        import ray

        from mp_rl.remote.link import Link
        from mp_rl.remote.ray_attach import ray_transport

        ray.get(self.target.join.remote(self.key, "bench"))
        link, end = Link(ray_transport(self.target), self.key, WINDOW), time.monotonic() + seconds
        while time.monotonic() < end:
            link.send_block(self.rows, self.frames, 1.0)
        link.drain()
        ray.get(self.target.release.remote(self.key, "done"))
        return link.sent_blocks


def local_writer(run_dir: str, rows, frames, seconds: float, start, out) -> None:
    from mp_rl.shm.control import ATTACHED, Kind
    from mp_rl.shm.manifest import SharedRun

    shared = SharedRun.attach(run_dir)
    slot = shared.control.claim(Kind.ACTOR, flags=ATTACHED)
    writer, n = shared.ring.writer(token=slot + 1), 0
    start.wait()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        writer.write(rows, frames=frames)
        n += 1
    shared.control.leave(slot)
    shared.close()
    out.put(n)


# --- one measurement each ------------------------------------------------------------------------
def measure(way: str, ctx, senders, run_dir, rows, frames, seconds) -> float:
    """Blocks per second delivered, all senders together."""
    import ray

    t0 = time.monotonic()
    if way == "local attached":
        start, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=local_writer, args=(run_dir, rows, frames, seconds, start, out))
                 for _ in senders]  # fmt: skip
        for p in procs:
            p.start()
        time.sleep(2.0)  # let them import and attach; the clock starts at `start`
        t0 = time.monotonic()
        start.set()
        blocks = sum(out.get(timeout=120) for _ in procs)
        for p in procs:
            p.join()
        return blocks / (time.monotonic() - t0)
    method = "raw" if way == "ray raw transfer" else "ingest"
    blocks = sum(ray.get([getattr(s, method).remote(seconds) for s in senders]))
    return blocks / (time.monotonic() - t0)


def bench_env(env: str, cluster, worker, n: int, seconds: float, repeats: int) -> list[dict]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from mp_rl.remote.ray_attach import RayIngest
    from mp_rl.shm.manifest import SharedRun
    from mp_rl.shm.sync import RateLimit

    spec, numel = ring_for(env)
    rows, frames, nbytes = block_for(spec)
    folder = Path(tempfile.mkdtemp(prefix=f"ray-ingest-{env}-"))
    (folder / LOGS).mkdir()
    run_id = f"bench-ray-{env}-{os.getpid()}"
    shared = SharedRun.create(folder, run_id, spec, RateLimit(None, 1, 0, spec.block, 64), numel, n + 4)
    head = ray.get_runtime_context().get_node_id()
    there = NodeAffinitySchedulingStrategy(worker.node_id, soft=False)
    here = NodeAffinitySchedulingStrategy(head, soft=False)
    try:
        receiver = ray.remote(Receiver).options(num_cpus=0, max_concurrency=n * WINDOW + 4,
                                                scheduling_strategy=here).remote()  # fmt: skip
        ingest = ray.remote(RayIngest).options(num_cpus=0, max_concurrency=n * WINDOW + 8,
                                               scheduling_strategy=here).remote(str(folder), run_id)  # fmt: skip
        remote = ray.remote(Sender).options(num_cpus=1, scheduling_strategy=there)
        senders = [remote.remote(k, rows, frames, receiver, ingest) for k in range(n)]
        ctx = mp.get_context("spawn")
        ways = ("ray raw transfer", "ray ingest", "local attached")
        for way in ways[:2]:  # warm-up: workers started, objects' paths exercised
            measure(way, ctx, senders, str(folder), rows, frames, 1.0)
        rates: dict[str, list[float]] = {w: [] for w in ways}
        for _ in range(repeats):
            for way in ways:
                rates[way].append(measure(way, ctx, senders, str(folder), rows, frames, seconds))
        inserted = shared.ring.counts()["inserts"]
        ray.get(ingest.close.remote())
        for handle in (receiver, ingest, *senders):
            ray.kill(handle)
    finally:
        shared.close()
    out = []
    raw = statistics.median(rates["ray raw transfer"])
    local = statistics.median(rates["local attached"])
    for way in ways:
        blocks = statistics.median(rates[way])
        out.append({"env": env, "way": way, "block_kb": nbytes / 1e3, "transitions_s": blocks * spec.block,
                    "mb_s": blocks * nbytes / 1e6, "of_raw": blocks / raw, "of_local": blocks / local,
                    "repeats": [round(r * spec.block) for r in rates[way]]})  # fmt: skip
    assert inserted > 0
    return out


def main(argv: list[str] | None = None) -> None:
    p = Parser(prog="benchmarks.ray_ingest", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--senders", type=int, default=2, help="Ray actors (and local writers) sending at once")
    p.add_argument("--envs", default="cartpole,pong")
    p.add_argument("--store-mb", type=int, default=512, help="object store of each node")
    p.add_argument("--out")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray.cluster_utils import Cluster

    store = args.store_mb * 2**20
    head = {"num_cpus": 0, "object_store_memory": store, "include_dashboard": False}  # the ring's node: no senders
    cluster = Cluster(initialize_head=True, connect=True, head_node_args=head)
    worker = cluster.add_node(num_cpus=args.senders, object_store_memory=store)
    cluster.wait_for_nodes()
    try:
        rows = []
        for env in args.envs.split(","):
            rows += bench_env(env, cluster, worker, args.senders, args.seconds, args.repeats)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(f"{args.senders} sender(s) on the worker node, the ring and the receiver on the head node, "
          f"{args.seconds:g} s x {args.repeats} alternated repeats, medians\n")  # fmt: skip
    print(table(rows, [("env", "rows", "s"), ("way", "way", "s"), ("block_kb", "block KB", ",.1f"),
                       ("transitions_s", "transitions/s", ",.0f"), ("mb_s", "MB/s", ",.1f"),
                       ("of_raw", "of ray raw", ".0%"), ("of_local", "of local attached", ".0%")]))  # fmt: skip
    pong = [r for r in rows if r["env"] == "pong" and r["way"] == "ray ingest"]
    if pong:
        verdict = "met" if pong[0]["of_raw"] >= 0.7 else "NOT met"
        print(f"\nbar: ray ingest >= 70 % of ray raw transfer for Pong blocks: {pong[0]['of_raw']:.0%}, {verdict}")
    print(f"results: {write_results('ray_ingest', args.out, {'args': vars(args), 'rows': rows})}")


if __name__ == "__main__":
    main()
