"""The seqlocks' ordering points, checked as a sequence of events.

x86-64 is strongly ordered, so a missing fence cannot be caught by a race here; on arm64 (Graviton,
Ampere, Apple silicon under Linux) libatomic's seq-cst store and load are one-way barriers and the
plain copies around them can move. These tests record every atomic call, fence and data access of a
publish, a read, an episode report and an episode read, and check that a full fence separates each
mark from the copy it guards, as the protocols written beside them say.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mp_rl.shm import atomics, board, control
from mp_rl.shm.board import WeightBoard
from mp_rl.shm.control import ControlBlock


@pytest.fixture
def events(monkeypatch):
    """Record atomics calls (full fences as 'fence'); the data accesses append themselves."""
    log: list[tuple] = []
    real = {name: getattr(atomics, name) for name in ("fence", "store", "load")}

    def fence(order=atomics.SEQ_CST):
        log.append(("fence",) if order == atomics.SEQ_CST else ("weak-fence",))
        real["fence"](order)

    def store(addr, value):
        log.append(("store", addr, value))
        real["store"](addr, value)

    def load(addr):
        log.append(("load", addr))
        return real["load"](addr)

    for module in (board.atomics, control.atomics):
        monkeypatch.setattr(module, "fence", fence)
        monkeypatch.setattr(module, "store", store)
        monkeypatch.setattr(module, "load", load)
    return log


def fenced(log: list[tuple], first: int, second: int) -> bool:
    """A full fence lies strictly between events `first` and `second`."""
    return any(e == ("fence",) for e in log[first + 1 : second])


class RecordingFlat:
    """Stands in for the flat parameter tensor: records when its bytes are copied."""

    def __init__(self, log: list[tuple], numel: int):
        self.log, self.t, self.is_cuda = log, torch.zeros(numel), False

    def numel(self) -> int:
        return self.t.numel()

    def detach(self) -> torch.Tensor:  # publish reads the source through detach()
        self.log.append(("copy",))
        return self.t

    def copy_(self, src: torch.Tensor) -> None:  # read_into writes the destination through copy_()
        self.log.append(("copy",))
        self.t.copy_(src)


def test_publish_fences_the_copy_between_the_odd_and_the_even_mark(shm_name, events):
    wb = WeightBoard.create(shm_name("board"), 16)
    try:
        events.clear()
        v = wb.publish(RecordingFlat(events, 16))
        mark = wb.mark_addr[v % 2]
        odd = events.index(("store", mark, 2 * v - 1))
        copy = events.index(("copy",))
        even = events.index(("store", mark, 2 * v))
        assert odd < copy < even
        assert fenced(events, odd, copy), "the copy's stores may become visible before the odd mark"
        assert fenced(events, copy, even), "the even mark may become visible before the copy's stores"
    finally:
        wb.destroy()


def test_a_read_fences_the_copy_before_the_mark_is_checked_again(shm_name, events):
    wb = WeightBoard.create(shm_name("board"), 16)
    try:
        wb.publish(torch.arange(16.0))
        events.clear()
        flat = RecordingFlat(events, 16)
        assert wb.read_into(flat) == 1 and torch.equal(flat.t, torch.arange(16.0))
        copy = events.index(("copy",))
        recheck = next(i for i, e in enumerate(events) if i > copy and e == ("load", wb.mark_addr[1]))
        assert fenced(events, copy, recheck), "the copy's loads may be satisfied after the re-check"
    finally:
        wb.destroy()


class RecordingLog(np.ndarray):
    """The episode log, recording reads and writes as 'stamp' (column 3) or 'data' (columns 0..2)."""

    log: list[tuple]

    @staticmethod
    def _part(key) -> str:
        col = key[1] if isinstance(key, tuple) and len(key) == 2 else slice(None)
        return "stamp" if isinstance(col, int) and col == 3 else "data" if col == slice(0, 3) else "row"

    def __getitem__(self, key):
        RecordingLog.log.append(("read", self._part(key)))
        return np.asarray(self).__getitem__(key)

    def __setitem__(self, key, value):
        RecordingLog.log.append(("write", self._part(key)))
        np.asarray(self).__setitem__(key, value)


def test_the_episode_log_is_a_seqlock_on_both_sides(shm_name, events):
    cb = ControlBlock.create(shm_name("control"), 4)
    try:
        RecordingLog.log = events
        cb._ep_log = cb._ep_log.view(RecordingLog)
        events.clear()
        cb.report_episodes(0, np.array([1.0, 2.0]), np.array([10, 20]))
        writes = [e for e in events if e[0] in ("write", "fence")]
        assert writes == [("write", "stamp"), ("fence",), ("write", "data"), ("fence",), ("write", "stamp")], writes
        events.clear()
        rows, end = cb.episodes_since(0)
        reads = [e for e in events if e[0] in ("read", "fence")]
        assert reads == [("read", "stamp"), ("fence",), ("read", "data"), ("fence",), ("read", "stamp")], reads
        assert end == 2 and rows[:, 0].tolist() == [1.0, 2.0]
    finally:
        cb._ep_log = np.asarray(cb._ep_log)
        cb.destroy()


def test_a_row_overwritten_during_the_read_is_left_out(shm_name, monkeypatch):
    """A writer lapping the log between the reader's two stamp reads: the row is dropped, not mixed."""
    cb = ControlBlock.create(shm_name("control"), 4)
    try:
        cb.report_episodes(0, np.array([5.0]), np.array([50]))
        fences, real = [], atomics.fence

        def lap_on_second_fence(order=atomics.SEQ_CST):
            real(order)
            fences.append(order)
            if len(fences) == 2:  # between the data copy and the second stamp read
                monkeypatch.setattr(control.atomics, "fence", real)
                cb.report_episodes(1, np.full(control.EPISODE_LOG, 9.0), np.full(control.EPISODE_LOG, 90))

        monkeypatch.setattr(control.atomics, "fence", lap_on_second_fence)
        rows, _ = cb.episodes_since(0)
        assert len(rows) == 0, rows
    finally:
        cb.destroy()
