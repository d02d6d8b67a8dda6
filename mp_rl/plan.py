"""`python -m mp_rl.plan --config configs/<name>.yaml [key.sub=value ...] [--json]`: the budget of a run.

Prints what each component of the run would hold (resident RAM, /dev/shm, VRAM, CPU) at the knobs'
starts and at their upper bounds, the machine's limits as mp_rl sees them (affinity, cgroup
cpu.max / memory.max, GPU memory), and a verdict; when the start does not fit, the largest values that
would. The same budget is what preflight checks. Exit 0 when the run fits, 1 when it does not, 2 on
bad input.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from mp_rl.cli import config_parser, fail
from mp_rl.config import ConfigError, load_config
from mp_rl.start.budget import HEADROOM, Budget, Line, Point, gib
from mp_rl.start.preflight import Plan, StartError, plan, point, would_fit


def _total(lines: list[Line]) -> dict:
    return {
        "ram": sum(x.count * x.ram for x in lines),
        "shm": sum(x.count * x.shm for x in lines),
        "vram": sum(x.count * x.vram for x in lines),
        "cpu": round(sum(x.count * x.cpu for x in lines), 2),
    }


def report(p: Plan) -> dict:
    """The plan as JSON: limits, knobs, every component at the start and at the upper bounds, verdict."""
    b: Budget = p.budget
    start, top = point(p.cfg, p.knobs), point(p.cfg, p.knobs, top=True)
    at = {"start": (start, b.lines(start)), "max": (top, b.grown().lines(top))}  # at most: the largest network
    return {
        "env": p.cfg.env.id,
        "device": b.device,
        "network": {"parameters": b.net.numel, "activations_per_sample": b.net.activations},
        "limits": b.limits.to_json(),
        "bases": dataclasses.asdict(b.bases),
        "knobs": p.knobs.to_json(),
        **{
            name: {
                "point": dataclasses.asdict(pt),
                "components": [dataclasses.asdict(x) for x in lines],
                "total": _total(lines),
            }
            for name, (pt, lines) in at.items()
        },
        "fits": not p.problems,
        "problems": p.problems,
        "would_fit": would_fit(b, start) if p.problems else [],
        "warnings": p.warnings,
        "sizing": None if p.sizing is None else dataclasses.asdict(p.sizing),
    }


def _mem(n: float) -> str:
    return gib(n) if n else "-"


def _cpu(n: float) -> str:
    return f"{n:.2g}" if n else "-"


def _point(pt: Point) -> str:
    return f"{pt.actors} actor(s) x {pt.envs_per_actor} envs, batch {pt.batch}, replay {pt.capacity:,} rows"


def text(p: Plan, r: dict) -> str:
    b, lim = p.budget, p.budget.limits
    cpu = f"{lim.cpus} usable CPUs (affinity {lim.affinity}, cgroup cpu.max {lim.cgroup_cpus or 'none'})"
    mem = f"{gib(lim.ram)} RAM, {gib(lim.available)} available (cgroup memory.max "
    mem += f"{gib(lim.cgroup_memory) if lim.cgroup_memory else 'none'})"
    gpu = f"{lim.gpu}, {gib(lim.vram)}" if lim.gpu else "no GPU: the learner trains on the CPU"
    out = [f"plan for {p.cfg.env.id}: {b.net.numel:,} parameters, learner on {b.device}",
           f"cpus     {cpu}", f"memory   {mem}", f"gpu      {gpu}",
           f"start    {_point(point(p.cfg, p.knobs))}",
           f"at most  {_point(point(p.cfg, p.knobs, top=True))}  (the bounds the monitor may move within)", "",
           f"{'component':<24}{'count':>7}{'RAM each':>11}{'/dev/shm':>11}{'VRAM':>10}{'CPU':>6}"
           f"{'memory at start':>17}{'at most':>10}  note"]  # fmt: skip
    for s, m in zip(b.lines(point(p.cfg, p.knobs)), b.grown().lines(point(p.cfg, p.knobs, top=True)), strict=True):
        count = f"{s.count}" if s.count == m.count else f"{s.count}..{m.count}"
        each = f"{_mem(m.ram):>11}{_mem(m.shm):>11}{_mem(m.vram):>10}{_cpu(m.cpu * m.count):>6}"
        out.append(f"{s.name:<24}{count:>7}{each}{gib(s.memory):>17}{gib(m.memory):>10}  {m.note}".rstrip())
    ts, tm = r["start"]["total"], r["max"]["total"]
    out.append(f"{'total':<24}{'':>7}{'':>11}{'':>11}{_mem(tm['vram']):>10}{tm['cpu']:>6.2g}"
               f"{gib(ts['ram'] + ts['shm']):>17}{gib(tm['ram'] + tm['shm']):>10}")  # fmt: skip
    out.append("")
    room = f"{gib(HEADROOM * lim.available)} usable ({HEADROOM:.0%} of available)"
    if p.problems:
        out.append(f"verdict  does NOT fit: {'; '.join(p.problems)}")
        if r["would_fit"]:
            out.append(f"         it would fit with {' or '.join(r['would_fit'])}")
    else:
        out.append(f"verdict  fits: {gib(ts['ram'] + ts['shm'])} at the start, {gib(tm['ram'] + tm['shm'])} at most, "
                   f"of {room}")  # fmt: skip
    if tm["cpu"] > lim.cpus:
        out.append(f"         CPU: {tm['cpu']:.1f} cores asked of {lim.cpus}: processes will share cores")
    if p.sizing is not None:
        out += [f"network  {reason}" for reason in p.sizing.reasons]
    out += [f"note     {w}" for w in p.warnings if p.sizing is None or w not in p.sizing.reasons]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = config_parser("mp_rl.plan", "Print what each component of a run would use, and whether it fits.",
                       "replay.capacity=500000")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="the plan as JSON, for scripts")
    args = ap.parse_args(argv)
    try:
        p = plan(load_config(args.config, args.overrides), check=False)
    except (ConfigError, StartError) as exc:
        return fail("mp_rl.plan", exc)
    r = report(p)
    print(json.dumps(r, indent=2) if args.json else text(p, r))
    return 1 if p.problems else 0


if __name__ == "__main__":
    sys.exit(main())
