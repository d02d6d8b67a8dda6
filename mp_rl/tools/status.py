"""`python -m mp_rl.tools.status runs/<id> [--json] [--interval 1] [--count N]`: a live view of a running system.

Members (kind, pid, CPU %, steps/s, heartbeat age, attached or not), the ring (fill, capacity,
inserts/s, samples/s), the learner (updates/s, batch size), weight lag, the monitor's bottleneck and
its last decisions. Refreshes in place on a terminal (rich); one JSON line per tick with `--json`;
plain text when not a TTY. It only reads the shared segments and the run folder.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from mp_rl.cli import Parser, fail
from mp_rl.runfolder import RunFolder
from mp_rl.shm.manifest import AttachError, SharedRun, owner_alive, read_manifest
from mp_rl.system.telemetry import ProcessCpu, Rates, weight_lag


class View:
    """Rates from two looks at the shared counters, per-member CPU and steps/s (`telemetry`)."""

    def __init__(self, shared: SharedRun, run_dir: Path):
        self.shared, self.run_dir = shared, Path(run_dir)
        self.rates = Rates.of(shared)
        self.cpu = ProcessCpu()
        self.steps: dict[int, int] = {}

    def tick(self) -> dict:
        control, ring = self.shared.control, self.shared.ring
        delta, counts = self.rates.update(), self.rates.last
        members = control.live_members()
        version = self.shared.board.version
        for m in members:
            cpu = None if m["remote"] else self.cpu(m["pid"])  # a Ray actor's pid is the ingest's, here
            m["cpu_percent"] = None if cpu is None else round(100 * cpu, 1)
            before = self.steps.get(m["slot"])
            dt = delta.dt
            m["steps_per_s"] = round((m["steps"] - before) / dt, 1) if dt > 0 and before is not None else None
            m["weight_lag"] = version - m["weights"] if m["kind"] == "actor" else None
            m["heartbeat_age_s"] = round(m["heartbeat_age_s"], 2)
        self.cpu.keep(m["pid"] for m in members)
        self.steps = {m["slot"]: m["steps"] for m in members}
        rates = delta.rates()
        snap = control.read_snapshot() or {}
        return {
            "time": round(time.time(), 3), "run_id": self.shared.run_id, "members": members,
            "replay": {"size": ring.size(), "capacity": ring.capacity, "inserts_per_s": rates["inserts_per_s"],
                       "samples_per_s": rates["samples_per_s"], "voided": counts["voided"]},
            "env_steps": counts["env_steps"], "env_steps_per_s": rates["env_steps_per_s"],
            "learner": {"updates": counts["updates"], "updates_per_s": rates["updates_per_s"],
                        "batch_size": control.target("batch_size")},
            "weight_version": version, "weight_lag": weight_lag(version, members),
            "bottleneck": snap.get("bottleneck"), "decisions": self.decisions(3),
        }  # fmt: skip

    def decisions(self, n: int) -> list[dict]:
        moves = RunFolder(self.run_dir).decisions("move", last=200)
        return [{k: d[k] for k in ("time", "knob", "old", "new", "rule")} for d in moves[-n:]]


def render(s: dict):
    from rich.console import Group
    from rich.table import Table

    t = Table(title=f"mp_rl run {s['run_id']}", expand=False)
    for col in ("slot", "member", "pid", "cpu %", "steps/s", "heartbeat", "lag", "state"):
        t.add_column(col, justify="right" if col not in ("member", "state") else "left")
    for m in s["members"]:
        t.add_row(str(m["slot"]), member_name(m), str(m["pid"]), _f(m["cpu_percent"]), _f(m["steps_per_s"]),
                  f"{m['heartbeat_age_s']:.1f}s", _f(m["weight_lag"]), m["state"])  # fmt: skip
    return Group(t, text_lines(s))


def member_name(m: dict) -> str:
    """`actor-0`, `actor-5 (attached)`, `actor-6 (ray)`, `learner`, `monitor`: as the process titles say."""
    if m["kind"] == "actor":
        return f"actor-{m['index']}" + (" (ray)" if m.get("remote") else " (attached)" if m["attached"] else "")
    return m["kind"]


def percent(x) -> str:
    return "—" if x is None else f"{x:,.0f}%"


def _f(x) -> str:
    return "—" if x is None else f"{x:,.0f}" if isinstance(x, float) else str(x)


def text_lines(s: dict) -> str:
    r, lr = s["replay"], s["learner"]
    lines = [
        f"env steps {s['env_steps']:,} ({_f(s['env_steps_per_s'])}/s) | replay {r['size']:,}/{r['capacity']:,}, "
        f"{_f(r['inserts_per_s'])} inserts/s, {_f(r['samples_per_s'])} samples/s | learner {_f(lr['updates_per_s'])} "
        f"updates/s, batch {lr['batch_size']} | weights v{s['weight_version']}, lag {s['weight_lag']}",
        *(
            f"  slot {m['slot']:>2} {member_name(m):<20} pid {m['pid']:>7}  cpu {percent(m['cpu_percent']):>5}  "
            f"{_f(m['steps_per_s']):>7} {'updates' if m['kind'] == 'learner' else 'steps'}/s  "
            f"heartbeat {m['heartbeat_age_s']:.1f}s  lag {_f(m['weight_lag'])}  {m['state']}"
            for m in s["members"]
        ),
        f"bottleneck: {s['bottleneck'] or '— (monitor off or not ready)'}",
        *(f"move t={d['time']:.0f}s {d['knob']} {d['old']:,}->{d['new']:,}: {d['rule']}" for d in s["decisions"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="mp_rl.tools.status", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--json", action="store_true", help="one JSON line per tick")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--count", type=int, default=0, help="stop after N ticks (0: until the run ends)")
    args = ap.parse_args(argv)
    try:
        shared = SharedRun.attach(args.run_dir)
        manifest = read_manifest(args.run_dir)
    except AttachError as exc:
        return fail("mp_rl.tools.status", exc)
    live = None
    if sys.stdout.isatty() and not args.json:
        from rich.live import Live

        live = Live(refresh_per_second=4)
        live.start()
    view, ticks = View(shared, Path(args.run_dir)), 0
    try:
        view.tick()  # the reference point for rates
        while owner_alive(manifest) and (not args.count or ticks < args.count):
            time.sleep(args.interval)
            s = view.tick()
            ticks += 1
            if args.json:
                print(json.dumps(s), flush=True)
            elif live is not None:
                live.update(render(s))
            else:
                print(text_lines(s), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
        shared.close()
    if not owner_alive(manifest):
        print(f"mp_rl.tools.status: run {manifest['run_id']} has ended", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
