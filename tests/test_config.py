"""Config: every bad input is one line naming the key, exit code 2, nothing created."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mp_rl.config import Config, ConfigError, dump_config, load_config
from mp_rl.start.preflight import StartError, plan

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path):
    cfg = load_config(path)
    assert Config.model_validate(yaml.safe_load(dump_config(cfg))) == cfg


def test_overrides_reach_nested_fields_with_yaml_types():
    cfg = load_config(
        None, ["learner.batch_size=128", "learner.lr=1e-4", "learner.hidden=[64, 64]", "actors.count=auto"]
    )
    assert cfg.learner.batch_size == 128 and cfg.learner.lr == 1e-4
    assert cfg.learner.hidden == (64, 64) and cfg.actors.count == "auto"


def test_config_objects_are_frozen():
    cfg = load_config(None)
    with pytest.raises(Exception, match="frozen"):
        cfg.learner.lr = 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["learner.bactch_size=64"], "learner.bactch_size: unknown key; did you mean 'learner.batch_size'?"),
        (["lerner.lr=1"], "lerner: unknown key; did you mean 'learner'?"),
        (["learner.lr=fast"], "learner.lr: Input should be a valid number"),
        (["learner.batch_size=big"], "learner.batch_size: should be a number or 'auto' (got 'big')"),
        (["learner.batch_size=4"], "learner.batch_size: must be 'auto' or 8..max_batch_size (2048), got 4"),
        (["replay.gamma=1.5"], "replay.gamma: Input should be less than or equal to 1"),
        (["learner.device=tpu"], "learner.device: Input should be 'auto', 'cpu' or 'cuda'"),
        (["learner"], "override 'learner': expected key.sub=value"),
        (["int=1"], "int: unknown key"),  # found by the property test: a key named like a union branch
        (["learner.lr.x=1"], "learner.lr: Input should be a valid number (got {'x': 1})"),
        (["learner.spectral_norm=true"], "learner.spectral_norm: only impala_cnn has it, and network is auto"),
        (["learner.network=impala_cnn", "learner.grow=auto"],
         "learner.grow: auto widens chains of layers; impala_cnn's residual blocks are not one"),
        (["learner.algo=rainbow"], "learner.algo: Input should be 'dqn', 'qr_dqn' or 'iqn'"),
    ],
)  # fmt: skip
def test_bad_values_name_the_key_and_the_problem(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_a_rate_limit_that_could_deadlock_is_refused_by_the_plan():
    with pytest.raises(StartError, match=r"replay\.error_buffer: error_buffer 1 could deadlock"):
        plan(load_config("configs/smoke.yaml", ["replay.error_buffer=1"]))


def test_bad_files_say_which_file_and_why(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("run: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):  # safe_load refuses to build objects
        load_config(unsafe)


@pytest.mark.system
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--config", "configs/missing.yaml"], "config file configs/missing.yaml not found"),
        (["--config", "configs/smoke.yaml", "learner.batch_sise=8"], "learner.batch_sise: unknown key"),
        (["--config", "configs/smoke.yaml", "replay.n_step=0"], "replay.n_step: Input should be greater than or equal"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)  # fmt: skip
def test_the_cli_refuses_bad_input_with_one_line_and_exit_2(tmp_path, args, needle):
    repo = Path(__file__).parent.parent
    cmd = [sys.executable, "-m", "mp_rl.run", *args, "run.runs_dir=" + str(tmp_path / "runs")]
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stdout == ""
    assert not (tmp_path / "runs").exists()  # nothing created


@pytest.mark.system
def test_the_cli_prints_the_resolved_config():
    repo = Path(__file__).parent.parent
    cmd = [sys.executable, "-m", "mp_rl.run", "--config", "configs/smoke.yaml", "learner.lr=0.01", "--print-config"]
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["learner"]["lr"] == 0.01


def test_each_knobs_triple_is_spelled_alike_and_old_spellings_still_load(tmp_path):
    """`<knob>`, `initial_<knob>`, `min_<knob>`, `max_<knob>` for actors, batch and capacity; a run
    folder's config.yaml written with the old keys loads to the same values (resume, evaluate)."""
    for section, knob in (("actors", "count"), ("learner", "batch_size"), ("replay", "capacity")):
        fields = Config.model_fields[section].annotation.model_fields
        assert knob in fields and f"initial_{knob}" in fields and f"max_{knob}" in fields, section
    old = tmp_path / "config.yaml"
    old.write_text("actors: {count: auto, initial: 3}\nreplay: {capacity: auto, capacity_max: 50000}\n"
                   "monitor: {capacity_min: 2048}\n")  # fmt: skip
    cfg = load_config(old)
    assert (cfg.actors.initial_count, cfg.replay.max_capacity, cfg.replay.min_capacity) == (3, 50000, 2048)
    assert load_config(None, ["replay.capacity=auto", "replay.capacity_max=4096"]).replay.max_capacity == 4096
    # An old key on the command line overrides the file's new one; a file with both is refused.
    laptop = load_config("configs/laptop.yaml", ["replay.capacity_max=100000"])
    assert laptop.replay.max_capacity == 100000
    both = tmp_path / "both.yaml"
    both.write_text("replay: {capacity: auto, capacity_max: 50000, max_capacity: 60000}\n")
    with pytest.raises(ConfigError, match=r"replay\.capacity_max and replay\.max_capacity: the same key twice"):
        load_config(both)


def test_every_key_has_a_description_for_the_generated_reference():
    """docs/configuration.md is built from these descriptions (docs/hooks/config_reference.py)."""
    missing = [f"{section}.{name}" for section, sf in Config.model_fields.items()
               for name, f in sf.annotation.model_fields.items() if not (f.description or "").strip()]  # fmt: skip
    assert not missing, missing
