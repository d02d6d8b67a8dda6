"""Which mp_rl segments a test session may call its own: the leak check must never blame, nor remove,
a segment that another test session or a user's run on the same machine created meanwhile."""

from __future__ import annotations

import re

import psutil

from mp_rl.shm import reaper, segment

TEST_NAME = re.compile(r"mp_rl\.test(\d+)-")  # the `shm_name` fixture's names: mp_rl.test<pid>-<n>.<part>


def foreign_segments(names: set[str], shm_dir: str | None = None) -> set[str]:
    """Those of `names` that belong to someone else: a run whose control block names a live owner
    outside this process's tree, a run being created whose block has no owner written yet, and
    segments named by another session's `shm_name`. A dead owner's run is never foreign, however
    young: a child of ours that died leaked it."""
    me = psutil.Process()
    ours = {me.pid, *(p.pid for p in me.children(recursive=True))}
    foreign = {n for n in names if (m := TEST_NAME.match(n)) and int(m[1]) != me.pid}
    for run in reaper.scan(shm_dir or segment.SHM_DIR):
        alive_elsewhere = run.state == "alive" and run.owner_pid not in ours
        if alive_elsewhere or (run.state == "starting" and run.owner_pid is None):
            foreign |= set(run.names) & names
    return foreign
