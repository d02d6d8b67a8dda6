"""`python -m mp_rl.tools.cleanup [--yes]`: list mp_rl segments in /dev/shm by run; remove dead runs'.

A run is alive while the process that created its control block is alive (same pid, started
before the block was created, so a recycled pid does not count). Segments of a live run are never
touched; a run without a control block is left alone for its first minute (it may be starting).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import struct
import sys
import time
from collections import defaultdict

import psutil

from mp_rl.shm.control import MAGIC
from mp_rl.shm.segment import SHM_DIR, Segment, list_segments


def runs_in_shm() -> dict[str, list[str]]:
    runs: dict[str, list[str]] = defaultdict(list)
    for name in list_segments():
        parts = name.split(".")
        if len(parts) >= 3:
            runs[".".join(parts[1:-1])].append(name)
    return dict(runs)


def run_state(run_id: str, names: list[str]) -> tuple[str, int | None]:
    """('alive' | 'dead' | 'starting', owner pid)."""
    control = f"mp_rl.{run_id}.control"
    if control not in names:
        newest = max(os.stat(Segment.path(n)).st_mtime for n in names)
        return ("starting" if time.time() - newest < 60 else "dead"), None
    with open(Segment.path(control), "rb") as f:
        magic, pid, _stop, created_ns = struct.unpack("<qqqq", f.read(32))
    if magic != MAGIC:
        return "dead", None
    try:
        alive = psutil.Process(pid).create_time() <= created_ns / 1e9 + 1.0
    except psutil.Error:
        alive = False
    return ("alive" if alive else "dead"), pid


def remove_dead() -> list[str]:
    """Unlink every segment of every dead run; return the run ids removed."""
    removed = []
    for run_id, names in runs_in_shm().items():
        if run_state(run_id, names)[0] == "dead":
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(Segment.path(name))
            removed.append(run_id)
    return removed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mp_rl.tools.cleanup", description=__doc__.splitlines()[0])
    ap.add_argument("--yes", action="store_true", help="remove the segments of dead runs")
    args = ap.parse_args(argv)
    runs = runs_in_shm()
    if not runs:
        print(f"no mp_rl segments in {SHM_DIR}")
        return 0
    for run_id, names in sorted(runs.items()):
        state, pid = run_state(run_id, names)
        size = sum(os.stat(Segment.path(n)).st_blocks * 512 for n in names)
        print(f"{run_id}  {state:8s} owner {pid or '-':>7}  {len(names)} segments  {size / 2**20:,.1f} MiB in use")
    if args.yes:
        for run_id in remove_dead():
            print(f"removed {run_id}")
    elif any(run_state(r, n)[0] == "dead" for r, n in runs.items()):
        print("run again with --yes to remove the dead runs' segments")
    return 0


if __name__ == "__main__":
    sys.exit(main())
