"""`python -m mp_rl.tools.inspect runs/<id> [--rows 5] [--limit N] [--json]`: a read-only look at the replay.

Fill and counters, the age of what is in the window, reward / discount / action statistics and a few
decoded rows. It only reads: rows are copied and kept only where the slot's stamp matched its sequence
number before and after the copy (the same seqlock rule the sampler follows), so it is safe against a
live run and never shows a half-written row.
"""

from __future__ import annotations

import json
import time

import numpy as np

from mp_rl.cli import Parser, fail
from mp_rl.shm.manifest import AttachError, SharedRun
from mp_rl.shm.ring import ReplayRing
from mp_rl.shm.sampler import read_rows


def read_window(ring: ReplayRing, limit: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Sequence numbers and scalar fields (action, reward, discount) of the intact rows in the live
    window (the newest `limit` of them); observations are read only for the rows shown."""
    lo, hi = ring.window()
    if limit is not None:
        lo = max(lo, hi - limit)
    return read_rows(ring, np.arange(lo, hi, dtype=np.int64), scalars=True)


def summary(shared: SharedRun, limit: int | None, show: int) -> dict:
    ring = shared.ring
    c0, t0 = ring.counts(), time.monotonic()
    seqs, rows = read_window(ring, limit)
    time.sleep(0.5)  # a short look at the insert rate, to put ages in seconds
    c1 = ring.counts()
    rate = (c1["inserts"] - c0["inserts"]) / (time.monotonic() - t0)
    age = c0["cursor"] - seqs
    edges = np.unique(np.quantile(age, [0, 0.25, 0.5, 0.75, 1.0]).astype(int)) if len(age) else np.array([0])
    hist = np.histogram(age, bins=edges if len(edges) > 1 else 1)[0] if len(age) else np.array([])
    reward, disc = rows.get("reward", np.zeros(0)), rows.get("discount", np.zeros(0))
    actions, counts = np.unique(rows.get("action", np.zeros(0, int)), return_counts=True)
    shown, decoded = read_rows(ring, np.sort(seqs)[-show:][::-1]) if show > 0 else (seqs[:0], {})
    return {
        "run_id": shared.run_id,
        "fill": ring.size(), "capacity": ring.capacity, "capacity_max": ring.spec.capacity_max,
        "counters": c1, "inserts_per_s": round(rate, 1), "rows_read": len(seqs),
        "unreadable": int(ring.size() - len(seqs)) if limit is None else None,
        "age_rows": {"edges": edges.tolist(), "counts": hist.tolist()},
        "age_seconds_max": round(float(age.max()) / rate, 1) if len(age) and rate > 0 else None,
        "reward": _stats(reward), "discount": _stats(disc),
        "terminal_share": round(float((disc == 0).mean()), 4) if len(disc) else None,
        "actions": {int(a): int(n) for a, n in zip(actions, counts, strict=True)},
        "bytes_per_row": round(ring.spec.bytes_per_row, 1), "frame_rows": ring.spec.frames is not None,
        "rows": [{"seq": int(s), **{k: _short(v[i]) for k, v in decoded.items()}} for i, s in enumerate(shown)],
    }  # fmt: skip


def _stats(x: np.ndarray) -> dict | None:
    if not len(x):
        return None
    return {"mean": round(float(x.mean()), 4), "std": round(float(x.std()), 4), "min": float(x.min()),
            "max": float(x.max())}  # fmt: skip


def _short(v: np.ndarray):
    flat = np.asarray(v).reshape(-1)
    if flat.size == 1:
        return flat[0].item()
    head = [round(float(x), 4) for x in flat[:6]]
    return {"shape": list(np.shape(v)), "head": head, "mean": round(float(flat.mean()), 4)}


def describe(s: dict) -> str:
    lines = [
        f"run {s['run_id']}: replay {s['fill']:,}/{s['capacity']:,} rows (reserved {s['capacity_max']:,}), "
        f"{s['inserts_per_s']:,.0f} inserts/s, {s['bytes_per_row']:,.0f} B a row"
        + (" (frames stored once)" if s["frame_rows"] else ""),
        f"counters: inserts {s['counters']['inserts']:,}, samples {s['counters']['samples']:,}, "
        f"voided {s['counters']['voided']:,}, padding {s['counters']['padding']:,}, trims {s['counters']['trims']:,}",
        f"age (rows behind the cursor), quartile bins {s['age_rows']['edges']}: {s['age_rows']['counts']}"
        + (f"; oldest about {s['age_seconds_max']:.0f} s" if s["age_seconds_max"] is not None else ""),
        f"reward {s['reward']}",
        f"discount {s['discount']}; terminal share {s['terminal_share']}",
        f"actions {s['actions']}",
        "newest rows:",
        *(f"  {json.dumps(r)}" for r in s["rows"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="mp_rl.tools.inspect", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--rows", type=int, default=5, help="newest rows to decode")
    ap.add_argument("--limit", type=int, default=None, help="read only the newest N rows of the window")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        shared = SharedRun.attach(args.run_dir)
    except AttachError as exc:
        return fail("mp_rl.tools.inspect", exc)
    with shared:
        s = summary(shared, args.limit, args.rows)
    print(json.dumps(s) if args.json else describe(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
