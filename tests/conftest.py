"""Fixtures: every test fails if it leaves an mp_rl segment in /dev/shm or a child process alive."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import shutil
import tempfile

import psutil
import pytest
from helpers import child_processes

from mp_rl.shm.segment import Segment, list_segments
from mp_rl.testing.ownership import foreign_segments

_names = itertools.count()


def pytest_configure(config) -> None:
    """mp_rl's measurement cache (the planner's footprints) goes to a folder of this session, never
    the user's; the CLI runs the tests start inherit it."""
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="mp_rl-test-cache-")


def pytest_unconfigure(config) -> None:
    shutil.rmtree(os.environ.get("XDG_CACHE_HOME", ""), ignore_errors=True)


@pytest.fixture(autouse=True)
def no_leaks():
    before = set(list_segments())
    yield
    new = set(list_segments()) - before
    leaked = sorted(new - foreign_segments(new))  # another session's or a user's run is not this test's
    for name in leaked:
        os.unlink(Segment.path(name))
    alive = child_processes()
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=5)
    assert not leaked, f"test leaked shared-memory segments: {leaked}"
    assert not alive, f"test left child processes alive: {[p.pid for p in alive]}"


@pytest.fixture(autouse=True)
def user_umask():
    """Every test starts under umask 022, as a user's shell does: an entry point called in-process
    sets 077 (`cli.owner_only`), and a later test's subprocesses must not inherit it, or a test that
    files are owner-only could pass without the code that makes them so."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def shm_name(request):
    """A unique segment name prefix for this test."""
    return lambda part: f"mp_rl.test{os.getpid()}-{next(_names)}.{part}"


@pytest.fixture(scope="session")
def spawn():
    return mp.get_context("spawn")


@pytest.fixture
def live(tmp_path):
    """Start the real CLI in the background (`live(*args, env=...)`); killed and cleaned up afterwards."""
    from system_helpers import LiveRun

    runs = []

    def start(*args, env=None, cwd=None, runs_dir=None):
        run = LiveRun(runs_dir or tmp_path / "runs", *args, env=env, **({"cwd": cwd} if cwd else {}))
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.proc.poll() is None or run.members():
            run.kill_all()
