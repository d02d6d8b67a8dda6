"""`entrypoints.leave`: the supervisor and every member end with os._exit, skipping the interpreter's
teardown (about a second for a torch process here). What the teardown would have flushed must still
arrive: the log files, and standard output and error, piped or not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROGRAM = """
import contextlib, logging, sys
from mp_rl.system.entrypoints import leave
log = logging.getLogger("quick")
log.addHandler(logging.FileHandler(sys.argv[1]))
log.setLevel(logging.INFO)
log.info("the last log line")
with contextlib.suppress(BrokenPipeError):  # what is left in the buffer is leave's to flush
    print("the last stdout line", end="")  # no newline: stays in the buffer until a flush
    sys.stderr.write("the last stderr line")
leave(int(sys.argv[2]))
"""


def test_leave_flushes_the_logs_and_the_streams_and_keeps_the_exit_code(tmp_path: Path):
    log = tmp_path / "member.log"
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(log), "3"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "the last stdout line"
    assert done.stderr == "the last stderr line"
    assert log.read_text() == "the last log line\n"


def test_leave_keeps_the_exit_code_when_the_reader_has_gone(tmp_path: Path):
    """`mp_rl.run ... | head -1`: the pipe's reader has left; the flush fails and the code stands."""
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM, str(tmp_path / "m.log"), "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert (tmp_path / "m.log").read_text() == "the last log line\n"
