"""Bad input is one line naming what is wrong and exit code 2, with nothing created and never a
traceback: crafted configs and overrides, unusable run folders, damaged checkpoints, attach arguments.
A property test throws random dotted overrides at the CLI's config path."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from system_helpers import REPO

from mp_rl import attach, run
from mp_rl.config import Config
from mp_rl.shm.segment import list_segments

SMOKE = str(REPO / "configs" / "smoke.yaml")


def cli(main, argv: list[str]) -> tuple[int, str, str]:
    """Run an entry point in this process; (exit code, stdout, stderr). A traceback fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def one_line_exit_2(main, argv: list[str], needle: str) -> str:
    rc, _, err = cli(main, argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and needle in err, (rc, err[:500])
    assert len(err) < 400, f"not one short line: {len(err)} characters"
    return err


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("run.seed=-1", "run.seed: Input should be greater than or equal to 0"),
        ("learner.hidden=[-1]", "learner.hidden.0: Input should be greater than or equal to 1"),
        ("learner.hidden=[65536, 65536, 65536]", "learner.hidden: a network of"),
        ("logging.torch_profile_schedule=[-1, 0, 1]", "logging.torch_profile_schedule.0"),
        ("run.runs_dir=/dev/null/x", "run.runs_dir /dev/null/x: cannot create a run folder there"),
    ],
)
def test_values_that_crashed_late_are_refused_up_front(tmp_path, override, needle):
    before = set(list_segments())
    args = ["--config", SMOKE, f"run.runs_dir={tmp_path / 'runs'}", override]
    one_line_exit_2(run.main, args, needle)
    assert not (tmp_path / "runs").exists() and set(list_segments()) == before


def run_folder(tmp_path: Path, without: str = "") -> Path:
    folder = tmp_path / "runs" / "old"
    for sub in ("logs", "checkpoints"):
        (folder / sub).mkdir(parents=True)
    (folder / "config.yaml").write_text(Path(SMOKE).read_text())
    (folder / "checkpoints" / "final.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    if without:
        target = folder / without
        target.rmdir() if target.is_dir() else target.unlink()
    return folder


def test_resuming_a_folder_without_logs_is_refused(tmp_path):
    folder = run_folder(tmp_path, without="logs")
    one_line_exit_2(run.main, ["--resume", str(folder)], "not an mp_rl run folder (no logs)")
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoints", "config.yaml"]


def test_resuming_from_a_damaged_checkpoint_is_refused(tmp_path):
    folder = run_folder(tmp_path)
    one_line_exit_2(run.main, ["--resume", str(folder)], "checkpoint final.pt cannot be read")
    assert not (folder / "manifest.json").exists() and not list((folder / "logs").iterdir())


def test_a_yaml_file_nested_three_thousand_deep_is_one_line(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("run: " + "[" * 3000 + "]" * 3000 + "\n")
    one_line_exit_2(run.main, ["--config", str(path)], "nested too deeply")


def test_a_yaml_alias_bomb_is_one_short_line(tmp_path):
    """Nine levels of nine references: 387M strings if expanded. Loading shares them; the message must too."""
    items = ['- &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    items += [f"- &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("run:\n" + "\n".join(f"  {item}" for item in items) + "\n")
    err = one_line_exit_2(run.main, ["--config", str(path)], "run: Input should be a valid dictionary")
    assert "..." in err  # the value is cut, never printed whole


def test_attach_with_a_cpu_list_too_long_to_build_is_one_line():
    one_line_exit_2(attach.main, ["/nonexistent", "--cpus", "0-4000000000"], "CPU numbers go up to")


@pytest.mark.system
def test_the_real_cli_says_one_line_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mp_rl.run", "--config", SMOKE, "run.seed=-1",
                           f"run.runs_dir={tmp_path / 'runs'}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()


def _keys() -> list[str]:
    keys = []
    for section, info in Config.model_fields.items():
        keys += [f"{section}.{name}" for name in info.annotation.model_fields]
    return [k for k in keys if k != "env.id"]  # an env id names a module to import: not for random text


VALUES = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "auto",
            "null",
            "true",
            "[]",
            "{}",
            "[-1]",
            "[0, 0, 0]",
            "nan",
            "-inf",
            "1e400",
            "2001-99-99",
            "&a [*a]",
            "!!python/object:os.system",
            "[[[[[[1]]]]]]",
            "{a: 1}",
            "'",
            '"',
            "0x10",
            "~",
        ]
    ),
)
OVERRIDES = st.tuples(st.one_of(st.sampled_from(_keys()), st.text(min_size=1, max_size=20)), VALUES).map(
    lambda kv: f"{kv[0]}={kv[1]}"
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(OVERRIDES, min_size=1, max_size=3))
def test_random_overrides_are_accepted_or_one_line_and_exit_2(tmp_path, overrides):
    """Never a traceback: `--print-config` runs every check a start runs, and creates nothing."""
    rc, _, err = cli(run.main, ["--config", SMOKE, f"run.runs_dir={tmp_path / 'runs'}", *overrides, "--print-config"])
    assert rc in (0, 2), (rc, err[-2000:])
    if rc == 2:
        assert len(err.strip().splitlines()) == 1 and len(err) < 600, err[:1000]
    assert not (tmp_path / "runs").exists() and not os.listdir(tmp_path)


def resumable_folder(tmp_path: Path) -> Path:
    """A stopped smoke run's folder with a checkpoint its config can resume from."""
    from mp_rl.agent import checkpoint
    from mp_rl.agent.models import q_network
    from mp_rl.config import load_config
    from mp_rl.start.preflight import plan

    folder = run_folder(tmp_path)
    p = plan(load_config(SMOKE))
    model = q_network(p.spec, p.cfg.learner).state_dict()
    checkpoint.save(folder / "checkpoints" / "final.pt", {"model": model, "counters": {"updates": 1}})
    return folder


def test_a_run_folder_that_cannot_be_written_is_refused_on_resume(tmp_path):
    folder = resumable_folder(tmp_path)
    (folder / "logs" / "supervisor.log").mkdir()  # as unwritable as a read-only mount, even for root
    one_line_exit_2(run.main, ["--resume", str(folder)], "cannot write logs/supervisor.log")
    assert not (folder / "manifest.json").exists()


def test_shared_memory_names_taken_at_every_try_are_one_line_and_leave_no_folder(tmp_path, monkeypatch):
    from mp_rl.shm import control, segment

    def taken(name: str, *args):
        raise segment.SegmentExists(f"segment {name} already exists")

    monkeypatch.setattr(control.ControlBlock, "create", classmethod(lambda cls, name, *a: taken(name)))
    before = set(list_segments())
    one_line_exit_2(run.main, ["--config", SMOKE, f"run.runs_dir={tmp_path / 'runs'}"], "random names were")
    assert not list((tmp_path / "runs").iterdir()) and set(list_segments()) == before


@pytest.mark.parametrize("entry", ["evaluate", "resume"])
def test_a_run_folder_whose_config_imports_code_needs_trust_imports(tmp_path, monkeypatch, entry):
    """config.yaml can name a module (env.register, 'module:EnvId'): importing it runs its code, so a
    folder from elsewhere must not do that unasked. Nothing is imported before the flag is given."""
    from mp_rl import evaluate

    marker = tmp_path / "imported"
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / f"planted_{entry}.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef hook(): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    folder = resumable_folder(tmp_path)
    config = Path(SMOKE).read_text().replace("env:\n", f"env:\n  register: planted_{entry}:hook\n")
    (folder / "config.yaml").write_text(config)
    main, argv = (evaluate.main, [str(folder), "--episodes", "1"]) if entry == "evaluate" else (
        run.main, ["--resume", str(folder), "--print-config"])  # fmt: skip
    one_line_exit_2(main, argv, f"would import planted_{entry}: if you trust that run folder, pass --trust-imports")
    assert not marker.exists()
    assert cli(main, [*argv, "--trust-imports"])[0] == 0 and marker.exists()
