"""A network sized from the hardware: the rule, its bounds, and a run folder that rebuilds what was chosen."""

from __future__ import annotations

import pytest

from mp_rl.agent.models import NetworkError, nature_cnn, q_network, small_cnn
from mp_rl.config import load_config
from mp_rl.start import sizing
from mp_rl.start.footprint import NetCost
from mp_rl.start.preflight import plan


def fake_costs(monkeypatch, rate: float, a: float, b: float) -> None:
    """An actor that steps `rate` env steps/s, a training step of a + b x MACs x batch seconds."""
    monkeypatch.setattr(sizing, "actor_rate", lambda cfg, spec: rate)
    monkeypatch.setattr(sizing, "step_cost", lambda cfg, spec, batch, device, threads: (a, b))


def size(cfg_overrides, actors=1, batch=64, fits=lambda c: True):
    cfg = load_config("configs/cartpole.yaml", ["learner.hidden=auto", *cfg_overrides])
    spec = plan(load_config("configs/cartpole.yaml")).spec
    return sizing.choose_size(cfg, spec, actors, batch, "cpu", 1, fits)


def test_a_fast_learner_gets_the_largest_network_that_keeps_up(monkeypatch):
    # 1,000 steps/s x 8 / 64 = 125 updates/s needed: 8 ms a step; 0.1 ms fixed + 1 ns a MAC and sample.
    fake_costs(monkeypatch, rate=1000, a=1e-4, b=1e-9)
    s = size([])
    limit = (1 / 125 - 1e-4) / (1e-9 * 64)  # about 123k MACs a sample
    assert s.choice == (256, 256)  # (512, 512) needs ~265k MACs
    assert s.needed == pytest.approx(125)
    assert "keeps up" in s.reasons[1] and f"{limit:,.0f}" in s.reasons[1]
    assert s.predicted >= s.needed


def test_a_learner_that_cannot_keep_up_takes_the_size_its_fixed_step_cost_hides(monkeypatch):
    fake_costs(monkeypatch, rate=1e6, a=1e-2, b=1e-9)  # needs 125k updates/s: hopeless
    s = size([])
    free = 1e-2 / (1e-9 * 64)  # 156k MACs: compute under the fixed cost
    assert s.choice == (256, 256)  # 67k MACs; (512, 512) has 265k
    assert "fixed cost hides" in s.reasons[1] and f"{free:,.0f}" in s.reasons[1]


def test_speed_never_shrinks_the_network_below_the_shipped_one(monkeypatch):
    # A learner that cannot keep up at the shipped size is the bottleneck at every size: a smaller
    # network would only trade capacity for data (half the Breakout CNN learned less on more data).
    fake_costs(monkeypatch, rate=1e6, a=1e-3, b=1e-9)  # its fixed cost hides only 15.6k MACs
    s = size([])
    assert s.choice == sizing.REFERENCE["mlp"]  # (128, 128): 17k MACs
    assert "shipped size" in s.reasons[1]


def test_the_choice_stays_within_the_seeds_bounds_and_what_fits(monkeypatch):
    fake_costs(monkeypatch, rate=1, a=1e-6, b=1e-15)  # everything keeps up
    assert size([]).choice == (2048,) * 5  # at most 5 x 2048
    fake_costs(monkeypatch, rate=1e9, a=1e-9, b=1e-3)  # nothing keeps up: the shipped size, unless memory says less
    assert size([], fits=lambda c: c.numel < 100).choice == (16,)  # at least one layer of 16
    fake_costs(monkeypatch, rate=1, a=1e-6, b=1e-15)
    small = size([], fits=lambda c: c.numel < 100_000)  # memory caps it below what speed allows
    assert small.choice == (256, 256)
    assert sizing.MLP_LADDER[0] == (16,) and sizing.MLP_LADDER[-1] == (2048,) * 5


def test_no_replay_ratio_means_the_largest_network_that_fits(monkeypatch):
    fake_costs(monkeypatch, rate=1000, a=1e-3, b=1e-9)
    s = size(["replay.samples_per_insert=null"], fits=lambda c: c.numel < 1_000_000)
    assert s.choice == (512, 512) and "off" in s.reasons[0]


def test_a_cnn_scale_multiplies_every_width():
    base, double = nature_cnn(4, 84, 84, 6, False), nature_cnn(4, 84, 84, 6, False, scale=2.0)
    assert [m.out_channels for m in double if hasattr(m, "out_channels")] == [64, 128, 128]
    assert sum(p.numel() for p in double.parameters()) > 3.5 * sum(p.numel() for p in base.parameters())
    assert [m.out_channels for m in small_cnn(4, 10, 10, 3, True, scale=0.5) if hasattr(m, "out_channels")] == [8]


def test_auto_is_resolved_by_the_plan_and_kept_by_the_run_folder(tmp_path, monkeypatch):
    from mp_rl.config import dump_config

    fake_costs(monkeypatch, rate=1000, a=1e-4, b=1e-9)
    p = plan(load_config("configs/smoke.yaml", ["learner.hidden=auto"]))
    assert isinstance(p.cfg.learner.hidden, tuple) and p.cfg.learner.cnn_scale == 1.0
    assert any("learner.hidden auto:" in w for w in p.warnings)
    assert p.numel == sum(x.numel() for x in q_network(p.spec, p.cfg.learner).parameters())
    (tmp_path / "config.yaml").write_text(dump_config(p.cfg))  # what a run folder keeps
    again = load_config(tmp_path / "config.yaml")
    assert again.learner.hidden == p.cfg.learner.hidden  # resume and evaluate build this network
    with pytest.raises(NetworkError, match="auto"):
        q_network(p.spec, load_config("configs/smoke.yaml", ["learner.hidden=auto"]).learner)


def test_the_step_cost_is_timed_once_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cfg = load_config("configs/smoke.yaml", ["learner.hidden=auto"])
    spec = plan(load_config("configs/smoke.yaml")).spec
    a, b = sizing.step_cost(cfg, spec, 32, "cpu", 1)
    assert a >= 0 and b > 0
    monkeypatch.setattr(sizing, "step_seconds", lambda *x, **k: pytest.fail("timed again despite the cache"))
    assert sizing.step_cost(cfg, spec, 32, "cpu", 1) == (a, b)


def test_the_cost_of_a_network_counts_its_multiply_accumulates():
    from torch import nn

    from mp_rl.start.footprint import network

    conv = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    cost = network(conv, (2, 6, 6))
    assert cost.macs == 3 * 4 * 4 * (2 * 3 * 3) + 48 * 5
    assert isinstance(cost, NetCost)
