"""`python -m mp_rl.run --config configs/<name>.yaml [key.sub=value ...] [--resume runs/<id>]`.

Bad input (missing file, unknown key, wrong type, out of range, bad override, bad env id, a replay
that cannot fit in memory, a run folder that cannot be resumed) prints one line naming what is
wrong and exits 2, before anything is created or started.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mp_rl import checkpoint
from mp_rl.config import ConfigError, dump_config, load_config
from mp_rl.preflight import StartError, new_run_dir, plan
from mp_rl.shm.manifest import AttachError, owner_alive, read_manifest

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="mp_rl.run", description="Train an off-policy agent with actor processes and a learner.")
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides, e.g. learner.batch_size=128")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its newest checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = p.parse_args(argv)
    if not args.config and not args.resume:
        p.error("one of --config or --resume is required")
    return args


def resume_source(run_dir: Path) -> tuple[Path, Path]:
    """(config.yaml, checkpoint) of a run folder that can be resumed; StartError otherwise."""
    if not (run_dir / "config.yaml").is_file():
        raise StartError(f"--resume {run_dir}: not an mp_rl run folder (no config.yaml)")
    try:
        manifest = read_manifest(run_dir)
    except AttachError:
        manifest = None  # no manifest: a run that never got going; its checkpoint decides
    if manifest is not None and owner_alive(manifest):
        raise StartError(f"--resume {run_dir}: that run is still live")
    ckpt = checkpoint.latest(run_dir)
    if ckpt is None:
        raise StartError(f"--resume {run_dir}: no checkpoint to resume from")
    return run_dir / "config.yaml", ckpt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ckpt = None
    try:
        config_path = args.config
        if args.resume:
            config_path, ckpt = resume_source(Path(args.resume))
        cfg = load_config(config_path, args.overrides)
        if args.print_config:
            print(dump_config(cfg), end="")
            return 0
        run_plan = plan(cfg)
    except (ConfigError, StartError) as exc:
        print(f"mp_rl.run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    run_dir = Path(args.resume) if args.resume else new_run_dir(cfg)
    logging.basicConfig(
        filename=run_dir / "logs" / "supervisor.log",
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if cfg.run.serial:
        from mp_rl.serial import SerialRun

        with SerialRun(run_plan, run_dir) as run:
            run.train(cfg.run.wall_time_s or float("inf"))
            run.learner.save(run_dir / "checkpoints" / "final.pt")
        return 0
    from mp_rl.mp_system import Supervisor

    counters = checkpoint.load(ckpt)["counters"] if ckpt else None
    return Supervisor(run_plan, run_dir, resume=ckpt, counters=counters).run()


if __name__ == "__main__":
    sys.exit(main())
