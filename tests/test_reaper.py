"""The dead-run sweep every start runs: only this user's regular files, never blocks, never raises,
never touches a run that is starting or alive. Most cases in a temporary shm folder; one in /dev/shm."""

from __future__ import annotations

import logging
import os
import struct
import time

import psutil
import pytest

from mp_rl.shm import reaper, segment
from mp_rl.shm.control import MAGIC, ControlBlock

DEAD_PID = 2**22 + 11  # above pid_max on default kernels: never a live process
OLD = time.time_ns() - 3600 * 10**9


def control_bytes(magic: int = MAGIC, pid: int = DEAD_PID, created_ns: int = OLD, size: int = 4096) -> bytes:
    return struct.pack("<qqqq", magic, pid, 0, created_ns).ljust(size, b"\0")


def put(folder, name: str, data: bytes = b"\0" * 4096, age_s: float = 0.0) -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


@pytest.fixture
def shm(tmp_path):
    folder = tmp_path / "shm"
    folder.mkdir()
    return str(folder)


def states(shm) -> dict[str, str]:
    return {r.run_id: r.state for r in reaper.scan(shm)}


def test_a_dead_run_is_removed_and_a_live_one_kept(shm):
    put(shm, "mp_rl.dead.control", control_bytes())
    put(shm, "mp_rl.dead.ring")
    init = psutil.Process(1)  # alive, and older than the block: as the owner of a run started 10 s ago
    assert init.create_time() < time.time() - 10
    put(shm, "mp_rl.live.control", control_bytes(pid=1, created_ns=time.time_ns() - 10 * 10**9))
    assert states(shm) == {"dead": "dead", "live": "alive"}
    assert reaper.remove_dead(shm) == ["dead"]
    assert sorted(os.listdir(shm)) == ["mp_rl.live.control"]


def test_another_users_segments_are_neither_read_nor_removed(shm):
    path = put(shm, "mp_rl.theirs.control", control_bytes())
    os.chown(path, 12345, 12345)  # as root here; for an ordinary user the open raised PermissionError
    assert states(shm) == {"theirs": "skipped"}
    assert reaper.remove_dead(shm) == [] and os.path.exists(path)


def test_an_unreadable_segment_is_skipped_with_a_note(shm, monkeypatch, caplog):
    put(shm, "mp_rl.locked.control", control_bytes())
    real_open = os.open

    def refuse(path, *a, **k):
        if str(path).endswith("mp_rl.locked.control"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(reaper.os, "open", refuse)
    with caplog.at_level(logging.INFO, logger="mp_rl.reaper"):
        assert reaper.remove_dead(shm) == []
    assert "locked skipped: PermissionError" in caplog.text


def test_a_dangling_symlink_is_skipped(shm):
    os.symlink("/nonexistent/target", os.path.join(shm, "mp_rl.link.control"))
    assert states(shm) == {"link": "skipped"}
    assert reaper.remove_dead(shm) == []


def test_a_segment_unlinked_between_listing_and_open_is_skipped(shm, monkeypatch):
    put(shm, "mp_rl.going.control", control_bytes())
    real_listdir = os.listdir
    monkeypatch.setattr(reaper.os, "listdir", lambda d: [*real_listdir(d), "mp_rl.gone.control"])
    assert states(shm) == {"going": "dead", "gone": "skipped"}
    assert reaper.remove_dead(shm) == ["going"]


def test_a_zero_length_control_segment_is_a_run_starting(shm):
    put(shm, "mp_rl.sizing.control", b"")  # between its O_EXCL create and ftruncate
    put(shm, "mp_rl.sizing.ring")
    assert states(shm) == {"sizing": "starting"}
    assert reaper.remove_dead(shm) == [] and len(os.listdir(shm)) == 2


@pytest.mark.timeout(10)
def test_a_fifo_named_like_a_control_segment_never_blocks(shm):
    os.mkfifo(os.path.join(shm, "mp_rl.pipe.control"), 0o600)
    assert states(shm) == {"pipe": "skipped"}
    assert reaper.remove_dead(shm) == []


def test_a_control_segment_without_its_magic_yet_is_a_run_starting(shm):
    put(shm, "mp_rl.fresh.control", b"\0" * 4096)  # created and sized, magic not yet written
    assert states(shm) == {"fresh": "starting"}
    assert reaper.remove_dead(shm) == []


def test_a_stamped_run_younger_than_a_few_seconds_is_starting_even_with_its_owner_gone(shm):
    put(shm, "mp_rl.young.control", control_bytes(created_ns=time.time_ns()))
    assert states(shm) == {"young": "starting"}


def test_a_run_never_stamped_for_a_minute_was_abandoned(shm):
    put(shm, "mp_rl.stale.control", b"\0" * 4096)
    later = time.time() + 2 * reaper.ABANDONED_S  # ctime cannot be set back: judge from the future instead
    assert reaper.judge(reaper.RunSegments("stale", ["mp_rl.stale.control"]), shm, now=later).state == "dead"


def test_a_failure_inside_the_sweep_never_stops_a_start(shm, monkeypatch):
    monkeypatch.setattr(reaper, "scan", lambda _d: 1 / 0)
    assert reaper.remove_dead(shm) == []


def test_the_real_dev_shm_dead_run_removed_and_a_live_one_left(shm_name):
    dead = shm_name("control").split(".")[1]
    starting = shm_name("control").split(".")[1]
    put(segment.SHM_DIR, f"mp_rl.{dead}.control", control_bytes())
    put(segment.SHM_DIR, f"mp_rl.{dead}.ring")
    cb = ControlBlock.create(f"mp_rl.{starting}.control", 4)  # this process: alive
    try:
        removed = reaper.remove_dead()
        assert dead in removed and starting not in removed
        assert not os.path.exists(os.path.join(segment.SHM_DIR, f"mp_rl.{dead}.ring"))
        assert os.path.exists(os.path.join(segment.SHM_DIR, f"mp_rl.{starting}.control"))
    finally:
        cb.destroy()


def test_the_leak_check_leaves_other_sessions_segments_alone_and_blames_ours(shm):
    """Two test sessions on one machine (a developer's and CI's): neither may unlink the other's live run."""
    from mp_rl.testing.ownership import foreign_segments

    now = time.time_ns()
    put(shm, "mp_rl.theirs.control", control_bytes(pid=1, created_ns=now - 10 * 10**9))  # alive, not our tree
    put(shm, "mp_rl.theirs.ring")
    put(shm, "mp_rl.mine.control", control_bytes(pid=os.getpid(), created_ns=now))  # alive, ours
    put(shm, "mp_rl.crashed.control", control_bytes())  # its owner died: a child of ours leaked it
    put(shm, "mp_rl.young.control", control_bytes(created_ns=now))  # died within seconds: still a leak
    put(shm, "mp_rl.making.control", control_bytes(magic=0, pid=0, created_ns=0))  # being created, owner unknown
    other, mine = f"mp_rl.test{DEAD_PID}-3.ring", f"mp_rl.test{os.getpid()}-3.ring"
    names = set(os.listdir(shm)) | {other, mine}
    assert foreign_segments(names, shm) == {"mp_rl.theirs.control", "mp_rl.theirs.ring", "mp_rl.making.control", other}
