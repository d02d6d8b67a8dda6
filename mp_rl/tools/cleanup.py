"""`python -m mp_rl.tools.cleanup [--yes] [--shm-dir DIR]`: list mp_rl segments by run; remove dead runs'.

What counts as dead, starting or alive, and what is never touched, is `mp_rl.shm.reaper`'s rule.
"""

from __future__ import annotations

import sys

from mp_rl.cli import Parser
from mp_rl.shm import reaper, segment


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="mp_rl.tools.cleanup", description=__doc__.splitlines()[0])
    ap.add_argument("--yes", action="store_true", help="remove the segments of dead runs")
    ap.add_argument("--shm-dir", default=None, help=f"where the segments live (default {segment.SHM_DIR})")
    args = ap.parse_args(argv)
    runs = reaper.scan(args.shm_dir)
    if not runs:
        print(f"no mp_rl segments in {args.shm_dir or segment.SHM_DIR}")
        return 0
    for r in runs:
        owner = r.owner_pid if r.owner_pid is not None else "-"
        note = f"  ({r.note})" if r.note else ""
        print(f"{r.run_id}  {r.state:8s} owner {owner:>7}  {len(r.names)} segments  "
              f"{r.bytes_used / 2**20:,.1f} MiB in use{note}")  # fmt: skip
    if args.yes:
        for run_id in reaper.remove_dead(args.shm_dir):
            print(f"removed {run_id}")
    elif any(r.state == "dead" for r in runs):
        print("run again with --yes to remove the dead runs' segments")
    return 0


if __name__ == "__main__":
    sys.exit(main())
