"""Prioritized replay: the sum tree's arithmetic, the sampling distribution against fixed priorities,
void priorities of overwritten rows, beta annealing, and the learner's weighted loss and updates."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mp_rl.agent.priorities import Priorities, SumTree
from mp_rl.shm.ring import ReplayRing
from mp_rl.shm.sync import RateLimit
from mp_rl.testing import checked_spec, make_rows

OPEN = RateLimit(None, 1, 0, 64, 256)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 300),
    # A priority is 0 (a dead row) or (|TD| + eps) ** alpha: never a subnormal float, whose cumulative
    # sums cannot tell leaves apart.
    ops=st.lists(st.tuples(st.integers(0, 299), st.just(0.0) | st.floats(1e-6, 100)), min_size=1, max_size=60),
)
def test_the_tree_holds_the_sums_and_finds_the_leaf_under_any_mass(size, ops):
    tree, leaves = SumTree(size), np.zeros(size)
    for slot, value in ops:
        slot %= size
        tree.set(np.array([slot]), np.array([value]))
        leaves[slot] = value
    internal = np.arange(1, tree.leaves)
    assert np.allclose(tree.tree[internal], tree.tree[2 * internal] + tree.tree[2 * internal + 1])
    assert tree.total == pytest.approx(leaves.sum())
    if leaves.sum() > 0:
        edges = np.cumsum(leaves)
        mass = np.linspace(0, leaves.sum(), 50, endpoint=False)
        found = tree.find(mass)
        assert (leaves[found] > 0).all()
        assert np.all((edges[found] - leaves[found] <= mass + 1e-9) & (mass < edges[found] + 1e-9))


@pytest.fixture
def ring(shm_name):
    r = ReplayRing.create(shm_name("ring"), checked_spec(1024), OPEN)
    w = r.writer(1)
    for b in range(1024 // 64):
        w.write(make_rows(0, 64 * b, 64))
    yield r
    r.destroy()


def test_draws_follow_the_priorities(ring):
    pr = Priorities(ring, alpha=1.0, beta0=0.4, beta_steps=100, eps=1e-6)
    sampler = ring.sampler(256, seed=3, priorities=pr)
    sampler.sample(8, timeout=1.0)  # registers every stamped row at the maximum priority
    rng = np.random.default_rng(0)
    p = rng.choice([0.0, 1.0, 2.0, 8.0], size=1024, p=[0.25, 0.25, 0.25, 0.25])
    pr.update(np.arange(1024), p - 1e-6)  # |td| + eps = p
    counts = np.zeros(1024)
    for _ in range(400):
        batch = sampler.sample(256, timeout=1.0)
        np.add.at(counts, batch["seq"].numpy(), 1)
    expected = p / p.sum() * counts.sum()
    assert counts[p < 1e-3].sum() == 0  # a zero priority is never drawn
    live = expected > 0
    chi2 = float((((counts - expected) ** 2)[live] / expected[live]).sum())
    dof = int(live.sum()) - 1
    assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)  # about 4 standard deviations of chi2(dof)


def test_an_overwritten_slot_is_never_drawn_with_the_old_rows_priority(ring):
    pr = Priorities(ring, alpha=1.0, beta0=1.0, beta_steps=1, eps=1e-6)
    sampler = ring.sampler(64, seed=1, priorities=pr)
    sampler.sample(8, timeout=1.0)
    pr.update(np.arange(1024), np.where(np.arange(1024) == 5, 1e6, 0.0))  # seq 5: almost all the mass
    ring.writer(1).write(make_rows(1, 0, 64))  # laps slots 0..63: seq 5's slot now holds seq 1029
    batch = sampler.sample(64, timeout=1.0)
    seqs = batch["seq"].numpy()
    assert 5 not in seqs
    assert (ring.stamps[seqs % 1024] == seqs + 1).all()  # every row drawn is the row its seq names
    assert pr.seqs[5] == 1029  # the leaf now belongs to the new row (entered at the running maximum)


def test_beta_anneals_linearly_to_one_and_weights_are_at_most_one(ring):
    pr = Priorities(ring, alpha=0.6, beta0=0.4, beta_steps=10, eps=1e-6)
    sampler = ring.sampler(64, seed=2, priorities=pr)
    sampler.sample(64, timeout=1.0)
    seen = []
    for i in range(12):
        seen.append(pr.beta())
        pr.update(np.arange(64), np.linspace(0.1, 5, 64) * (i + 1))
    assert seen[0] == pytest.approx(0.4) and seen[5] == pytest.approx(0.7) and seen[-1] == 1.0
    w = sampler.sample(64, timeout=1.0)["weight"].numpy()
    assert w.max() == pytest.approx(1.0) and (w > 0).all() and (w <= 1.0).all()


def test_the_learner_weights_its_loss_and_updates_priorities(tmp_path, shm_name):
    from mp_rl.agent.learner import Learner
    from mp_rl.config import load_config
    from mp_rl.shm.manifest import SharedRun
    from mp_rl.start.preflight import plan

    cfg = load_config("configs/smoke.yaml", ["replay.prioritized=true", "replay.min_fill=64", "learner.prefetch=false",
                                             "replay.samples_per_insert=null",
                                             "learner.batch_size=32"])  # fmt: skip
    p = plan(cfg)
    shared = SharedRun.create(tmp_path, shm_name("x").split(".")[1], p.ring, p.limit, p.numel, 4)
    try:
        learner = Learner(cfg, shared, p.spec, p.knobs.batch_size)
        block = shared.ring.spec.block
        rows = make_rows(0, 0, block)
        rows["action"] = rows["action"] % 2
        for _ in range(256 // block):
            shared.ring.writer(1).write(rows)
        assert learner.step(timeout=2.0)
        before = learner.priorities.tree.total
        for _ in range(20):
            assert learner.step(timeout=2.0)
        assert learner.priorities.updates == 21 and learner.priorities.tree.total != before
        batch = learner.next_batch(timeout=1.0)
        loss, td = learner.loss(batch)
        plain = torch.nn.functional.smooth_l1_loss(
            batch["reward"] + 0 * td, batch["reward"] + td, reduction="none"
        )  # the same per-row Huber of the TD error
        assert loss.item() == pytest.approx((plain * batch["weight"]).mean().item(), rel=1e-4)
        learner.close()
    finally:
        shared.close()


def _in_window(ring, seqs: np.ndarray) -> bool:
    lo, hi = ring.window()
    return bool(((seqs >= lo) & (seqs < hi)).all())


def test_a_shrunk_window_is_never_sampled_outside_and_live_rows_keep_their_weight(shm_name):
    """Capacity 4096 -> 128: every row of the batch is in the new window, weighted as a live row."""
    ring = ReplayRing.create(shm_name("ring"), checked_spec(4096), OPEN)
    try:
        w = ring.writer(1)
        for b in range(4096 // 64):
            w.write(make_rows(0, 64 * b, 64))
        pr = Priorities(ring, alpha=0.6, beta0=0.4, beta_steps=100, eps=1e-6)
        sampler = ring.sampler(64, seed=0, priorities=pr)
        sampler.sample(64, timeout=1.0)
        pr.update(np.arange(4096), np.random.default_rng(0).uniform(0.5, 2.0, 4096))
        ring.capacity = 128
        batch = sampler.sample(64, timeout=1.0)
        seqs, weight = batch["seq"].numpy(), batch["weight"].numpy()
        assert _in_window(ring, seqs), f"{int((seqs < ring.window()[0]).sum())} of 64 rows outside the window"
        assert weight.min() > 0.1, weight.min()  # priorities within 4x of each other: no weight near 0
    finally:
        ring.destroy()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["write", "capacity", "sample"]), st.integers(1, 40)), max_size=40))
def test_prioritized_draws_stay_inside_the_window_as_it_moves(shm_name, ops):
    """Steady writing with capacity < capacity_max, shrinks and growths, priorities moving: every
    batch lies in [cursor - capacity, cursor) at the moment it is drawn."""
    ring = ReplayRing.create(shm_name("ring"), checked_spec(2048), OPEN, capacity=512)
    try:
        w, k, rng = ring.writer(1), 0, np.random.default_rng(1)
        pr = Priorities(ring, alpha=0.6, beta0=0.4, beta_steps=100, eps=1e-6)
        sampler = ring.sampler(64, seed=1, priorities=pr)
        for _ in range(8):
            w.write(make_rows(0, k, 64))
            k += 64
        for op, n in ops:
            if op == "write":
                for _ in range(n % 5):
                    w.write(make_rows(0, k, 64))
                    k += 64
            elif op == "capacity":
                ring.capacity = 64 * n
            else:
                batch = sampler.sample(16 + n, timeout=1.0)
                seqs = batch["seq"].numpy()
                assert _in_window(ring, seqs), (ring.window(), sorted(seqs)[:5])
                assert (ring.stamps[seqs % 2048] == seqs + 1).all()
                pr.update(seqs, rng.uniform(0, 3, len(seqs)))
    finally:
        ring.destroy()


def test_importance_weights_match_a_hand_computed_case(shm_name):
    """128 live rows, half at priority 1 and half at 3 (alpha 1, beta 1): P = 1/256 and 3/256, N*P =
    0.5 and 1.5, so (N*P)^-1 = 2 and 2/3, normalised by the largest: 1 and 1/3."""
    ring = ReplayRing.create(shm_name("ring"), checked_spec(1024), OPEN, capacity=128)
    try:
        w = ring.writer(1)
        for b in range(4):  # seqs 0..255; the window is the last 128
            w.write(make_rows(0, 64 * b, 64))
        pr = Priorities(ring, alpha=1.0, beta0=1.0, beta_steps=1, eps=0.0)
        sampler = ring.sampler(64, seed=4, priorities=pr)
        sampler.sample(8, timeout=1.0)
        live = np.arange(128, 256)
        pr.update(live, np.where(live % 2 == 0, 1.0, 3.0))
        for _ in range(10):
            batch = sampler.sample(64, timeout=1.0)
            seqs, weight = batch["seq"].numpy(), batch["weight"].numpy()
            assert _in_window(ring, seqs)
            want = np.where(seqs % 2 == 0, 2.0, 2.0 / 3.0)
            assert weight == pytest.approx(want / want.max())
    finally:
        ring.destroy()


@pytest.mark.parametrize("prefetch", ["false", "true"])  # with the thread: nothing drawn before the restore
def test_a_restored_replays_priorities_are_recomputed_from_td_errors(tmp_path, shm_name, prefetch):
    """On resume the learner prioritizes the rows already in the ring by their TD errors under the
    restored networks (not all at the maximum), and beta goes on from the restored update count."""
    from mp_rl.agent.learner import Learner
    from mp_rl.config import load_config
    from mp_rl.shm.manifest import SharedRun
    from mp_rl.start.preflight import plan

    over = [
        "replay.prioritized=true",
        "replay.min_fill=64",
        "replay.samples_per_insert=null",
        f"learner.prefetch={prefetch}",
    ]
    cfg = load_config("configs/smoke.yaml", over)
    p = plan(cfg)
    shared = SharedRun.create(tmp_path, shm_name("x").split(".")[1], p.ring, p.limit, p.numel, 4)
    try:
        block = shared.ring.spec.block
        for b in range(512 // block):
            rows = make_rows(0, b * block, block)
            rows["action"] = rows["action"] % 2
            shared.ring.writer(1).write(rows)
        trained = Learner(cfg, shared, p.spec, p.knobs.batch_size)
        state = {**trained.state(), "counters": {"updates": 5000}}
        trained.close()
        learner = Learner(cfg, shared, p.spec, p.knobs.batch_size)
        learner.restore(state)
        time.sleep(0.3)  # a prefetch thread started at construction would have drawn by now
        assert learner.priorities.updates == 5000
        leaves = learner.priorities.tree.get(np.arange(512))
        assert (leaves > 0).all() and len(np.unique(leaves)) > 100  # each row its own, not one maximum
        assert learner.priorities.beta() == pytest.approx(min(1.0, 0.4 + 0.6 * 5000 / cfg.replay.beta_steps))
        learner.close()
    finally:
        shared.close()
