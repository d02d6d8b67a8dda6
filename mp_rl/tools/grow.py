"""`python -m mp_rl.tools.grow RUN_DIR (--wider | --narrower | --width PERCENT)`: resize a live run's network.

For experiments from another terminal: sets the run's width target, which the learner follows within
a second (`Learner.follow_width`: the learned function kept exactly when it widens), and logs the
request in `decisions.jsonl` beside the monitor's own moves. The width is a percentage of the config's
widths, within the span the run's plan allows (`learner.grow: auto`; a run with `off` allows 100 only).
"""

from __future__ import annotations

import json
import sys
import time

from mp_rl.cli import Parser, fail
from mp_rl.knobs import Knobs
from mp_rl.runfolder import RunFolder
from mp_rl.shm.manifest import AttachError, SharedRun


def target(span, now: int, wider: bool, narrower: bool, width: int | None) -> int:
    """The width asked for, as a percentage; ValueError naming the span when it is outside it."""
    want = now * 2 if wider else now // 2 if narrower else width
    if not span.lo <= want <= span.hi:
        raise ValueError(f"width {want} % is outside this run's span {span.lo}..{span.hi} % (learner.grow)")
    return want


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="mp_rl.tools.grow", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    how = ap.add_mutually_exclusive_group(required=True)
    how.add_argument("--wider", action="store_true", help="double every width")
    how.add_argument("--narrower", action="store_true", help="halve every width")
    how.add_argument("--width", type=int, help="widths in percent of the config's (100: as configured)")
    args = ap.parse_args(argv)
    try:
        shared = SharedRun.attach(args.run_dir)
    except AttachError as exc:
        return fail("mp_rl.tools.grow", exc)
    try:
        span = Knobs.of_info(shared.info).width
        now = shared.control.target("width") or span.start
        want = target(span, now, args.wider, args.narrower, args.width)
        shared.control.set_target("width", want)
    except ValueError as exc:
        return fail("mp_rl.tools.grow", exc)
    finally:
        shared.close()
    record = {"kind": "move", "knob": "width", "rule": "by hand (mp_rl.tools.grow)", "old": now, "new": want,
              "unix_time": round(time.time(), 3)}  # fmt: skip
    with open(RunFolder(args.run_dir).decisions_file, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"width target {now} % -> {want} %: the learner follows within a second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
