"""Drive the real CLI as a subprocess and find its processes by their titles."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).parent.parent


def cli(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m module args` from the repository root, its output captured as text."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def titled(run_id: str) -> dict[str, psutil.Process]:
    """Live processes titled `mp_rl[<run_id>] <member>`, by member."""
    prefix, found = f"mp_rl[{run_id}] ", {}
    for p in psutil.process_iter():
        try:
            cmd = " ".join(p.cmdline()).strip()  # setproctitle pads the old argv area with spaces
            if cmd.startswith(prefix) and p.status() != psutil.STATUS_ZOMBIE:
                found[cmd[len(prefix) :]] = p
        except psutil.Error:
            continue
    return found


def readable_by_others(folder) -> list[str]:
    """What under `folder` anyone but its owner could read: folders not 0700, files not 0600."""
    wrong = []
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            wrong.append(f"{oct(mode)} {path.relative_to(folder)}")
    return wrong


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)  # polling an external process's files; there is nothing to wait on
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class LiveRun:
    """`python -m mp_rl.run ...` in the background; always killed and cleaned up on exit."""

    def __init__(self, runs_dir: Path, *args: str, env: dict | None = None, cwd: Path = REPO):
        self.runs_dir = Path(cwd) / runs_dir  # runs_dir may be relative to `cwd`, as a user would write it
        self.before = set(self.runs_dir.glob("*"))
        # No training report at stop (2 s of plotting, at every clean stop) unless a test asks for one, as
        # test_system.py's resume test does.
        report = [] if any(a.startswith("logging.report=") for a in args) else ["logging.report=false"]
        cmd = [sys.executable, "-m", "mp_rl.run", *args, *report, f"run.runs_dir={runs_dir}"]
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})  # fmt: skip
        self.run_dir = wait_for(self._run_dir, 60, "the run folder")
        self.run_id = self.run_dir.name

    def _run_dir(self) -> Path | None:
        dirs = [d for d in set(self.runs_dir.glob("*")) - self.before if (d / "manifest.json").exists()]
        return dirs[0] if dirs else None

    def members(self) -> dict[str, psutil.Process]:
        return titled(self.run_id)

    def wait_members(self, names: set[str], timeout: float = 60) -> dict[str, psutil.Process]:
        def present():
            members = self.members()
            return members if names <= members.keys() else None

        return wait_for(present, timeout, f"members {names}")

    def wait_replaced(self, member: str, old: psutil.Process, timeout: float = 60) -> psutil.Process:
        """Wait for `member` to be running under a new pid (a restart)."""

        def replaced():
            p = self.members().get(member)
            return p if p is not None and p.pid != old.pid else None

        return wait_for(replaced, timeout, f"{member} restarted")

    def metrics(self) -> list[dict]:
        path = self.run_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def stop(self, timeout: float) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def wait(self, timeout: float) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill_all(self) -> None:
        for p in self.members().values():
            with contextlib.suppress(psutil.Error):
                p.kill()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)
        from mp_rl.shm import reaper

        for run in reaper.scan():  # ours, and everything of it is dead now, however young the run
            if run.run_id == self.run_id:
                for path in run.paths:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
