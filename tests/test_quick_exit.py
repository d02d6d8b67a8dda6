"""`entrypoints.leave`: the supervisor and every member end with os._exit, skipping the interpreter's
teardown (about a second for a torch process here). What the teardown would have done must still
happen: the handlers registered to run at exit (logging's flush among them), and standard output and
error flushed, piped or not. The program runs buffered (no PYTHONUNBUFFERED) and logs through a
handler that writes only when logging shuts down, so that a bare os._exit loses all three."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BUFFERED = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}

PROGRAM = """
import contextlib, logging, logging.handlers, sys
from mp_rl.system.entrypoints import leave
log = logging.getLogger("quick")
log.addHandler(logging.handlers.MemoryHandler(100, logging.CRITICAL, logging.FileHandler(sys.argv[1])))
log.setLevel(logging.INFO)
log.info("the last log line")
with contextlib.suppress(BrokenPipeError):  # what is left in the buffer is leave's to flush
    print("the last stdout line", end="")  # no newline: stays in the buffer until a flush
    sys.stderr.write("the last stderr line")
leave(int(sys.argv[2]))
"""


def test_leave_flushes_the_logs_and_the_streams_and_keeps_the_exit_code(tmp_path: Path):
    log = tmp_path / "member.log"
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(log), "3"], capture_output=True, text=True, timeout=60,
                          env=BUFFERED)  # fmt: skip
    assert done.returncode == 3
    assert done.stdout == "the last stdout line"
    assert done.stderr == "the last stderr line"
    assert log.read_text() == "the last log line\n"


def test_leave_keeps_the_exit_code_when_the_reader_has_gone(tmp_path: Path):
    """`mp_rl.run ... | head -1`: the pipe's reader has left; the flush fails and the code stands."""
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM, str(tmp_path / "m.log"), "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=BUFFERED)  # fmt: skip
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert (tmp_path / "m.log").read_text() == "the last log line\n"
