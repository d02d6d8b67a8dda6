"""Find the segments of runs whose supervisor is gone, and remove them (every supervisor start does).

A run is its segments `mp_rl.<run_id>-<tag>.<part>` (the tag: a random part per start). It is
**alive** while the process that created its control block lives (same pid, started before the block
was made, so a recycled pid does not count); **starting** while its control block has no magic yet
or is younger than `STARTING_S` (two runs started at the same moment must never take each other for
dead); **dead** otherwise. Only the calling user's own regular files are looked at: another user's
segment, a symlink or a FIFO under an `mp_rl.*` name is skipped with a note, never opened in a way
that could block or follow it. A failure on one run skips that run; nothing here raises.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import defaultdict
from dataclasses import dataclass, field

import psutil

from mp_rl.shm import segment
from mp_rl.shm.control import Header

log = logging.getLogger("mp_rl.reaper")

STARTING_S = 5.0  # a control block younger than this is a run starting up, whatever it holds
ABANDONED_S = 60.0  # a run with no stamped control block after this long never got going


@dataclass
class RunSegments:
    """What the reaper found of one run in the shm folder."""

    segments_id: str  # the names' middle part: the run id and its start's random part
    names: list[str]
    state: str = "dead"  # alive | starting | dead | skipped
    owner_pid: int | None = None
    note: str = ""
    bytes_used: int = 0
    paths: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return segment.run_of(self.segments_id)


def _own_regular(path: str) -> os.stat_result | None:
    """lstat the path: our own regular file, or None (not ours, a link, a FIFO, gone)."""
    st = os.lstat(path)
    return st if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() else None


def _read_header(path: str, now: float) -> tuple[Header | None, float]:
    """The control block's header (None before it is sized) and its age in seconds by ctime."""
    # O_NOFOLLOW|O_NONBLOCK: a link planted between lstat and open is refused; a FIFO never blocks us.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise PermissionError(f"{path} changed under us")
        return Header.parse(os.pread(fd, Header.HEADER_BYTES, 0)), now - st.st_ctime
    finally:
        os.close(fd)


def judge(run: RunSegments, shm_dir: str, now: float | None = None) -> RunSegments:
    """Fill in `run.state` (and owner, note, bytes) from its files; never raises."""
    now = time.time() if now is None else now
    try:
        stats = {}
        for name in run.names:
            path = os.path.join(shm_dir, name)
            st = _own_regular(path)
            if st is None:
                run.state, run.note = "skipped", f"{name} is not a regular file of this user"
                return run
            stats[name], run.bytes_used = st, run.bytes_used + st.st_blocks * 512
            run.paths.append(path)
        control = f"{segment.PREFIX}{run.segments_id}.control"
        if control not in stats:  # made last-in-first-out: a run without one was being torn down or made
            newest = max(max(s.st_mtime, s.st_ctime) for s in stats.values())
            run.state = "starting" if now - newest < ABANDONED_S else "dead"
            return run
        header, age = _read_header(os.path.join(shm_dir, control), now)
        if header is None or not header.stamped:
            run.state = "starting" if age < ABANDONED_S else "dead"
            run.note = "" if run.state == "starting" else "its control block was never stamped"
            return run
        run.owner_pid = header.owner_pid
        if _alive(header):
            run.state = "alive"
        else:  # a pid not yet visible, or a clock step: a young run is never judged dead
            run.state = "starting" if now - header.created_ns / 1e9 < STARTING_S else "dead"
    except (OSError, ValueError) as exc:  # gone between listing and open, unreadable, a race: skip it
        run.state, run.note = "skipped", f"{type(exc).__name__}: {exc}"
    return run


def _alive(header: Header) -> bool:
    try:
        return psutil.Process(header.owner_pid).create_time() <= header.created_ns / 1e9 + 1.0
    except (psutil.Error, ValueError, OverflowError):
        return False


def scan(shm_dir: str | None = None) -> list[RunSegments]:
    """Every run with segments in `shm_dir` (default: /dev/shm), judged."""
    shm_dir = shm_dir or segment.SHM_DIR
    try:
        names = sorted(n for n in os.listdir(shm_dir) if n.startswith(segment.PREFIX))
    except OSError as exc:
        log.warning("cannot list %s: %s", shm_dir, exc)
        return []
    runs: dict[str, list[str]] = defaultdict(list)
    for name in names:
        parts = name.split(".")
        if len(parts) >= 3:
            runs[".".join(parts[1:-1])].append(name)
    return [judge(RunSegments(run_id, names), shm_dir) for run_id, names in sorted(runs.items())]


def remove_dead(shm_dir: str | None = None) -> list[str]:
    """Unlink every segment of every dead run; return the run ids removed. Never raises."""
    removed = []
    try:
        for run in scan(shm_dir):
            if run.note:
                log.info("cleanup: run %s skipped: %s", run.run_id, run.note)
            if run.state != "dead":
                continue
            for path in run.paths:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("cleanup: cannot remove %s: %s", path, exc)
            removed.append(run.run_id)
    except Exception:  # a cleanup failure must never stop a start
        log.exception("cleanup of dead runs failed")
    return removed
