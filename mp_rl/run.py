"""`python -m mp_rl.run --config configs/<name>.yaml [key.sub=value ...] [--resume runs/<id>]`.

Bad input (missing file, unknown key, wrong type, out of range, bad override, bad env id, a replay
that cannot fit in memory, a run folder that cannot be resumed) prints one line naming what is
wrong and exits 2, before anything is created or started.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from mp_rl.cli import owner_only
from mp_rl.system import forks

if __name__ == "__main__":  # before torch: the members' fork server imports it on another core meanwhile
    owner_only()  # first: the members are forks of the server, and inherit its umask
    forks.start()

import torch

from mp_rl.agent import checkpoint, growth
from mp_rl.agent.models import q_network
from mp_rl.cli import TRUST_FLAG, TRUST_HELP, check_imports, config_parser, fail
from mp_rl.config import ConfigError, dump_config, load_config
from mp_rl.runfolder import CHECKPOINTS, CONFIG, LOGS, RunFolder
from mp_rl.shm import ringsave
from mp_rl.shm.manifest import AttachError, owner_alive, read_manifest
from mp_rl.shm.segment import SegmentError
from mp_rl.start.preflight import StartError, new_run_dir, plan
from mp_rl.system.entrypoints import leave


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = config_parser(
        "mp_rl.run",
        "Train an off-policy agent with actor processes and a learner.",
        "learner.batch_size=128",
        required=False,
    )  # --resume may stand in for --config
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its newest checkpoint")
    p.add_argument("--print-config", action="store_true", help="check everything, print the resolved config, exit")
    p.add_argument("--retune", action="store_true", help="with run.autotune: search again, ignoring the cache")
    p.add_argument(TRUST_FLAG, action="store_true", help=f"with --resume: {TRUST_HELP}")
    args = p.parse_args(argv)
    if not args.config and not args.resume:
        p.error("one of --config or --resume is required")
    return args


def resume_source(run_dir: Path) -> tuple[Path, Path, dict]:
    """(config.yaml, checkpoint path, checkpoint) of a run folder that can be resumed; StartError otherwise."""
    if not run_dir.is_dir():
        raise StartError(f"--resume {run_dir}: not an mp_rl run folder (no such folder)")
    for need in (CONFIG, LOGS, CHECKPOINTS):
        if not (run_dir / need).exists():
            raise StartError(f"--resume {run_dir}: not an mp_rl run folder (no {need})")
    try:
        manifest = read_manifest(run_dir)
    except AttachError:
        manifest = None  # no manifest (or a damaged one): a run that never got going; its checkpoint decides
    if manifest is not None and owner_alive(manifest):
        raise StartError(f"--resume {run_dir}: that run is still live")
    found = checkpoint.newest(run_dir)
    if found is None:
        raise StartError(f"--resume {run_dir}: no checkpoint to resume from")
    ckpt, state, damaged = found
    if ckpt is None:
        path, why = damaged[0]
        raise StartError(f"--resume {run_dir}: checkpoint {path.name} cannot be read, damaged? ({why})")
    writable(run_dir)
    for path, why in damaged:  # said once, on one line each; the good older checkpoint is used
        print(f"mp_rl.run: --resume: checkpoint {path.name} cannot be read ({why}); using {ckpt.name}",
              file=sys.stderr)  # fmt: skip
    return RunFolder(run_dir).config, ckpt, state


def writable(run_dir: Path) -> None:
    """StartError unless a resumed run can write where it will (its logs, its checkpoints), checked by
    trying, since permission bits do not bind root and a read-only mount binds everyone; leaves nothing."""
    folder = RunFolder(run_dir)
    tries = [(sub, lambda p: tempfile.TemporaryFile(dir=p).close()) for sub in (folder.logs, folder.checkpoints)]
    log = folder.log("supervisor")
    if log.exists() or log.is_symlink():
        tries.append((log, lambda p: open(p, "a").close()))
    for path, attempt in tries:
        try:
            attempt(path)
        except OSError as exc:
            raise StartError(f"--resume {run_dir}: cannot write {path.relative_to(run_dir)} "
                             f"({exc.strerror or type(exc).__name__})") from None  # fmt: skip


def saved_replay(run_dir: Path, run_plan) -> None:
    """StartError unless the run folder's saved replay (if any) can be written into this plan's ring."""
    try:
        ringsave.check(run_dir, run_plan.ring)
    except ringsave.ReplayFileError as exc:
        raise StartError(
            f"--resume: {exc}; remove {run_dir / ringsave.FOLDER} to resume with an empty replay"
        ) from None


def fits_network(run_plan, state: dict, ckpt: Path) -> None:
    """StartError unless the checkpoint's model has the parameter names and shapes this config's network has
    (an older mp_rl's network, or a changed env, `learner.network`, `algo` or `hidden`, would not load). A
    network that grew is compared at the widths its checkpoint recorded (`growth.saved_widths`)."""
    lc = growth.saved_widths(run_plan.cfg.learner, state)
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in q_network(run_plan.spec, lc).state_dict().items()}
    model = state["model"]
    got = {k: tuple(getattr(v, "shape", ())) for k, v in model.items()} if isinstance(model, dict) else {}
    if got != want:
        raise StartError(f"--resume: checkpoint {ckpt.name} holds a different network than this config builds "
                         "(written by another mp_rl version, or env / learner settings changed)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    owner_only()
    ckpt = state = None
    try:
        config_path = args.config
        if args.resume:
            config_path, ckpt, state = resume_source(Path(args.resume).resolve())
        cfg = load_config(config_path, [*args.overrides, *(["run.autotune=true"] if args.retune else [])])
        if args.resume:  # before plan(), which makes the env and so imports what the config names
            check_imports(Path(args.resume).resolve(), cfg.env, args.trust_imports)
        run_plan = plan(cfg)
        if state is not None:
            fits_network(run_plan, state, ckpt)
            saved_replay(Path(args.resume).resolve(), run_plan)
        if args.print_config:  # a dry run: checked like a real start, nothing created
            print(dump_config(cfg), end="")
            return 0
        run_dir = Path(args.resume).resolve() if args.resume else new_run_dir(cfg)
    except (ConfigError, StartError) as exc:
        return fail("mp_rl.run", exc)
    logging.basicConfig(
        filename=RunFolder(run_dir).log("supervisor"),
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    counters = state["counters"] if state else None
    try:
        return start(run_plan, run_dir, ckpt, state, counters, args.retune)
    except SegmentError as exc:  # the shared memory could not be made: nothing was started
        if not args.resume and not any(RunFolder(run_dir).checkpoints.glob("*.pt")):
            shutil.rmtree(run_dir, ignore_errors=True)  # a fresh folder holds only what this start wrote
        return fail("mp_rl.run", exc)


def start(run_plan, run_dir: Path, ckpt: Path | None, state: dict | None, counters: dict | None, retune: bool) -> int:
    """Serial mode in this process, or the supervisor and its processes."""
    if run_plan.cfg.run.serial:
        from mp_rl.system.serial import SerialRun

        forks.stop()  # one process: no member to fork

        with SerialRun(run_plan, run_dir, counters, resume=state) as run:
            run.train(run_plan.cfg.run.wall_time_s or float("inf"))
            run.finish()
        return 0
    from mp_rl.system.supervisor import Supervisor

    knobs = state.get("knobs") if state else None
    return Supervisor(run_plan, run_dir, resume=ckpt, counters=counters, retune=retune, knobs=knobs).run()


if __name__ == "__main__":
    leave(main())  # main returns once the members are joined and the segments unlinked
