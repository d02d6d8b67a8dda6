"""Attach actors by hand to a live run: `python -m mp_rl.attach runs/<id> [--actors N] [--cpus 8-15]
[--envs-per-actor K] [--ray ADDRESS]`.

The run folder is all it needs (manifest -> segment names). Each attached actor claims a member slot
atomically, explores with the Ape-X epsilon of its slot, picks up the current weights and writes to
the ring; it is titled `mp_rl[<run>] actor-<slot> (attached)`. Ctrl-C detaches: each actor finishes
its partial block (or the supervisor voids it), releases its slot and exits 0. When the run ends the
actors exit on their own. Bad input (no such run, an ended one, another user's, no free slot, CPUs
that are not there) is one line and exit code 2.

`--ray ADDRESS` runs the actors on a Ray cluster instead (`mp_rl.remote.ray_attach`): they may be on
other machines and write through an ingest on this one.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

from mp_rl.cli import EXIT_USAGE, Parser, fail, owner_only
from mp_rl.config import ConfigError, load_config
from mp_rl.shm.control import ATTACHED, Kind, State
from mp_rl.shm.manifest import AttachError, SharedRun, owner_alive, read_manifest

MAX_CPU = 8192  # the kernel's largest CPU set (CONFIG_NR_CPUS) on any machine we run on


def parse_cpus(text: str) -> list[int]:
    """`8-15,20` -> [8, ..., 15, 20].

    >>> parse_cpus("0-2,5")
    [0, 1, 2, 5]
    """
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise ValueError(f"--cpus {text!r}: expected a list like 8-15,20")
        if int(hi or lo) >= MAX_CPU:  # checked before the range is built: 0-4000000000 is no list to make
            raise ValueError(f"--cpus {text!r}: CPU numbers go up to {MAX_CPU - 1}")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return sorted(cpus)


def attached_actor_main(run_dir: str, overrides: list[str], cpus: list[int] | None, parent_pid: int) -> None:
    """One attached actor: claim a slot, act until detached (SIGINT) or the run ends, leave."""
    # A Ctrl-C that comes before there is a slot to retire is remembered, never dropped: an ignored
    # one would leave this actor running after its terminal asked it to go.
    asked: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: asked.append(signum))
    import torch  # after the handlers: a Ctrl-C during these imports is remembered too

    from mp_rl.agent.actor import Actor
    from mp_rl.system.entrypoints import child_setup, env_spec_of, leave

    if cpus:
        os.sched_setaffinity(0, cpus)
    shared = SharedRun.attach(run_dir)
    manifest = read_manifest(run_dir)
    try:
        slot = shared.control.claim(Kind.ACTOR, flags=ATTACHED)
    except RuntimeError as exc:
        shared.close()
        raise SystemExit(fail("mp_rl.attach", f"run {shared.run_id}: {exc}")) from None
    member = f"actor-{slot} (attached)"
    log = child_setup(shared.run_dir, shared.run_id, member, parent_pid, ignore_sigint=False)
    control = shared.control
    control.set_index(slot, slot)  # its place in the Ape-X schedule is its slot
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C: finish the block, leave
        signal.signal(sig, lambda *_: control.retire(slot))
    if asked:  # it came while we were claiming
        control.retire(slot)
    try:
        cfg = load_config(shared.config_path, overrides)
        torch.set_num_threads(cfg.actors.torch_threads)
        seed = cfg.run.seed + 10_007 * (slot + 1) + os.getpid()
        actor = Actor(cfg, shared, env_spec_of(shared), slot, index=slot, count=control.max_members, seed=seed)
        log.info("attached in slot %d, epsilon %s, cpus %s", slot, actor.epsilon_range, cpus or "any")
        actor.run(run_alive=lambda: owner_alive(manifest))
        actor.close()
        log.info("detached after %d env steps (%s)", actor.steps, "run ended" if control.stopping else "asked")
    finally:
        # A late Ctrl-C (the parent forwards one too) must not touch the control block once it is
        # unmapped: its address may be reused by then, and a CAS there would corrupt memory.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if control.state(slot) != State.FREE:
            shared.ring.void_member(slot + 1)  # a block it could not finish is never stamped
            control.leave(slot)
        shared.close()
    leave(0)  # detached: the interpreter's teardown would only hold up `attach`, which waits for us


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="mp_rl.attach", description="Attach extra actors to a live mp_rl run.")
    p.add_argument("run_dir", help="the run folder (runs/<id>)")
    p.add_argument("--actors", type=int, default=1, help="actors to attach (default 1)")
    p.add_argument("--cpus", help="CPUs to pin them to, e.g. 8-15 (one each while there are enough)")
    p.add_argument("--envs-per-actor", type=int, help="environments per attached actor (default: the run's)")
    p.add_argument("--ray", metavar="ADDRESS", help="run them on a Ray cluster: auto, host:port, or local (a private "
                   "instance on this machine); needs pip install -e '.[ray]'")  # fmt: skip
    args = p.parse_args(argv)
    owner_only()  # attached actors write their logs into the run folder
    try:
        if args.actors < 1:
            raise ValueError(f"--actors {args.actors}: must be at least 1")
        if args.ray is not None and args.cpus:
            raise ValueError("--cpus pins local processes; Ray places --ray actors itself")
        if args.ray is not None:
            from mp_rl.remote.ray_attach import import_ray

            import_ray()  # not installed: one line now, before anything is started
        cpus = parse_cpus(args.cpus) if args.cpus else None
        usable = os.sched_getaffinity(0)
        if cpus and not set(cpus) <= usable:
            missing = sorted(set(cpus) - usable)
            raise ValueError(f"--cpus {args.cpus}: CPU(s) {missing} are not available here (usable: {sorted(usable)})")
        overrides = [] if args.envs_per_actor is None else [f"env.envs_per_actor={args.envs_per_actor}"]
        with SharedRun.attach(args.run_dir) as shared:
            cfg = load_config(shared.config_path, overrides)
            free, run_id, ring = shared.control.free_slots(), shared.run_id, shared.ring.spec
            info = shared.info
        if free < args.actors:
            raise ValueError(f"run {run_id}: {'all' if free == 0 else f'only {free} of the'} "
                             f"{shared.control.max_members} member slots are free, {args.actors} asked")  # fmt: skip
        if args.ray is not None:
            from mp_rl.remote.ray_attach import run_on_ray
            from mp_rl.system.entrypoints import spec_from_info

            return run_on_ray(args.run_dir, run_id, args.actors, cfg, spec_from_info(info), ring, args.ray)
    except (ValueError, AttachError, ConfigError) as exc:
        return fail("mp_rl.attach", exc)
    return run_attached(args.run_dir, run_id, args.actors, cpus, overrides)


def run_attached(run_dir: str, run_id: str, n: int, cpus: list[int] | None, overrides: list[str]) -> int:
    """Start the actors; on Ctrl-C they detach themselves (each got the SIGINT); wait for them."""
    from setproctitle import setproctitle

    from mp_rl.system.entrypoints import title

    setproctitle(title(run_id, "attach"))
    ctx, me = mp.get_context("spawn"), os.getpid()
    mine = [None] * n if not cpus else [[cpus[i]] if len(cpus) >= n else cpus for i in range(n)]
    procs = [ctx.Process(target=attached_actor_main, args=(run_dir, overrides, c, me)) for c in mine]

    # Ctrl-C in a terminal reaches the children too; a SIGINT/SIGTERM sent to this process alone is
    # passed on. Either way each child retires itself (an idempotent CAS), and this one waits.
    def forward(signum, _frame) -> None:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGINT)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for proc in procs:
        proc.start()
    print(f"mp_rl.attach: {n} actor(s) joining run {run_id}; Ctrl-C detaches them", flush=True)
    while any(proc.is_alive() for proc in procs):
        for proc in procs:
            proc.join(0.2)
    codes = [proc.exitcode for proc in procs]
    print(f"mp_rl.attach: detached (exit codes {codes})", flush=True)
    return 0 if all(c == 0 for c in codes) else (EXIT_USAGE if EXIT_USAGE in codes else 1)


if __name__ == "__main__":
    raise SystemExit(main())
