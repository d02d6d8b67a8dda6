"""The tools that only read a run (status, inspect, cleanup) and attach's own process start without
torch: its import alone takes seconds, and these are what a user runs beside a live run, again and
again. (`test_attach_live` checks status, inspect and cleanup through a whole call against a live run.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

LIGHT = ("mp_rl.tools.status", "mp_rl.tools.inspect", "mp_rl.tools.cleanup", "mp_rl.attach")


@pytest.mark.parametrize("module", LIGHT)
def test_a_read_only_tool_imports_without_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False", f"importing {module} imports torch: {done.stdout}"


def test_attach_names_its_processes_without_torch():
    """attach's parent titles itself with `entrypoints.title`; the actors it starts import torch themselves."""
    code = "import sys; from mp_rl.system.entrypoints import title; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr
