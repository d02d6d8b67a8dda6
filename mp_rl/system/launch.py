"""The start every run shares, the supervisor's and serial mode's; and the one knob both apply themselves."""

from __future__ import annotations

from pathlib import Path

from mp_rl import hardware
from mp_rl.config import dump_config
from mp_rl.shm.manifest import SharedRun, write_json_atomic, write_private
from mp_rl.start.preflight import Plan


def open_run(plan: Plan, run_dir: Path, counters: dict | None = None) -> SharedRun:
    """The start every run shares, the supervisor's and serial mode's: the run folder's config and
    hardware profile, the shared segments and manifest, counters restored, the plan's targets set."""
    write_private(run_dir / "config.yaml", dump_config(plan.cfg))
    write_json_atomic(run_dir / "hardware_profile.json", hardware.profile(seconds=0.1))
    e = plan.spec
    env = {"obs_shape": list(e.obs_shape), "obs_dtype": e.obs_dtype, "n_actions": e.n_actions, "obs_scale": e.obs_scale}
    info = {"env": env, "config": "config.yaml", "knobs": plan.knobs.to_json()}  # paths relative to the run folder
    shared = SharedRun.create(
        run_dir, run_dir.name, plan.ring, plan.limit, plan.numel, plan.max_members, plan.capacity, info
    )
    control = shared.control
    for name in ("env_steps", "episodes", "updates"):
        control.set_counter(name, int((counters or {}).get(name, 0)))
    control.set_target("actors", plan.knobs.actors.start)
    control.set_target("capacity", plan.knobs.capacity.start)
    control.set_target("batch_size", plan.knobs.batch_size.start)
    control.set_target("envs_per_actor", plan.cfg.env.envs_per_actor)
    return shared


def apply_capacity(shared: SharedRun) -> None:
    """Move the ring's live capacity to the monitor's target (writers trim what falls out of the window)."""
    capacity = shared.control.target("capacity")
    if capacity and capacity != shared.ring.capacity:
        shared.ring.capacity = capacity
