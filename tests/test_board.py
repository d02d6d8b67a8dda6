"""The weight board: one-memcpy pickup, never a torn snapshot, versions only increase."""

from __future__ import annotations

import pytest
import torch
from helpers import drain, join_all, requires_cuda
from torch import nn

from mp_rl.shm.board import WeightBoard, flatten_parameters
from mp_rl.testing import GROWN, following_reader_proc, growing_publisher_proc, publisher_proc, reader_proc

NUMEL = 1_700_000  # the Nature CNN's parameter count


@pytest.fixture
def board(shm_name):
    b = WeightBoard.create(shm_name("board"), NUMEL)
    yield b
    b.destroy()


def test_flat_parameters_are_views_so_one_copy_updates_the_module():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    before = net(torch.ones(1, 4))
    flat = flatten_parameters(net)
    assert torch.equal(net(torch.ones(1, 4)), before)  # re-homing kept the values
    flat.zero_()
    assert all(float(p.detach().abs().sum()) == 0 for p in net.parameters())


def test_publish_then_read_into_a_module(shm_name):
    src, dst = nn.Linear(16, 4), nn.Linear(16, 4)
    board = WeightBoard.create(shm_name("board"), sum(p.numel() for p in src.parameters()))
    try:
        src_flat, dst_flat = flatten_parameters(src), flatten_parameters(dst)
        assert board.read_into(dst_flat) == 0  # nothing published yet: keep what we have
        v = board.publish(src_flat)
        assert board.read_into(dst_flat) == v == 1
        x = torch.randn(3, 16)
        assert torch.equal(src(x), dst(x))
        assert board.read_into(dst_flat, have=v) == v  # nothing newer: no copy
    finally:
        board.destroy()


def test_readers_never_see_a_torn_or_older_snapshot_under_a_full_speed_publisher(board, spawn):
    q = spawn.Queue()
    entry = board.describe()
    procs = [spawn.Process(target=publisher_proc, args=(entry, NUMEL, 3.0, q), name="publisher")]
    procs += [spawn.Process(target=reader_proc, args=(entry, NUMEL, 3.0, q), name=f"reader-{i}") for i in range(2)]
    for p in procs:
        p.start()
    results = {}
    for _ in range(3):
        key, value = drain(q, 1, 60, procs).popitem()
        results.setdefault(key, []).append(value)
    join_all(procs, 30)
    assert results["publisher"][0] > 10
    for reads, torn, regressions, _retries in results["reader"]:
        assert reads > 10 and torn == 0 and regressions == 0


def test_readers_following_a_growing_network_never_hold_a_mix_of_layouts(shm_name, spawn):
    """A publisher switches between two layouts every third version at full speed; four readers rebuild
    for the new layout when theirs is refused. No version is ever held in another layout than its own."""
    board = WeightBoard.create(shm_name("board"), max(GROWN))
    try:
        q, entry = spawn.Queue(), board.describe()
        procs = [spawn.Process(target=growing_publisher_proc, args=(entry, max(GROWN), 2.0, q), name="publisher")]
        procs += [spawn.Process(target=following_reader_proc, args=(entry, max(GROWN), 2.0, q), name=f"reader-{i}")
                  for i in range(4)]  # fmt: skip
        for p in procs:
            p.start()
        results: dict[str, list] = {}
        for _ in range(5):
            key, value = drain(q, 1, 60, procs).popitem()
            results.setdefault(key, []).append(value)
        join_all(procs, 30)
    finally:
        board.destroy()
    assert results["publisher"][0] > 30
    for reads, wrong, rebuilds in results["reader"]:
        assert reads > 10 and rebuilds > 2 and wrong == 0, (reads, wrong, rebuilds)


def test_a_reader_of_another_layout_gets_nothing_until_it_rebuilds(shm_name):
    board = WeightBoard.create(shm_name("board"), 100)
    try:
        board.publish(torch.full((40,), 7.0), shape=(2,))
        small = torch.zeros(40)
        assert board.read_into(small, shape=(1,)) == 0 and small.abs().sum() == 0  # not its layout: untouched
        assert board.latest_shape() == (40, 2)
        assert board.read_into(small, shape=(2,)) == 1 and float(small.min()) == 7.0
        with pytest.raises(ValueError, match="do not fit"):
            board.publish(torch.zeros(101))
    finally:
        board.destroy()


def test_a_reader_racing_a_publisher_retries_rather_than_keeping_a_torn_copy(board):
    flat = torch.empty(NUMEL)
    board.publish(torch.full((NUMEL,), 1.0))
    # Publisher two versions ahead mid-copy: version 3 goes to slot 1, its mark odd while writing.
    board.publish(torch.full((NUMEL,), 2.0))
    board._marks[8] = 2 * 3 - 1  # as if version 3 were being written into slot 1
    board._words[0] = 3
    with pytest.raises(TimeoutError):
        board.read_into(flat, timeout=0.05)
    assert board.retries > 0


@requires_cuda
def test_cuda_publish_goes_through_pinned_host_slots(board):
    assert board.pin()
    flat = torch.arange(NUMEL, dtype=torch.float32, device="cuda")
    v = board.publish(flat)
    out = torch.empty(NUMEL)
    assert board.read_into(out) == v
    assert torch.equal(out, flat.cpu())
    board.unpin()
