"""The MinAtar suite's bookkeeping: which runs it takes, where it stores them, and its tables (no training)."""

from __future__ import annotations

import json

import pytest

from benchmarks import minatar


def store(tmp_path, game: str, row: str, seed: int, final: float, speed: float | None = None, **more) -> None:
    path = tmp_path / game / row / "600s" / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    machine = {} if speed is None else {"machine_updates_per_s": speed}
    path.write_text(json.dumps({"final": final, "env_steps": 1000, "updates": 100, **machine, **more}))


def test_shipped_stands_on_the_piece_row_whose_config_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs are found from any folder
    assert minatar.same_as("shipped") == "iqn"  # configs/minatar.yaml is current + IQN with 8 fractions
    assert minatar.same_as("munchausen") == "munchausen"


def test_shipped_is_never_run_twice_and_stored_runs_are_not_run_again(tmp_path, monkeypatch):
    taken = []

    def fake(game, row, seed, budget, runs_dir):
        taken.append((minatar.short(game), row, seed))
        return {"final": 1.0, "env_steps": 10, "updates": 1}

    monkeypatch.setattr(minatar, "run_one", fake)
    monkeypatch.setattr(minatar, "learner_step", lambda row: row)
    monkeypatch.setattr(minatar, "rate", lambda step, seconds: 150.0 if step == "current" else 0.0)
    store(tmp_path, "breakout", "current", 0, 5.0)
    minatar.main(["--games", "breakout", "--rows", "current,iqn,shipped", "--seeds", "2", "--results", str(tmp_path)])
    assert taken == [("breakout", "iqn", 0), ("breakout", "current", 1), ("breakout", "iqn", 1)]
    assert not (tmp_path / "breakout" / "shipped").exists()
    # Each new run keeps the machine's speed, timed on the current learner just before it.
    kept = json.loads((tmp_path / "breakout" / "iqn" / "600s" / "seed1.json").read_text())
    assert kept["machine_updates_per_s"] == 150.0


def test_the_table_names_shipped_once_and_judges_it_against_the_current_learner_and_the_peers(tmp_path, capsys):
    for seed, (cur, iqn, sb3) in enumerate([(20.0, 25.0, 5.0), (22.0, 21.0, 6.0), (18.0, 30.0, 4.0)]):
        store(tmp_path, "breakout", "current", seed, cur, speed=None if seed == 0 else 150.0)
        store(tmp_path, "breakout", "iqn", seed, iqn, speed=None if seed == 0 else 148.0)
        store(tmp_path, "breakout", "sb3", seed, sb3)
    minatar.main(["--table", "--games", "breakout", "--rows", "current,iqn,shipped,sb3", "--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| iqn = shipped | 25.00 | 3 | 25.0 / 21.0 / 30.0 |" in out
    assert "| – / 148 / 148 |" in out  # the machine's speed per seed; none stored for the first
    assert out.count("shipped") == 1 + 2  # its row, then one verdict per baseline present
    assert "shipped > current: yes" in out and "shipped > sb3: yes" in out and "tianshou" not in out


def test_a_row_that_keeps_an_average_shows_its_online_network_on_the_same_runs(tmp_path, capsys):
    for seed, (average, online) in enumerate([(63.0, 60.5), (62.5, 58.0), (61.8, 61.2)]):
        store(tmp_path, "freeway", "iqn_ema", seed, average, final_online=online)
        store(tmp_path, "freeway", "iqn", seed, online)
    minatar.main(["--table", "--games", "freeway", "--rows", "iqn,iqn_ema", "--results", str(tmp_path)])
    out = capsys.readouterr().out
    said = "iqn_ema, its online network on the same episodes: median 60.50 (60.5 / 58.0 / 61.2), the average 62.50"
    assert said in out
    assert "iqn, its online" not in out


def test_an_unknown_game_or_row_is_one_line(capsys):
    for argv, said in ((["--games", "pong"], "unknown MinAtar game 'pong'"), (["--rows", "rainbow"], "unknown row")):
        with pytest.raises(SystemExit) as e:
            minatar.main(["--table", *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and said in err and len(err.strip().splitlines()) == 1
