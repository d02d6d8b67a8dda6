"""Learning side by side: mp_rl, Stable-Baselines3 DQN and Tianshou DQN, the same wall-clock budget.

    python -m benchmarks.learning [--seeds 3] [--envs cartpole,breakout] [--budget-cartpole 90]
                                  [--budget-breakout 240]        (needs: pip install -e '.[bench,minatar]')

Every system runs in its own interpreter, one at a time, on the same machine in the same run, and its
clock starts when the benchmark launches it (imports and start-up count for all). Each system's
final Q-network plays 20 greedy episodes (seeds 10_000 + seed + i, the episodes mp_rl's own
evaluator plays for `run.seed` = seed) through one shared evaluation
(`benchmarks.peers.greedy_returns`); medians over seeds. Where the env has a threshold (CartPole-v1:
475) the time to reach it is reported too, and a system that reaches it stops there with the
policy that reached it, as mp_rl's shipped CartPole config does (`run.target_return: 475`):
- mp_rl runs its shipped config through the real CLI and is stopped by SIGINT at the budget, as a
  user's Ctrl-C stops it, unless its config stopped it first; its time to threshold is the first
  status line whose periodic evaluation (run in its supervisor, during training, on its own budget)
  reaches the threshold, and the weights that reached it are its `best.pt`;
- the peers keep a copy of their weights every 2 s and those copies are evaluated after the budget,
  so evaluating costs them nothing, and the first copy that reaches the threshold is the policy
  they end with: a stop at no cost, which favours the peers.
Peers: SB3's DQN with the rl-baselines3-zoo CartPole hyper-parameters (the zoo has none for MinAtar:
there it gets MinAtar's reference DQN settings); Tianshou's DQN with SubprocVectorEnv collection,
its CartPole example's settings and MinAtar's reference settings on MinAtar. On MinAtar every
system's network is MinAtar's small CNN. Peers use one torch thread (faster for these small networks).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.common import table, write_results
from mp_rl.cli import Parser
from mp_rl.config import load_config
from mp_rl.runfolder import RunFolder

ENVS = {
    "cartpole": dict(id="CartPole-v1", config="configs/cartpole.yaml", threshold=475.0, budget=90.0,
                     max_steps=500, extra=["eval.every_s=2"], auto=["learner.hidden=auto"],
                     systems=("mp_rl", "mp_rl (auto network)", "sb3", "tianshou")),
    "breakout": dict(id="MinAtar/Breakout-v1", config="configs/minatar_breakout.yaml", threshold=None,
                     budget=180.0, max_steps=27_000, extra=[], auto=["learner.cnn_scale=auto"],
                     systems=("mp_rl", "mp_rl (auto network)", "sb3", "tianshou", "sb3 (mp_rl's settings)",
                              "tianshou (mp_rl's settings)")),
}  # fmt: skip
EPISODES, EVAL_SEED, SNAP_S = 20, 10_000, 2.0


def run_mp_rl(env: dict, seed: int, budget: float, runs_dir: Path, more: list[str] = (), evaluate: bool = True) -> dict:
    """Train through the CLI for `budget` seconds; with `evaluate`, the shared greedy evaluation of the
    policy it ends with ("final"). The result names the run folder ("run_dir")."""
    cmd = [sys.executable, "-m", "mp_rl.run", "--config", env["config"], f"run.seed={seed}",
           f"run.runs_dir={runs_dir}", "run.total_env_steps=1000000000", "logging.status_every_s=1",
           *env["extra"], *more]  # fmt: skip
    launched, lines = time.time(), []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    # Its output, read as it comes (a full pipe would stall the run), each line with its time since launch.
    reader = threading.Thread(target=lambda: lines.extend((time.time() - launched, x) for x in proc.stdout))
    reader.start()
    # A stopped benchmark stops its run: the run's own session keeps a Ctrl-C in the terminal from
    # reaching it, and SIGTERM (`kill`, `timeout`) would end the benchmark without a word, so both become
    # a KeyboardInterrupt here and the run gets a user's Ctrl-C before it is passed on.
    term = signal.signal(signal.SIGTERM, interrupt)
    try:
        proc.wait(timeout=budget)  # returns early when the config's run.target_return stopped the run
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # a user's Ctrl-C: the run stops, keeps final.pt and writes its report
    except BaseException:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=600)
        raise
    finally:
        signal.signal(signal.SIGTERM, term)
    proc.wait(timeout=600)
    reader.join(60)
    if proc.returncode != 0:
        raise SystemExit(f"mp_rl failed ({proc.returncode}):\n{''.join(x for _, x in lines)[-2000:]}")
    run_dir = max(runs_dir.iterdir(), key=lambda p: p.stat().st_mtime)
    learner = load_config(RunFolder(run_dir).config).learner  # the network it trained (auto: as resolved)
    metrics = RunFolder(run_dir).metrics()
    # The evaluation that reached the target stops the run: "stopping: evaluation return ... reached run.target_return"
    reached = next((t for t, x in lines if "reached run.target_return" in x), None)
    stopped = metrics[-1]
    which = "best" if reached is not None else "final"  # best.pt: the weights that reached the target
    res = {}
    if evaluate:
        res = worker(["--eval-mp-rl", str(run_dir), "--checkpoint", which, "--env", env["id"], "--seed", str(seed),
                      "--max-steps", str(env["max_steps"])], 600)  # fmt: skip
    return {
        **res,
        "run_dir": str(run_dir),
        "reached_s": reached,
        "env_steps": stopped["env_steps"],
        "updates": stopped["updates"],
        "network": {"hidden": list(learner.hidden), "cnn_scale": learner.cnn_scale},
    }


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def worker(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.learning", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"worker {' '.join(args)} failed (is the bench extra installed?):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_peer(system: str, env: dict, seed: int, budget: float) -> dict:
    args = ["--peer", system.split()[0], *(["--matched"] if "settings" in system else []), "--env", env["id"],
            "--seed", str(seed), "--budget", str(budget),
            "--launched", repr(time.time()), "--max-steps", str(env["max_steps"])]  # fmt: skip
    if env["threshold"] is not None:
        args += ["--threshold", str(env["threshold"])]
    return worker(args, budget + 900)


def peer_main(a: argparse.Namespace) -> None:
    """In the peer's own interpreter: train for the budget, then evaluate; one JSON line."""
    import numpy as np
    import torch

    from benchmarks import peers

    torch.set_num_threads(1)
    train = peers.train_sb3 if a.peer == "sb3" else peers.train_tianshou
    snap = SNAP_S if a.threshold is not None else None
    _, act, steps, updates, snaps = train(a.env, a.seed, a.launched, a.budget, snap, a.matched)
    reached = None
    if a.threshold is not None:
        reached = snaps.first_reaching(act, a.env, a.threshold, EPISODES, EVAL_SEED + a.seed, a.max_steps)
    returns = peers.greedy_returns(act, a.env, EPISODES, EVAL_SEED + a.seed, a.max_steps)
    print(json.dumps({"final": float(np.mean(returns)), "returns": returns, "reached_s": reached,
                      "env_steps": int(steps), "updates": updates}))  # fmt: skip


def eval_mp_rl_main(a: argparse.Namespace) -> None:
    """Greedy returns of a run folder's final.pt through the shared evaluation, and of its online network
    where it kept an average; one JSON line."""
    import numpy as np
    import torch

    from benchmarks import peers
    from mp_rl.agent import checkpoint
    from mp_rl.agent.models import q_values
    from mp_rl.evaluate import checkpoint_path, load_policy

    torch.set_num_threads(1)
    _, policy = load_policy(Path(a.eval_mp_rl), a.checkpoint, trust_imports=True)  # its own runs

    def play(net: torch.nn.Module) -> list[float]:
        return peers.greedy_returns(peers.argmax_of(lambda x: q_values(net(x))), a.env, EPISODES,
                                    EVAL_SEED + a.seed, a.max_steps)  # fmt: skip

    returns = play(policy)
    out = {"final": float(np.mean(returns)), "returns": returns}
    state = checkpoint.load(checkpoint_path(Path(a.eval_mp_rl), a.checkpoint))
    if "policy" in state:  # a kept average (learner.policy_ema): the online network too, same episodes
        policy.load_state_dict(state["model"])
        online = play(policy)
        out |= {"final_online": float(np.mean(online)), "returns_online": online}
    print(json.dumps(out))


def summarize(env: dict, budget: float, runs: dict[str, list[dict]]) -> tuple[list[dict], dict]:
    rows, verdict = [], {}
    for system in runs:
        rs = runs[system]
        finals = [r["final"] for r in rs]
        reached = [r["reached_s"] for r in rs]
        row = {"system": system, "median": statistics.median(finals), "seeds": " / ".join(f"{x:.1f}" for x in finals),
               "steps": int(statistics.median(r["env_steps"] for r in rs))}  # fmt: skip
        if env["threshold"] is not None:
            solved = [t for t in reached if t is not None]
            # an unsolved seed counts as the budget: a lower bound on its time, so the median is one too
            med = statistics.median(t if t is not None else budget for t in reached)
            row["reached"] = f"{med:.0f}" if len(solved) * 2 > len(rs) else f"> {budget:g}"
            row["solved"] = f"{len(solved)}/{len(rs)}"
        rows.append(row)
    ours = next((r["median"] for r in rows if r["system"] == "mp_rl"), None)
    for row in rows:
        if ours is not None and row["system"] != "mp_rl":
            verdict[row["system"]] = ours >= row["median"]
    return rows, verdict


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="benchmarks.learning", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--envs", default="cartpole,breakout")
    ap.add_argument("--systems", default=None, help="comma-separated names from the env's list (default: all)")
    ap.add_argument("--budget-cartpole", type=float, default=ENVS["cartpole"]["budget"])
    ap.add_argument("--budget-breakout", type=float, default=ENVS["breakout"]["budget"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--matched", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--peer", "--env", "--eval-mp-rl", "--checkpoint"):
        ap.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    for hidden, kind in (("--seed", int), ("--budget", float), ("--launched", float), ("--threshold", float),
                         ("--max-steps", int)):  # fmt: skip
        ap.add_argument(hidden, type=kind, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.peer:
        peer_main(a)
        return 0
    if a.eval_mp_rl:
        eval_mp_rl_main(a)
        return 0
    out = Path(a.out or "bench_out/learning")
    results, report = {}, []
    for name in [e for e in a.envs.split(",") if e]:
        env, budget = ENVS[name], getattr(a, f"budget_{name}")
        systems = [s for s in env["systems"] if a.systems is None or s.split()[0] in a.systems.split(",")]
        runs: dict[str, list[dict]] = {s: [] for s in systems}
        for seed in range(a.seeds):
            for system in systems:  # alternated per seed, so a drift of the machine touches every system
                more = env["auto"] if "auto network" in system else []
                r = (run_mp_rl(env, seed, budget, out / "runs", more) if system.startswith("mp_rl")
                     else run_peer(system, env, seed, budget))  # fmt: skip
                runs[system].append(r)
                at = "" if r.get("reached_s") is None else f", {env['threshold']:g} at {r['reached_s']:.0f} s"
                print(f"{name} seed {seed} {system}: greedy {r['final']:.1f}{at}, {r['env_steps']:,} env steps",
                      flush=True)  # fmt: skip
        rows, verdict = summarize(env, budget, runs)
        results[name] = {"budget_s": budget, "runs": runs, "rows": rows, "mp_rl_at_least": verdict}
        cols = [("system", "system", "s"), ("median", "greedy return, median", ".1f"), ("seeds", "per seed", "s"),
                ("steps", "env steps, median", ",")]  # fmt: skip
        if env["threshold"] is not None:
            cols += [("reached", f"s to {env['threshold']:g}, median", "s"), ("solved", "reached", "s")]
        text = f"\n{env['id']}, {budget:g} s each, {a.seeds} seeds, {EPISODES} greedy episodes at the end\n\n"
        text += table(rows, cols) + "\n"
        text += "".join(f"mp_rl median >= {s}: {'yes' if ok else 'NO'}\n" for s, ok in verdict.items())
        report.append(text)
        print(text, flush=True)
    if len(report) > 1:
        print("".join(report))
    print(f"results: {write_results('learning', str(out), results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
