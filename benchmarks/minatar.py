"""The MinAtar suite at equal wall time: mp_rl's learners, piece by piece, against SB3 DQN and Tianshou DQN.

    python -m benchmarks.minatar [--games breakout,asterix,freeway] [--rows current,iqn,...] [--seeds 3]
                                 [--budget 600] [--results benchmarks/results/minatar]
    python -m benchmarks.minatar --table              (the tables from the stored results; runs nothing)
    python -m benchmarks.minatar --throughput         (learner updates/s of each row's learner, on this machine)

A game is a MinAtar short name (breakout, asterix, freeway, seaquest, space_invaders) or its env id.
Rows (`ROWS`): `current` is the learner mp_rl shipped for MinAtar before IQN and Munchausen
(`configs/minatar_breakout.yaml`, Double/Dueling DQN, with only `env.id` changed); `iqn`,
`munchausen` and `impala` add one piece each to it, `iqn_munchausen` two; `iqn_ratio3` is `iqn` at
3 samples per insert, `iqn_b128` at batch 128, `iqn_per` with prioritized replay, `current_per`
is `current` with it, `qr_dqn` is QR-DQN and `iqn_lr25` is `iqn` at half the learning rate (the
rows in `TRIED` were screened and are run only when named); `iqn_cap500k` is `iqn` with a
replay of 500k rows, not 100k (ahead of `current` on Freeway's three paired seeds, behind on
Breakout); `iqn_cap250k` is `iqn` with 250k and `current_cap500k` `current` with 500k (both lost
Breakout, in `TRIED`);
`current_compiled` and `iqn_compiled` run the loss through torch.compile (timed only, in `TRIED`);
`iqn_ema` is `iqn` keeping a moving average of its weights as its policy (`learner.policy_ema`);
its results also hold the same checkpoint's online network's returns (`final_online`);
`shipped` is `configs/minatar.yaml`, what mp_rl ships for every MinAtar game. When that config is
one of the other rows' (today: `iqn`), `shipped` is that row: its runs are stored once, under that
row, and count for both; `sb3` and `tianshou` are the peers at MinAtar's reference DQN settings
(`benchmarks.peers`). Every run goes through `benchmarks.learning`: mp_rl
through its real CLI, stopped by SIGINT at the budget, each peer in its own interpreter; the final
network plays 20 greedy episodes through the one shared evaluation.

Each run's result is a JSON file under `--results` (`<game>/<row>/<budget>s/seed<k>.json`), written
when the run ends and never run again while it is there: the suite takes hours on a small machine, so it
goes on where it stopped and the tables are built from whatever is stored. Runs are taken seed by
seed, within a seed game by game, and within a game row by row, so that one game's rows for one seed
are measured back to back, on the same machine. Each result keeps that machine's speed just before
the run (the current learner's updates/s, one thread), and the tables show it per seed: the rows of a
seed are comparable where their speeds agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import table
from mp_rl.cli import Parser

GAMES = {"breakout": "Breakout", "asterix": "Asterix", "freeway": "Freeway", "seaquest": "Seaquest",
         "space_invaders": "SpaceInvaders"}  # fmt: skip
CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # so that --table works from any folder
CURRENT, SHIPPED = str(CONFIGS / "minatar_breakout.yaml"), str(CONFIGS / "minatar.yaml")
ROWS = {  # row: (config, overrides) for mp_rl; None for a peer
    "current": (CURRENT, []),
    "iqn": (CURRENT, ["learner.algo=iqn", "learner.n_quantiles=8"]),
    "munchausen": (CURRENT, ["learner.munchausen=true"]),
    "impala": (CURRENT, ["learner.network=impala_cnn"]),
    "iqn_munchausen": (CURRENT, ["learner.algo=iqn", "learner.n_quantiles=8", "learner.munchausen=true"]),
    # IQN at 3 samples per insert, not 4: its updates cost 1 / 0.76 of current's (one thread), so this
    # aims at as many env steps per second as current. Tried on Freeway and dropped (`TRIED`).
    "iqn_ratio3": (CURRENT, ["learner.algo=iqn", "learner.n_quantiles=8", "replay.samples_per_insert=3"]),
    # IQN with prioritized replay (Rainbow's and BTR's sampling): screened on Freeway, where IQN loses.
    "iqn_per": (CURRENT, ["learner.algo=iqn", "learner.n_quantiles=8", "replay.prioritized=true"]),
    # The same on current: is it prioritized replay that fails there, or IQN's priorities?
    "current_per": (CURRENT, ["replay.prioritized=true"]),
    # IQN at batch 128: 1.3 times iqn's rows per second (fewer, larger updates), a less noisy gradient.
    "iqn_b128": (CURRENT, ["learner.algo=iqn", "learner.n_quantiles=8", "learner.batch_size=128"]),
    # QR-DQN (fixed midpoints, no fraction embedding): distributional at current's cost.
    "qr_dqn": (CURRENT, ["learner.algo=qr_dqn", "learner.n_quantiles=32"]),
    # IQN at half the learning rate: a less noisy mean (Freeway's action gaps are small) for fewer
    # steps' progress.
    "iqn_lr25": (CURRENT, ["learner.algo=iqn", "learner.n_quantiles=8", "learner.lr=0.00025"]),
    # IQN with a 5x replay (500k): once Freeway's policy is good its buffer holds little else, and the
    # greedy choice between actions the data no longer shows can drift; an older, wider buffer keeps them.
    "iqn_cap500k": (CURRENT, ["learner.algo=iqn", "learner.n_quantiles=8", "replay.capacity=500000"]),
    # IQN with a 2.5x replay (250k): between Freeway's gain at 500k and Breakout's loss there. Breakout
    # seed 3 made 12.80 (current 20.25, iqn 17.95, iqn_cap500k 16.7): dropped (`TRIED`).
    "iqn_cap250k": (CURRENT, ["learner.algo=iqn", "learner.n_quantiles=8", "replay.capacity=250000"]),
    # The loss through torch.compile (inductor's CPU kernels), in case per-op overhead ruled MinAtar's
    # small network. Timed (--throughput): 0.97x and 1.05x the eager learners' updates/s, so not run
    # (`TRIED`): IQN's extra time is arithmetic (docs/benchmarks.md).
    "current_compiled": (CURRENT, ["learner.compile=default"]),
    "iqn_compiled": (CURRENT, ["learner.algo=iqn", "learner.n_quantiles=8", "learner.compile=default"]),
    # The same replay for `current`: does the Freeway gain come with DQN's throughput (Breakout)? It
    # does not: 15.20 on Breakout's five seeds against current's 20.25, or 18.70 with its seeds 0-2 run
    # again on the same day's machine (dropped, `TRIED`).
    "current_cap500k": (CURRENT, ["replay.capacity=500000"]),
    # IQN whose kept policy (what the final evaluation plays) is a moving average of the online weights
    # over about 2000 updates (4 target periods): to steady the plateau's drift (Freeway) without
    # keeping older data, which cost Breakout at 250k and 500k rows. Actors explore with the online
    # weights: acting with the average, Freeway seed 3 never scored (results/minatar_20261207).
    "iqn_ema": (CURRENT, ["learner.algo=iqn", "learner.n_quantiles=8", "learner.policy_ema=0.9995"]),
    "shipped": (SHIPPED, []),
    "sb3": None,
    "tianshou": None,
}
# Screened and dropped (docs/benchmarks.md): run and shown only when `--rows` names them.
TRIED = {"iqn_ratio3", "iqn_per", "current_per", "iqn_b128", "qr_dqn", "iqn_lr25", "current_cap500k", "iqn_cap250k",
         "current_compiled", "iqn_compiled"}  # fmt: skip
MAX_STEPS = 27_000  # an evaluation episode's cut, as `benchmarks.learning` has it for MinAtar


def env_id(game: str) -> str:
    if game.startswith("MinAtar/"):
        return game
    if game not in GAMES:
        raise ValueError(f"--games: unknown MinAtar game {game!r}, one of {', '.join(GAMES)} or an env id")
    return f"MinAtar/{GAMES[game]}-v1"


def short(game: str) -> str:
    return next((k for k, v in GAMES.items() if game == f"MinAtar/{v}-v1"), game)


def resolved(row: str) -> dict:
    """A row's whole config as the run would get it, less its name."""
    from mp_rl.config import load_config

    config, more = ROWS[row]
    d = load_config(config, more).model_dump()
    d["run"].pop("name")
    return d


def same_as(row: str) -> str:
    """The row whose runs stand for `row`: `shipped` is the first piece row with its config, if any."""
    if row != "shipped":
        return row
    mine = resolved(row)
    return next((r for r, v in ROWS.items() if v is not None and r != row and resolved(r) == mine), row)


def run_one(game: str, row: str, seed: int, budget: float, runs_dir: Path) -> dict:
    from benchmarks.learning import run_mp_rl, run_peer

    env = {"id": env_id(game), "threshold": None, "max_steps": MAX_STEPS, "extra": []}
    if ROWS[row] is None:
        return run_peer(row, env, seed, budget)
    config, more = ROWS[row]
    return run_mp_rl({**env, "config": config}, seed, budget, runs_dir, [f"env.id={env['id']}", *more])


def result_path(a: argparse.Namespace, game: str, row: str, seed: int) -> Path:
    return Path(a.results) / short(game) / row / f"{a.budget:g}s" / f"seed{seed}.json"


def stored(a: argparse.Namespace, game: str, row: str) -> list[dict]:
    """The stored results of this budget and these seeds, in seed order."""
    seeds = range(a.first_seed, a.first_seed + a.seeds)
    paths = [result_path(a, game, row, k) for k in seeds]
    return [json.loads(p.read_text()) for p in paths if p.exists()]


def run_suite(a: argparse.Namespace, games: list[str], rows: list[str]) -> None:
    rows = list(dict.fromkeys(same_as(r) for r in rows))  # `shipped` runs once when it is another row
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        for game in games:
            for row in rows:
                path = result_path(a, game, row, seed)
                if path.exists():
                    continue
                # This machine's speed just before the run: the current learner's updates/s on one thread.
                # A shared machine's speed drifts from day to day (by 1.8x here), and a table whose rows
                # were measured at different speeds compares machines, not learners; the table shows it.
                speed = rate(learner_step("current"), 3.0)
                started = time.time()
                r = run_one(game, row, seed, a.budget, Path(a.runs))
                r["machine_updates_per_s"] = round(speed, 1)
                r.update(game=env_id(game), row=row, seed=seed, budget_s=a.budget,
                         date=time.strftime("%Y-%m-%d"), wall_s=round(time.time() - started, 1))  # fmt: skip
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(r, indent=1) + "\n")
                print(f"{short(game)} {row} seed {seed}: greedy {r['final']:.2f}, {r['env_steps']:,} env steps, "
                      f"{r['updates']:,} updates", flush=True)  # fmt: skip


def tables(a: argparse.Namespace, games: list[str], rows: list[str]) -> str:
    out = []
    for game in games:
        lines, med = [], {}
        names: dict[str, list[str]] = {}  # the row whose runs are read: the rows it stands for
        for row in rows:
            names.setdefault(same_as(row), []).append(row)
        for real, labels in names.items():
            rs = stored(a, game, real)
            if not rs:
                continue
            finals = [r["final"] for r in rs]
            med |= dict.fromkeys(labels, statistics.median(finals))
            lines.append({"row": " = ".join(labels), "median": statistics.median(finals), "n": len(rs),
                          "seeds": " / ".join(f"{x:.1f}" for x in finals),
                          "steps": int(statistics.median(r["env_steps"] for r in rs)),
                          "updates": int(statistics.median(r["updates"] for r in rs)),
                          "speed": " / ".join(f"{r['machine_updates_per_s']:.0f}" if "machine_updates_per_s" in r
                                              else "–" for r in rs)})  # fmt: skip
        if not lines:
            continue
        cols = [("row", "learner", "s"), ("median", "greedy return, median", ".2f"), ("n", "seeds", "d"),
                ("seeds", "per seed", "s"), ("steps", "env steps, median", ","),
                ("updates", "updates, median", ","), ("speed", "machine, per seed", "s")]  # fmt: skip
        text = f"\n{env_id(game)}, {a.budget:g} s each, 20 greedy episodes at the end\n\n"
        text += table(lines, cols) + "\n"
        for real in names:  # a row that keeps an average: its online network, the same runs and episodes
            paired = [r for r in stored(a, game, real) if "final_online" in r]
            if paired:
                online = [r["final_online"] for r in paired]
                text += (f"{real}, its online network on the same episodes: median {statistics.median(online):.2f} "
                         f"({' / '.join(f'{x:.1f}' for x in online)}), the average "
                         f"{statistics.median(r['final'] for r in paired):.2f}\n")  # fmt: skip
        if "shipped" in med:
            text += "".join(f"shipped > {other}: {'yes' if med['shipped'] > med[other] else 'NO'}\n"
                            for other in ("current", "sb3", "tianshou") if other in med)  # fmt: skip
        out.append(text)
    return "".join(out)


def learner_step(row: str) -> Callable[[], None]:
    """One update of `row`'s learner (forward, loss, backward, Adam) on a random MinAtar Breakout batch,
    as a function to call, on one torch thread."""
    import torch

    from mp_rl.agent.averaging import PolicyAverage
    from mp_rl.agent.impala import power_iterations
    from mp_rl.agent.losses import LossSpec, loss_terms
    from mp_rl.agent.models import build_q_network
    from mp_rl.config import load_config
    from mp_rl.shm.board import flatten_parameters

    torch.set_num_threads(1)
    lc = load_config(ROWS[row][0], ROWS[row][1]).learner
    kw = dict(quantiles=lc.n_quantiles if lc.algo == "qr_dqn" else 0, cnn_scale=lc.cnn_scale,
              implicit=lc.algo == "iqn", spectral=lc.spectral_norm, merge=lc.iqn_merge)  # fmt: skip
    online, target = (build_q_network((10, 10, 4), 3, lc.hidden, lc.dueling, lc.network, **kw) for _ in "ot")
    opt = torch.optim.Adam(online.parameters(), lr=lc.lr, eps=1.5e-4, fused=True)
    n = lc.batch_size
    b = {"obs": (torch.rand(n, 10, 10, 4) < 0.1).float(), "next_obs": (torch.rand(n, 10, 10, 4) < 0.1).float(),
         "action": torch.randint(0, 3, (n,)), "reward": torch.rand(n), "discount": torch.full((n,), 0.97),
         "weight": torch.ones(n)}  # fmt: skip
    spec = LossSpec.of(lc)
    flat, average, counter = None, None, [0]
    if lc.policy_ema:  # only this row's parameters become views of one flat tensor, as the learner's are
        flat = flatten_parameters(online)
        average = PolicyAverage.started_at(online, lc.policy_ema)
    losses = loss_terms if lc.compile == "none" else torch.compile(loss_terms, mode=lc.compile, dynamic=False)

    def step() -> None:
        if lc.spectral_norm:
            power_iterations(online)
        loss, _, _ = losses(online, target, b, spec)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(online.parameters(), lc.grad_clip)
        opt.step()
        if average is not None:  # as the learner does it: a fold every publish_every updates
            counter[0] += 1
            if counter[0] % lc.publish_every == 0:
                average.fold(flat, lc.publish_every)

    return step


def rate(step: Callable[[], None], seconds: float) -> float:
    """Calls per second of `step` over `seconds`, after 5 calls to warm it."""
    for _ in range(5):
        step()
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        step()
        k += 1
    return k / (time.perf_counter() - t0)


def throughput(a: argparse.Namespace, rows: list[str]) -> str:
    """Each mp_rl row's learner step, alternated row by row `--repeats` times; medians, and the ratio
    to `current`."""
    mine = list(dict.fromkeys(same_as(r) for r in rows if ROWS[r] is not None))  # shipped once
    if not mine:
        raise SystemExit("--throughput: --rows names no mp_rl row")
    steps = {row: learner_step(row) for row in mine}
    rates: dict[str, list[float]] = {r: [] for r in mine}
    for _ in range(a.repeats):
        for row, step in steps.items():
            rates[row].append(rate(step, a.seconds))
    baseline = "current" if "current" in mine else mine[0]
    base = statistics.median(rates[baseline])
    shown = {r: " = ".join([r, *(x for x in rows if x != r and same_as(x) == r)]) for r in rates}  # iqn = shipped
    lines = [{"row": shown[r], "rate": statistics.median(v), "ratio": statistics.median(v) / base}
             for r, v in rates.items()]  # fmt: skip
    cols = [("row", "learner", "s"), ("rate", "updates/s, median", ".0f"), ("ratio", f"÷ {baseline}", ".2f")]
    return f"\nlearner updates/s on a MinAtar batch, 1 thread, {a.repeats} alternated repeats\n\n" + table(lines, cols)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="benchmarks.minatar", description=__doc__.splitlines()[0])
    ap.add_argument("--games", default="breakout,asterix,freeway")
    ap.add_argument("--rows", default=",".join(r for r in ROWS if r not in TRIED))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=600.0)
    ap.add_argument("--results", default="benchmarks/results/minatar")
    ap.add_argument("--runs", default="bench_out/minatar/runs")
    ap.add_argument("--table", action="store_true", help="print the tables from the stored results; run nothing")
    ap.add_argument("--throughput", action="store_true", help="time each mp_rl row's learner step; run nothing else")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    games = [g for g in a.games.split(",") if g]
    try:
        for g in games:
            env_id(g)
    except ValueError as e:
        ap.error(str(e))
    rows = [r for r in a.rows.split(",") if r]
    if unknown := [r for r in rows if r not in ROWS]:
        ap.error(f"--rows: unknown row {unknown[0]!r}, one of {', '.join(ROWS)}")
    if a.throughput:
        print(throughput(a, rows))
        return 0
    if not a.table:
        run_suite(a, games, rows)
    print(tables(a, games, rows) or "no stored results for these games and rows", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
