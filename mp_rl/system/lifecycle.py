"""The start every run shares, the supervisor's and serial mode's; and the one knob both apply themselves."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from mp_rl import hardware
from mp_rl.config import dump_config
from mp_rl.files import write_json_atomic, write_private
from mp_rl.runfolder import CONFIG, RunFolder
from mp_rl.shm import ringsave
from mp_rl.shm.manifest import SharedRun
from mp_rl.start.preflight import Plan


def open_run(plan: Plan, run_dir: Path, counters: dict | None = None, knobs: dict | None = None) -> SharedRun:
    """The start every run shares, the supervisor's and serial mode's: the run folder's config and
    hardware profile, the shared segments and manifest, counters restored, the plan's targets set (a
    resumed run's: the knobs its monitor or tuner had chosen, within this plan's bounds)."""
    folder = RunFolder(run_dir)
    write_private(folder.config, dump_config(plan.cfg))
    write_json_atomic(folder.hardware, hardware.profile(seconds=0.1))
    e = plan.spec
    env = {"obs_shape": list(e.obs_shape), "obs_dtype": e.obs_dtype, "n_actions": e.n_actions, "obs_scale": e.obs_scale}
    # Members read the env and the knobs' bounds from here (`knobs.Knobs.of_info`); paths are the run folder's.
    info = {"env": env, "config": CONFIG, "knobs": plan.knobs.to_json()}
    shared = SharedRun.create(
        run_dir, run_dir.name, plan.ring, plan.limit, plan.numel, plan.max_members, plan.capacity, info
    )
    control = shared.control
    for name in ("env_steps", "episodes", "updates"):
        control.set_counter(name, int((counters or {}).get(name, 0)))
    k, was = plan.knobs, knobs or {}
    for name, span in (
        ("actors", k.actors),
        ("capacity", k.capacity),
        ("batch_size", k.batch_size),
        ("width", k.width),
    ):
        chosen = was.get(name) if span.auto else None
        control.set_target(name, span.clamp(chosen) if chosen else span.start)
    envs = was.get("envs_per_actor") if plan.cfg.run.autotune else None
    control.set_target("envs_per_actor", min(max(int(envs), 1), 1024) if envs else plan.cfg.env.envs_per_actor)
    apply_capacity(shared)
    return shared


def restore_replay(shared: SharedRun, run_dir: Path) -> str | None:
    """A resumed run's saved replay, written back before any actor starts; the line to say, if any."""
    t0 = time.perf_counter()
    rows = ringsave.load(shared.ring, run_dir)
    return f"replay restored: {rows:,} rows in {time.perf_counter() - t0:.1f} s" if rows else None


def keep_replay(shared: SharedRun, cfg, run_dir: Path) -> str | None:
    """At a clean stop, the replay's live window into the run folder (`run.save_replay`); the line to say."""
    want, need = cfg.run.save_replay, ringsave.size(shared.ring)
    if want is False or not shared.ring.size():
        ringsave.discard(run_dir)  # an older one would come back with newer weights
        return None
    free = shutil.disk_usage(run_dir).free
    if want is None and need > free / 2:
        ringsave.discard(run_dir)
        return (f"replay not saved: {need / 2**30:.1f} GiB is more than half the free disk "
                f"({free / 2**30:.1f} GiB); run.save_replay=true saves it anyway")  # fmt: skip
    t0 = time.perf_counter()
    saved = ringsave.save(shared.ring, run_dir)
    return (f"replay saved for --resume: {saved['rows']:,} rows, {saved['bytes'] / 2**20:,.1f} MiB "
            f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip


def apply_capacity(shared: SharedRun) -> None:
    """Move the ring's live capacity to the monitor's target (writers trim what falls out of the window)."""
    capacity = shared.control.target("capacity")
    if capacity and capacity != shared.ring.capacity:
        shared.ring.capacity = capacity
