"""`learner.policy_ema`: the run's policy is a moving average of the online weights. Checkpoints keep
it as `policy`, `evaluate` loads it and the learner publishes it at a stop, for the final evaluation;
until then the board carries the online weights, which actors explore with. A resume restores it,
and it grows with the network."""

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


def test_the_policy_is_the_moving_average_and_actors_get_the_online_weights_until_the_stop(setup):
    """Decay 0.9 per update, folded every 5 (at each publish): the average moves (1 - 0.9**5) of the way
    to the online weights each time, from the initial network's. The loop's publishes carry the
    online weights; `publish_policy` (at the stop) puts exactly the average on the board."""
    _, learner, shared = setup(0.9)
    want = learner.flat.detach().clone()
    assert torch.equal(learner.policy_flat, want)  # it starts at the online network
    for update in range(1, 21):
        assert learner.step(timeout=2.0)
        if update % 5 == 0:
            want += (1 - 0.9**5) * (learner.flat.detach() - want)
            assert torch.allclose(learner.policy_flat, want, atol=1e-6)
            assert torch.equal(_published(shared, want.numel()), learner.flat.detach())  # what actors act with
    assert not torch.allclose(want, learner.flat.detach(), atol=1e-4)
    for _ in range(3):  # 3 updates since the last fold: publish_policy folds them in first
        assert learner.step(timeout=2.0)
    want += (1 - 0.9**3) * (learner.flat.detach() - want)
    learner.publish_policy()
    assert torch.allclose(_published(shared, want.numel()), want, atol=1e-6)
    learner.close()


@pytest.mark.parametrize("cadence", [1, 5, 7])
def test_the_averages_horizon_is_counted_in_updates_whatever_the_cadence(cadence):
    """Online weights held at theta for 35 updates, folded every `cadence` of them: the average is
    theta0 + (1 - d**35) (theta - theta0), the same as folding every update."""
    from mp_rl.agent.averaging import PolicyAverage

    online = torch.nn.Linear(3, 2)
    start = torch.cat([p.detach().reshape(-1) for p in online.parameters()])
    average = PolicyAverage.started_at(online, 0.95)
    theta = torch.randn_like(start)
    for _ in range(35 // cadence):
        average.fold(theta, cadence)
    if 35 % cadence:
        average.fold(theta, 35 % cadence)
    torch.testing.assert_close(average.flat, start + (1 - 0.95**35) * (theta - start))


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
    first, avg_first = learner.online[-1][1], learner.average.net[-1][1]  # the hidden layer: 32 -> 160 units
    assert torch.equal(avg_first.weight[32:], first.weight[32:])  # the new units: the online network's own
    numel = sum(p.numel() for p in q_network(learner.spec, learner.cfg.learner).parameters())
    assert learner.policy_flat.numel() == numel
    for _ in range(10):
        assert learner.step(timeout=2.0)  # trains on, and averages, at the new size
    learner.publish_policy()
    assert learner.shared.board.latest_shape() == (numel, *learner.arch)
    assert torch.equal(_published(learner.shared, numel), learner.policy_flat)
    kept = learner.average.net[-1][1].weight.detach().clone()
    layers = learner.grow(hidden=(32,))  # shrinking keeps the online network's strongest units, in both
    assert torch.equal(learner.average.net[-1][1].weight, kept[layers[0].keep_out])
    learner.close()


def test_the_benchmarks_evaluation_plays_the_average_and_the_online_network_on_the_same_episodes(
    setup, tmp_path, capsys
):
    """`benchmarks.learning`'s evaluation of a run that kept an average: `final` is the average's,
    `final_online` the same checkpoint's online network's, on the same episodes; a run without an
    average has no `final_online`."""
    import argparse
    import json

    from benchmarks.learning import eval_mp_rl_main

    for decay in (0.99, 0.0):
        cfg, learner, _ = setup(decay)
        for _ in range(10):
            assert learner.step(timeout=2.0)
        folder = RunFolder(tmp_path / f"run{decay}")
        learner.save(folder.final)
        folder.config.write_text(dump_config(cfg))
        learner.close()
        args = argparse.Namespace(eval_mp_rl=str(folder.path), checkpoint="final", env="CartPole-v1", seed=0,
                                  max_steps=30)  # fmt: skip
        eval_mp_rl_main(args)
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert len(out["returns"]) == 20
        assert ("final_online" in out) == bool(decay)
        if decay:
            assert len(out["returns_online"]) == 20
