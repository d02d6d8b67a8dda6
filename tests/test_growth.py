"""Growth carries the learned function over exactly; a shrink keeps the strongest units and says what
it changed; Adam's moments follow the weights."""

from __future__ import annotations

import pytest
import torch

from mp_rl.agent import growth
from mp_rl.agent.models import build_q_network, q_values

# (observation, small network, grown network): MLPs, MinAtar's small CNN, the Nature CNN; plain,
# dueling and quantile (QR-DQN) heads; IQN's networks, whose fraction embedding grows with the
# features it gates.
CASES = {
    "mlp": ((6,), dict(hidden=(16, 16)), dict(hidden=(48, 32))),
    "mlp, dueling quantiles": ((6,), dict(hidden=(16,), dueling=True, quantiles=5), dict(hidden=(40,))),
    "small cnn, dueling": ((10, 10, 4), dict(cnn_scale=0.25, dueling=True), dict(cnn_scale=1.0)),
    "nature cnn, quantiles": ((4, 44, 44), dict(cnn_scale=0.25, quantiles=3), dict(cnn_scale=0.5)),
    "iqn mlp, dueling": ((6,), dict(hidden=(16, 16), dueling=True, implicit=True), dict(hidden=(48, 32))),
    "iqn mlp, one layer": ((6,), dict(hidden=(16,), implicit=True), dict(hidden=(64,))),
    "iqn small cnn": ((10, 10, 4), dict(cnn_scale=0.25, implicit=True), dict(cnn_scale=1.0)),
    "iqn small cnn, merged after the convolution": (
        (10, 10, 4),
        dict(cnn_scale=0.25, implicit=True, merge="hidden", dueling=True),
        dict(cnn_scale=1.0),
    ),
    "iqn mlp, merged at the last hidden layer": (
        (6,),
        dict(hidden=(16, 16), implicit=True, merge="hidden"),
        dict(hidden=(48, 32)),
    ),
}


def net(obs, small: dict, **wider) -> torch.nn.Module:
    kw = {"hidden": (), "dueling": False, "quantiles": 0, "cnn_scale": 1.0, "implicit": False, "merge": "head",
          **small, **wider}  # fmt: skip
    return build_q_network(obs, 4, kw["hidden"], kw["dueling"], scale=1.0, quantiles=kw["quantiles"],
                           cnn_scale=kw["cnn_scale"], implicit=kw["implicit"], merge=kw["merge"])  # fmt: skip


def trained(obs, small: dict) -> tuple[torch.nn.Module, torch.optim.Adam]:
    """A small network after a few Adam steps (biases and moments away from their initial values)."""
    torch.manual_seed(0)
    old = net(obs, small)
    opt = torch.optim.Adam(old.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        q_values(old(torch.rand(8, *obs))).pow(2).mean().backward()
        opt.step()
    return old, opt


@pytest.mark.parametrize("case", list(CASES))
def test_growth_preserves_every_q_value(case):
    obs, small, wide = CASES[case]
    old, _ = trained(obs, small)
    new = net(obs, small, **wide)
    assert sum(p.numel() for p in new.parameters()) > sum(p.numel() for p in old.parameters())
    growth.transfer(old, new)
    x = torch.rand(32, *obs) * 2
    assert growth.q_change(old, new, x) < 1e-5
    assert torch.allclose(old(x), new(x), atol=1e-5)
    if small.get("implicit"):  # at any fractions, not only the acting ones
        taus = torch.rand(32, 9)
        assert torch.allclose(old(x, taus), new(x, taus), atol=1e-5)


def test_new_units_have_fresh_inputs_and_zero_outputs_and_then_learn():
    obs, small, wide = CASES["mlp"]
    old, _ = trained(obs, small)
    new = net(obs, small, **wide)
    growth.transfer(old, new)
    first, second = new[1][1], new[1][3]  # Linear(6, 48), Linear(48, 32)
    assert first.weight[16:].abs().sum() > 0, "new units read the input through fresh weights"
    assert second.weight[:16, 16:].abs().sum() == 0, "kept units read nothing from new ones"
    head = new[1][-1]
    assert head.weight[:, 16:].abs().sum() == 0
    q_values(new(torch.rand(8, *obs))).pow(2).mean().backward()
    assert head.weight.grad[:, 16:].abs().sum() > 0, "the new units' outgoing weights get gradients"


@pytest.mark.parametrize("case", list(CASES))
def test_shrinking_back_after_growth_removes_only_the_new_units(case):
    obs, small, wide = CASES[case]
    old, _ = trained(obs, small)
    grown = net(obs, small, **wide)
    growth.transfer(old, grown)
    back = net(obs, small)
    growth.transfer(grown, back)
    x = torch.rand(16, *obs)
    assert growth.q_change(old, back, x) < 1e-5  # the new units contributed nothing, so they go
    assert all(torch.equal(a, b) for a, b in zip(old.parameters(), back.parameters(), strict=True))


def test_a_real_shrink_keeps_the_strongest_units_and_reports_its_change():
    obs, small, _ = CASES["mlp"]
    old, _ = trained(obs, small)
    with torch.no_grad():
        old[1][3].weight[:, 5] *= 100  # unit 5 of the first layer matters most to the second
    narrow = net(obs, small, hidden=(4, 16))
    layers = growth.transfer(old, narrow)
    assert 5 in layers[0].keep_out.tolist() and len(layers[0].keep_out) == 4
    assert growth.q_change(old, narrow, torch.rand(16, *obs)) > 0


def test_adam_moments_follow_the_weights_and_new_ones_start_at_zero():
    obs, small, wide = CASES["small cnn, dueling"]
    old, opt = trained(obs, small)
    new = net(obs, small, **wide)
    layers = growth.transfer(old, new)
    new_opt = torch.optim.Adam(new.parameters(), lr=1e-2)
    growth.transfer_adam(opt, new_opt, layers)
    conv_old, conv_new = layers[0].old.weight, layers[0].new.weight
    s_old, s_new = opt.state[conv_old], new_opt.state[conv_new]
    kept = len(layers[0].keep_out)
    assert torch.equal(s_new["exp_avg"][:kept], s_old["exp_avg"]) and s_new["exp_avg"][kept:].abs().sum() == 0
    assert torch.equal(s_new["exp_avg_sq"][:kept], s_old["exp_avg_sq"]) and float(s_new["step"]) == 3.0
    new_opt.zero_grad()
    q_values(new(torch.rand(8, *obs))).pow(2).mean().backward()
    new_opt.step()  # the moved state is usable as it is


def test_networks_of_another_depth_are_refused():
    with pytest.raises(ValueError, match="depth"):
        growth.plan(net((6,), {"hidden": (16,)}), net((6,), {"hidden": (16, 16)}))


def test_a_learner_grows_mid_training_and_its_actor_follows_without_a_restart(tmp_path, shm_name):
    """The learner widens its network between updates: Q-values unchanged, Adam's step kept, training
    goes on; its actor sees the new layout on the board, rebuilds, and then acts with the learner's
    exact network."""
    from mp_rl.agent.actor import Actor
    from mp_rl.agent.learner import Learner
    from mp_rl.config import load_config
    from mp_rl.shm.control import Kind
    from mp_rl.shm.manifest import SharedRun
    from mp_rl.start.preflight import plan
    from mp_rl.testing import make_rows

    cfg = load_config("configs/smoke.yaml", ["replay.samples_per_insert=null", "replay.min_fill=64"])
    p = plan(cfg)
    big = sum(x.numel() for x in net((4,), {"hidden": (128,)}).parameters())  # the board holds the grown one
    shared = SharedRun.create(tmp_path, shm_name("x").split(".")[1], p.ring, p.limit, big, 4)
    try:
        rows = make_rows(0, 0, shared.ring.spec.block)
        rows["action"] = rows["action"] % 2
        for _ in range(512 // shared.ring.spec.block):
            shared.ring.writer(1).write(rows)
        learner = Learner(cfg, shared, p.spec, p.knobs.batch_size)
        actor = Actor(cfg, shared, p.spec, shared.control.claim(Kind.ACTOR), index=0, count=1, seed=0)
        for _ in range(10):
            assert learner.step(timeout=2.0)
        learner.publish()
        actor.sync_weights()
        obs = torch.rand(64, 4)
        before = learner.online(obs).detach()
        step = float(next(iter(learner.optimizer.state.values()))["step"])
        learner.grow(hidden=(128,))
        assert learner.arch == (1000, 128) and torch.allclose(learner.online(obs), before, atol=1e-5)
        assert float(next(iter(learner.optimizer.state.values()))["step"]) == step
        for _ in range(10):
            assert learner.step(timeout=2.0)
        v = learner.publish()
        old_policy = actor.policy
        actor.sync_weights()
        assert actor.policy is not old_policy and actor.arch == (1000, 128) and actor.weights_version == v
        assert torch.equal(actor.policy(obs), learner.online(obs).detach())
        learner.close()
        actor.close()
    finally:
        shared.close()


def test_a_grown_learners_checkpoint_restores_at_its_grown_size(tmp_path, shm_name):
    """Saved after growth, restored by a learner built from the run's original config: it rebuilds at
    the recorded widths first, then loads; `evaluate` builds the same network from the checkpoint."""
    from mp_rl.agent import checkpoint
    from mp_rl.agent.learner import Learner
    from mp_rl.config import load_config
    from mp_rl.shm.manifest import SharedRun
    from mp_rl.start.preflight import plan

    cfg = load_config("configs/smoke.yaml")
    p = plan(cfg)
    big = sum(x.numel() for x in net((4,), {"hidden": (96,), "dueling": True}).parameters())
    shared = SharedRun.create(tmp_path, shm_name("x").split(".")[1], p.ring, p.limit, big, 4)
    try:
        grown = Learner(cfg, shared, p.spec, p.knobs.batch_size)
        grown.grow(hidden=(96,))
        grown.save(tmp_path / "grown.pt")
        obs = torch.rand(16, 4)
        want = grown.online(obs).detach()
        grown.close()
        fresh = Learner(cfg, shared, p.spec, p.knobs.batch_size)
        state = checkpoint.load(tmp_path / "grown.pt")
        fresh.restore(state)
        assert fresh.arch == (1000, 96) and torch.equal(fresh.online(obs).detach(), want)
        assert growth.saved_widths(cfg.learner, state).hidden == (96,)
        fresh.close()
    finally:
        shared.close()


def test_the_plan_spans_the_widths_growth_may_take_and_sizes_the_board_for_the_largest():
    from mp_rl.agent.models import q_network
    from mp_rl.config import load_config
    from mp_rl.knobs import Span
    from mp_rl.start.preflight import plan

    off = plan(load_config("configs/cartpole.yaml"))
    assert off.knobs.width == Span(100, 100, 100, False) and off.numel == off.budget.net.numel
    on = plan(load_config("configs/cartpole.yaml", ["learner.grow=auto"]))
    w = on.knobs.width
    assert w.auto and (w.start, w.lo) == (100, 25) and w.hi >= 800
    largest = q_network(on.spec, growth.at_width(on.cfg.learner, w.hi))
    assert on.numel == sum(x.numel() for x in largest.parameters()) == on.budget.board_numel > on.budget.net.numel
    assert any("learner.grow auto" in line for line in on.warnings)
    assert on.knobs.width_floor == 100  # the shipped network is already its kind's size
    # The plan's "at most" prices the learner, the actors and the evaluator at the largest network.
    from mp_rl.plan import report

    r = report(on)
    by = {x["name"]: x for x in r["max"]["components"]}
    start = {x["name"]: x for x in r["start"]["components"]}
    assert by["learner"]["ram"] > start["learner"]["ram"] and by["actor"]["ram"] > start["actor"]["ram"]


def test_a_too_small_network_has_a_floor_at_its_kinds_shipped_size():
    from mp_rl.config import load_config
    from mp_rl.knobs import Knobs
    from mp_rl.start.preflight import plan

    mlp = plan(load_config("configs/cartpole.yaml", ["learner.grow=auto", "learner.hidden=[16,16]"]))
    assert (mlp.knobs.width.lo, mlp.knobs.width_floor) == (100, 800)  # 16 units is the least a layer has
    assert growth.at_width(mlp.cfg.learner, 800).hidden == (128, 128)
    one = plan(load_config("configs/cartpole.yaml", ["learner.grow=auto", "learner.hidden=[32]"]))
    assert growth.at_width(one.cfg.learner, one.knobs.width_floor).hidden == (128,)  # as deep as it is
    assert Knobs.from_json(mlp.knobs.to_json()) == mlp.knobs
    with pytest.raises(ValueError, match="width_floor"):
        Knobs.from_json({**mlp.knobs.to_json(), "width_floor": "800"})


def test_the_learner_follows_the_width_target_and_says_what_it_changed(tmp_path, shm_name):
    import json

    from mp_rl.agent.learner import Learner
    from mp_rl.config import load_config
    from mp_rl.shm.manifest import SharedRun
    from mp_rl.start.preflight import plan
    from mp_rl.testing import make_rows

    cfg = load_config("configs/smoke.yaml", ["learner.grow=auto", "replay.samples_per_insert=null"])
    p = plan(cfg)
    shared = SharedRun.create(tmp_path, shm_name("x").split(".")[1], p.ring, p.limit, p.numel, 4)
    try:
        rows = make_rows(0, 0, shared.ring.spec.block)
        rows["action"] = rows["action"] % 2
        for _ in range(512 // shared.ring.spec.block):
            shared.ring.writer(1).write(rows)
        shared.control.set_target("width", 100)
        learner = Learner(cfg, shared, p.spec, p.knobs.batch_size)
        stats = tmp_path / "learner.jsonl"
        assert learner.follow_width(stats) is None  # the target has not moved
        shared.control.set_target("width", 400)
        assert learner.follow_width(stats) < 1e-5 and learner.arch == (4000, 128)  # cnn_scale moves too, unused here
        assert shared.board.latest_shape()[1:] == (4000, 128)  # published at once
        shared.control.set_target("width", 50)
        assert learner.follow_width(stats) > 0 and learner.arch == (500, 16)  # a shrink changes Q a little
        lines = [json.loads(x) for x in stats.read_text().splitlines()]
        assert [(x["width_was"], x["width"]) for x in lines] == [(100, 400), (400, 50)]
        assert learner.step(timeout=2.0)  # and training goes on
        learner.close()
    finally:
        shared.close()


def test_the_grow_tool_moves_a_live_runs_width_within_its_span(tmp_path, shm_name, capsys):
    import json

    from mp_rl.config import load_config
    from mp_rl.shm.manifest import SharedRun
    from mp_rl.start.preflight import plan
    from mp_rl.tools import grow

    p = plan(load_config("configs/smoke.yaml", ["learner.grow=auto"]))
    info = {"knobs": p.knobs.to_json()}
    shared = SharedRun.create(tmp_path, shm_name("x").split(".")[1], p.ring, p.limit, p.numel, 4, info=info)
    try:
        shared.control.set_target("width", 100)
        assert grow.main([str(tmp_path), "--wider"]) == 0 and shared.control.target("width") == 200
        assert grow.main([str(tmp_path), "--width", "5"]) == 2 and shared.control.target("width") == 200
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "outside this run's span 50.." in err[0]
        (record,) = [json.loads(x) for x in (tmp_path / "decisions.jsonl").read_text().splitlines()]
        assert (record["knob"], record["old"], record["new"]) == ("width", 100, 200)
    finally:
        shared.close()
    assert grow.main([str(tmp_path / "nowhere"), "--narrower"]) == 2
