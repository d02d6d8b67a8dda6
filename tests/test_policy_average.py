"""`learner.policy_ema`: the policy is a moving average of the online weights. It is what the board
publishes (so what actors act with and evaluations play), what checkpoints keep as `policy` and what
`evaluate` loads; a resume restores it, and it grows with the network."""

from __future__ import annotations

import pytest
import torch

from mp_rl.agent import checkpoint
from mp_rl.config import dump_config, load_config
from mp_rl.runfolder import RunFolder
from mp_rl.shm.manifest import SharedRun
from mp_rl.start.preflight import plan
from mp_rl.testing import make_rows

OVERRIDES = ["replay.samples_per_insert=null", "replay.min_fill=64", "learner.publish_every=5"]


@pytest.fixture
def setup(tmp_path, shm_name):
    """(config for a given decay, plan, shared run) on the vector smoke config, its ring filled."""
    made = []

    def make(decay: float, board_numel: int | None = None):
        from mp_rl.agent.learner import Learner

        cfg = load_config("configs/smoke.yaml", [*OVERRIDES, f"learner.policy_ema={decay}"])
        p = plan(cfg)
        shared = SharedRun.create(tmp_path, shm_name(f"x{len(made)}").split(".")[1], p.ring, p.limit,
                                  board_numel or p.numel, 4)  # fmt: skip
        made.append(shared)
        rows = make_rows(0, 0, shared.ring.spec.block)
        rows["action"] = rows["action"] % 2
        for _ in range(512 // shared.ring.spec.block):
            shared.ring.writer(1).write(rows)
        return cfg, Learner(cfg, shared, p.spec, p.knobs.batch_size), shared

    yield make
    for shared in made:
        shared.close()


def _published(shared, numel: int) -> torch.Tensor:
    out = torch.empty(numel)
    shared.board.read_into(out)
    return out


def test_the_published_policy_is_the_moving_average_of_the_online_weights(setup):
    """Decay 0.9 per update, published every 5: at each publish the average moves (1 - 0.9**5) of the
    way to the online weights, from the initial network's; the board holds exactly that."""
    _, learner, shared = setup(0.9)
    want = learner.flat.detach().clone()
    assert torch.equal(learner.policy_flat, want)  # it starts at the online network
    for update in range(1, 21):
        assert learner.step(timeout=2.0)
        if update % 5 == 0:
            want += (1 - 0.9**5) * (learner.flat.detach() - want)
            got = _published(shared, want.numel())
            assert torch.allclose(got, want, atol=1e-6)
            assert not torch.allclose(got, learner.flat.detach(), atol=1e-4)  # not the online weights
    learner.close()


def test_without_an_average_the_online_weights_are_published(setup):
    _, learner, shared = setup(0.0)
    for _ in range(5):
        assert learner.step(timeout=2.0)
    assert learner.average is None and learner.policy is learner.online
    assert torch.equal(_published(shared, learner.flat.numel()), learner.flat.detach())
    learner.close()


def test_a_checkpoint_keeps_the_average_as_its_policy_and_a_resume_and_evaluate_load_it(setup, tmp_path):
    from mp_rl.evaluate import load_policy

    cfg, learner, _ = setup(0.99)
    for _ in range(20):
        assert learner.step(timeout=2.0)
    folder = RunFolder(tmp_path / "run")
    learner.save(folder.final)
    state = checkpoint.load(folder.final)
    assert "policy" in state and checkpoint.policy_weights(state) is state["policy"]
    obs = torch.rand(32, 4)
    policy_q, online_q = learner.average.net(obs).detach(), learner.online(obs).detach()
    assert not torch.allclose(policy_q, online_q, atol=1e-4)
    learner.close()

    _, fresh, _ = setup(0.99)
    fresh.restore(state)
    assert torch.equal(fresh.average.net(obs), policy_q) and torch.equal(fresh.online(obs).detach(), online_q)
    fresh.close()

    folder.config.write_text(dump_config(cfg))
    _, net = load_policy(folder.path, "final")
    assert torch.equal(net(obs).detach(), policy_q)  # the average plays, not the online network


def test_a_checkpoint_without_an_average_resumes_with_one_started_at_its_weights(setup, tmp_path):
    _, plain, _ = setup(0.0)
    for _ in range(5):
        assert plain.step(timeout=2.0)
    plain.save(tmp_path / "plain.pt")
    state = checkpoint.load(tmp_path / "plain.pt")
    assert "policy" not in state and checkpoint.policy_weights(state) is state["model"]
    plain.close()
    _, averaged, _ = setup(0.99)
    averaged.restore(state)
    assert torch.equal(averaged.policy_flat, averaged.flat)
    averaged.close()


def test_the_average_grows_with_the_network_and_keeps_its_q_values(setup):
    from mp_rl.agent.models import q_network

    _, learner, _ = setup(0.9, board_numel=10**6)  # the board holds the grown network
    for _ in range(10):
        assert learner.step(timeout=2.0)
    obs = torch.rand(64, 4)
    before = learner.average.net(obs).detach()
    learner.grow(hidden=(160,))
    assert torch.allclose(learner.average.net(obs), before, atol=1e-5)
    assert learner.average.net is not learner.online
    numel = sum(p.numel() for p in q_network(learner.spec, learner.cfg.learner).parameters())
    assert learner.policy_flat.numel() == numel
    for _ in range(10):
        assert learner.step(timeout=2.0)  # trains on, and averages, at the new size
    learner.publish()
    assert learner.shared.board.latest_shape() == (numel, *learner.arch)
    assert torch.equal(_published(learner.shared, numel), learner.policy_flat)
    learner.close()
