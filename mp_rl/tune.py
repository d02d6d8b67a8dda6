"""`python -m mp_rl.tune --config configs/<name>.yaml [key.sub=value ...] [--retune] [--json]`.

Runs the auto-tuner's search (`mp_rl.start.autotune`) in a short throwaway run of the config, prints each
trial and the point it chose, and caches it: the next `mp_rl.run` of this config with
`run.autotune=true` starts there at once. With a cached point it only probes it (`--retune` searches
anyway). The replay's min_fill is lowered to a few blocks, so the search measures the replay ratio
the rate limiter holds, not the fill. Bad input is one line and exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile

from mp_rl.cli import owner_only
from mp_rl.system import forks

if __name__ == "__main__":  # before torch, as `mp_rl.run` does: the members' fork server imports it meanwhile
    owner_only()  # first: the members are forks of the server, and inherit its umask
    forks.start()

from mp_rl.cli import config_parser, fail
from mp_rl.config import ConfigError, load_config
from mp_rl.runfolder import RunFolder
from mp_rl.start import cache
from mp_rl.start.preflight import StartError, new_run_dir, plan


def overrides(cfg, runs_dir: str) -> list[str]:
    """A run that only tunes: no evaluation, no checkpoints, no status lines, learning from a few blocks in."""
    fill = min(cfg.replay.min_fill, max(4 * cfg.actors.block, 2 * cfg.learner.max_batch_size))
    return [
        "run.autotune=true",
        "run.name=tune",
        f"run.runs_dir={runs_dir}",
        "run.wall_time_s=null",
        "run.total_env_steps=1000000000000",
        "run.target_return=null",
        f"replay.min_fill={fill}",
        "eval.every_s=1000000",
        "logging.status_every_s=1000000",
        "logging.checkpoint_every=1000000000",
    ]


def table(result: dict) -> str:
    lines = [f"{'envs/actor':>10} {'actors':>6} {'batch':>6} {'env steps/s':>12}  windows"]
    rows = ([result["probe"]] if result["probe"] else []) + result["trials"]
    for t in rows:
        p = t["point"]
        rate = f"{t['rate']:>12,.0f}" if not t["skipped"] else f"{'-':>12}"
        detail = t["skipped"] or ", ".join(f"{r:,.0f}" for r in t["rates"])
        lines.append(f"{p['envs_per_actor']:>10} {p['actors']:>6} {p['batch']:>6} {rate}  {detail}")
    p = result["point"]
    how = f"search of {len(result['trials'])} points, {result['seconds']:.0f} s" if result["searched"] else "cached"
    lines.append(f"chosen: env.envs_per_actor={p['envs_per_actor']} actors={p['actors']} batch={p['batch']} "
                 f"({result['rate']:,.0f} env steps/s; {how})")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = config_parser("mp_rl.tune", "Search and cache the fastest envs per actor, actors and batch.",
                       "actors.max_count=8")  # fmt: skip
    ap.add_argument("--retune", action="store_true", help="search even when a cached point exists")
    ap.add_argument("--json", action="store_true", help="the result as JSON")
    args = ap.parse_args(argv)
    owner_only()
    scratch = tempfile.mkdtemp(prefix="mp_rl-tune-")
    try:
        try:
            cfg = load_config(args.config, args.overrides)
            cfg = load_config(args.config, [*args.overrides, *overrides(cfg, scratch)])
            run_plan = plan(cfg)
            run_dir = new_run_dir(cfg)
        except (ConfigError, StartError) as exc:
            return fail("mp_rl.tune", exc)
        from mp_rl.system.supervisor import Supervisor

        with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
            code = Supervisor(run_plan, run_dir, retune=args.retune, stop_when_tuned=True).run()
        found = RunFolder(run_dir).autotune
        if code or not found.exists():
            print("mp_rl.tune: the tuning run stopped before it finished (see above)", file=sys.stderr)
            return 1
        result = json.loads(found.read_text())
        print(json.dumps(result, indent=2) if args.json else table(result))
        if not args.json:
            print(f"cached in {cache.path('autotune', result['key'])}")
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
