"""The budget planner: estimates against what live runs measure, refusals with what would fit, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import pytest
from system_helpers import REPO, wait_for

from mp_rl import plan as plan_cli
from mp_rl.config import load_config
from mp_rl.shm.manifest import SharedRun
from mp_rl.shm.segment import Segment
from mp_rl.start import budget, footprint, resources
from mp_rl.start.budget import Point
from mp_rl.start.preflight import StartError, plan, point, would_fit

# Each live run below is measured once it trains; Pong's replay fills sooner with a lower min_fill.
LIVE = {
    "cartpole": ("configs/cartpole.yaml",),
    "laptop": ("configs/laptop.yaml",),
    "threadripper": ("configs/threadripper.yaml", "replay.min_fill=2000"),
}

# The estimate at a live run's point, computed in a fresh interpreter as `python -m mp_rl.plan` would.
_ESTIMATE = """
import dataclasses, json, sys
from mp_rl.config import load_config
from mp_rl.start.budget import Point
from mp_rl.start.preflight import plan
args = json.loads(sys.argv[1])
p = plan(load_config(args["config"], args["overrides"]), check=False)
lines = p.budget.lines(Point(**args["point"]))
print(json.dumps([dataclasses.asdict(x) for x in lines]))
"""


def _rss(pid: int) -> int:
    """Resident bytes of a process without its shared-memory pages (what the budget estimates)."""
    with open(f"/proc/{pid}/status") as f:
        return sum(int(x.split()[1]) * 1024 for x in f if x.startswith(("RssAnon:", "RssFile:")))


def _measure(run) -> tuple[dict, dict]:
    """(measured bytes by component, the operating point) of a live run."""
    import psutil

    shared = SharedRun.attach(run.run_dir)
    try:
        members = shared.control.live_members()
        actors = [m for m in members if m["kind"] == "actor"]
        got = {"actor": [_rss(m["pid"]) for m in actors]}
        for m in members:
            if m["kind"] in ("learner", "monitor"):
                got[m["kind"]] = [_rss(m["pid"])]
        got["supervisor + evaluator"] = [_rss(run.proc.pid)]
        helpers = {" ".join(p.cmdline()): p.pid for p in psutil.Process(run.proc.pid).children()}
        got["resource tracker"] = [_rss(pid) for line, pid in helpers.items() if "resource_tracker" in line]
        got["fork server"] = [_rss(pid) for line, pid in helpers.items() if "forkserver" in line]
        assert len(got["fork server"]) == 1, f"no fork server among the supervisor's children: {list(helpers)}"
        ring = Segment.path(shared.ring.segment.name)
        got["replay"] = [os.stat(ring).st_blocks * 512]
        got["/dev/shm"] = [sum(os.stat(Segment.path(s.segment.name)).st_blocks * 512
                               for s in (shared.ring, shared.board, shared.control))]  # fmt: skip
        cfg = load_config(run.run_dir / "config.yaml")
        at = Point(len(actors), cfg.env.envs_per_actor, shared.control.target("batch_size"), shared.ring.size())
    finally:
        shared.close()
    return got, dataclasses.asdict(at)


@pytest.mark.system
@pytest.mark.timeout(420)  # three runs share the cores; its own waits allow up to 150 + 60 + 60 s a run
def test_each_estimate_is_within_a_fifth_of_what_a_live_run_measures(live):
    """The three shipped configs, clamped to this machine, run side by side; once each learner trains,
    every process's resident memory and the bytes in /dev/shm are measured and set against the budget
    at the point the run is at (its actors, batch and replay fill)."""
    # Measured while they train: no run may end at its target return or step count first (CartPole
    # solves in seconds).
    keep = ("run.wall_time_s=240", "run.total_env_steps=1000000000", "run.target_return=null", "eval.every_s=10")
    runs = {name: live("--config", *args, *keep) for name, args in LIVE.items()}
    for name, run in runs.items():
        wait_for(lambda r=run: any(m.get("updates", 0) >= 20 for m in r.metrics()), 150, f"{name} to train")
    for name, run in runs.items():  # an evaluation has run too: every buffer is at its working size
        wait_for(lambda r=run: any(m.get("eval_return") is not None for m in r.metrics()), 60, f"{name}'s evaluation")
    measured = {name: _measure(run) for name, run in runs.items()}
    for run in runs.values():  # stopped side by side: each writes its checkpoint and saves its replay
        run.proc.send_signal(signal.SIGINT)
    for name, run in runs.items():
        rc, _, err = run.wait(60)
        assert rc == 0, f"{name} exited {rc}: {err[-800:]}"
    report, off = [], []
    for name, (got, at) in measured.items():
        args = {"config": LIVE[name][0], "overrides": list(LIVE[name][1:]), "point": at}
        out = subprocess.run([sys.executable, "-c", _ESTIMATE, json.dumps(args)], cwd=REPO, capture_output=True,
                             text=True, timeout=120, check=True).stdout  # fmt: skip
        lines = {x["name"]: x for x in json.loads(out.strip().splitlines()[-1])}
        lines["/dev/shm"] = {"ram": 0, "shm": sum(x["shm"] for x in lines.values())}
        for component, values in got.items():
            est = lines[component]["ram"] + lines[component]["shm"]
            for value in values:
                ratio = est / value
                report.append(f"{name:12} {component:24} measured {value / 2**20:8.1f} MiB  est {ratio:5.2f}x")
                if not 0.8 <= ratio <= 1.2:
                    off.append(report[-1])
    print("\n".join(report))
    assert not off, "estimates off by more than 20 %:\n" + "\n".join(off)


def _budget(**limits) -> budget.Budget:
    p = plan(load_config("configs/smoke.yaml"))
    b = p.budget
    return budget.Budget(p.cfg, p.spec, p.ring, b.net, b.bases, b.env, dataclasses.replace(b.limits, **limits),
                         p.max_members)  # fmt: skip


def test_a_start_that_does_not_fit_is_refused_with_what_would(monkeypatch):
    small = 2 * 2**30
    monkeypatch.setattr(resources, "available_memory", lambda root=None: small)
    cfg = load_config("configs/smoke.yaml", ["replay.capacity=30000000", "replay.max_capacity=30000000"])
    with pytest.raises(StartError, match=r"does not fit: needs .* memory.*would fit with replay.capacity=(\d+)") as e:
        plan(cfg)
    rows = int(str(e.value).split("replay.capacity=")[1].split()[0])
    fixed = load_config("configs/smoke.yaml", [f"replay.capacity={rows}", "replay.max_capacity=30000000"])
    p = plan(fixed)  # the suggestion fits, and one row more would not
    assert not p.budget.problems(dataclasses.replace(point(fixed, p.knobs), capacity=rows))
    assert p.budget.problems(dataclasses.replace(point(fixed, p.knobs), capacity=int(rows * 1.01)))


def test_auto_knobs_take_their_upper_bounds_from_the_budget(monkeypatch):
    cfg = load_config("configs/threadripper.yaml", ["learner.device=cpu", "actors.max_count=64"])
    roomy = plan(cfg)
    monkeypatch.setattr(resources, "available_memory", lambda root=None: 4 * 2**30)
    tight = plan(cfg)
    assert tight.knobs.capacity.hi < roomy.knobs.capacity.hi
    b, top = tight.budget, point(tight.cfg, tight.knobs, top=True)
    assert not b.problems(top), "the run's largest point must fit"
    assert b.problems(dataclasses.replace(top, capacity=int(top.capacity * 1.05) + 1024))


def test_the_learner_grows_with_the_batch_and_an_actor_with_its_envs():
    b = plan(load_config("configs/threadripper.yaml", ["learner.device=cpu"])).budget
    small, large = b.learner(32), b.learner(1024)
    per_sample = (large.ram - small.ram) / (1024 - 32)
    # Nature CNN: ~75k activations kept a sample (values and gradients, fp32) + obs and next_obs as floats.
    assert 500_000 < per_sample < 1_200_000
    assert b.actor(32).ram > b.actor(8).ram


def test_the_network_cost_counts_every_layer_output():
    from torch import nn

    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    cost = footprint.network(net, (4,))
    assert cost == footprint.NetCost(
        numel=4 * 16 + 16 + 16 * 2 + 2, activations=16 + 16 + 2, inputs=4, macs=4 * 16 + 16 * 2
    )


def test_the_footprint_of_each_role_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = footprint.bases()
    assert first.measured and first.bare < first.imported <= first.actor and first.imported < first.learner
    files = list((tmp_path / "mp_rl").glob("footprint-*.json"))
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o600"
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("measured again despite the cache"))
    assert footprint.bases() == first
    files[0].write_text("{not json")
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert footprint.bases().measured  # a damaged entry is measured again, not an error


def test_plan_cli_prints_every_component_and_a_verdict(capsys):
    assert plan_cli.main(["--config", "configs/laptop.yaml"]) == 0
    out = capsys.readouterr().out
    for needle in ("replay", "actor", "learner", "weight board", "control block", "monitor", "supervisor",
                   "usable CPUs", "memory.max", "verdict  fits"):  # fmt: skip
        assert needle in out
    assert plan_cli.main(["--config", "configs/smoke.yaml", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["fits"] and {c["name"] for c in r["start"]["components"]} >= {"replay", "actor", "learner"}
    assert r["limits"]["cpus"] == resources.usable_cpus()


def test_plan_cli_says_when_a_run_does_not_fit_and_what_would(capsys, monkeypatch):
    # 1.5 GiB: the processes' own ~1 GiB fits, with room for some replay but not the 1 GiB asked for.
    monkeypatch.setattr(resources, "available_memory", lambda root=None: 3 * 2**29)
    args = ["--config", "configs/smoke.yaml", "replay.capacity=20000000", "replay.max_capacity=20000000"]
    assert plan_cli.main(args) == 1
    out = capsys.readouterr().out
    assert "does NOT fit" in out and "it would fit with replay.capacity=" in out
    assert plan_cli.main(["--config", "configs/none.yaml"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_would_fit_names_nothing_when_no_knob_helps():
    b = _budget(available=1)  # not even one process fits
    assert would_fit(b, point(b.cfg, plan(b.cfg).knobs)) == []


def test_a_cuda_learners_vram_counts_two_cublas_workspaces_and_no_publish_buffer():
    """On CUDA the publish copies the parameters' own flat tensor to the board (no sixth copy), and the
    forward's thread and autograd's device thread each hold a cuBLAS workspace (32 MiB on Hopper)."""
    hopper = budget.cublas_workspace(9)
    b = _budget(gpu="NVIDIA H200", vram=141 * 2**30, cublas_workspace=hopper)
    cfg, numel = b.cfg, b.net.numel
    copies = 2 if cfg.learner.prefetch else 1
    rest = b.activations(64, cfg.learner.amp) + copies * 64 * b.batch_row
    assert b.learner(64).vram == 5 * 4 * numel + 2 * hopper + rest
