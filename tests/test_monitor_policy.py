"""The monitor's decisions against hand-made snapshots: rules, bounds, cooldown, hysteresis, undo."""

from __future__ import annotations

import pytest

from mp_rl.monitor.policy import Knob, Policy

ROW = 64


def knobs(actors_auto=True, batch_auto=True, capacity_auto=True, actors=2, batch=64, capacity=100_000) -> dict:
    return {
        "actors": Knob("actors", actors, actors_auto, 1, 8, step=1, min_step=1),
        "batch_size": Knob("batch_size", batch, batch_auto, 8, 2048, step=2.0, min_step=1.19),
        "capacity": Knob("capacity", capacity, capacity_auto, 10_000, 10_000_000, step=1, min_step=1),
    }


def window(**over) -> dict:
    """A balanced pipeline: nothing to do."""
    w = {"cpu_busy": 0.65, "ram_headroom": 0.35, "ram_available": 8 << 30, "learner_wait_frac": 0.05,
         "actor_blocked_frac": 0.05, "env_steps_per_s": 1000.0, "row_bytes": ROW, "gpu_util": None}  # fmt: skip
    return {**w, **over}


def moves(records: list[dict]) -> list[tuple]:
    return [(r["knob"], r["old"], r["new"]) for r in records if r["kind"] == "move"]


def policy(cooldown=30.0, settle=10.0, **kw) -> Policy:
    return Policy(knobs(**kw), cooldown_s=cooldown, settle_s=settle)


def test_a_balanced_pipeline_moves_nothing():
    assert moves(policy().decide(window(), now=100.0)) == []


@pytest.mark.parametrize(
    ("headroom", "capacity"),
    [(0.65, 200_000), (0.45, 120_000), (0.35, 100_000), (0.25, 90_000), (0.15, 70_000)],
)
def test_capacity_follows_the_ram_headroom_rules(headroom, capacity):
    p = policy()
    p.decide(window(ram_headroom=headroom), now=100.0)
    assert p.knobs["capacity"].value == capacity


def test_capacity_stays_within_its_bounds_and_says_so():
    p = policy(capacity=10_000_000)
    recs = p.decide(window(ram_headroom=0.9), now=100.0)
    assert moves(recs) == []
    assert any(r["kind"] == "declined" and "bound" in r["reason"] for r in recs)
    p = policy(capacity=10_500)
    p.decide(window(ram_headroom=0.1), now=100.0)
    assert p.knobs["capacity"].value == 10_000


def test_capacity_does_not_grow_past_what_available_memory_holds():
    p = policy(capacity=1_000_000)
    p.decide(window(ram_headroom=0.9, ram_available=100 * ROW * 1_000_000 // 100), now=100.0)  # extra > half of it
    assert p.knobs["capacity"].value == 1_000_000


def test_a_starved_learner_gets_more_actors_and_blocked_actors_a_larger_batch():
    p = policy()
    assert moves(p.decide(window(learner_wait_frac=0.5), now=100.0)) == [("actors", 2, 3)]
    p = policy()
    assert moves(p.decide(window(actor_blocked_frac=0.5), now=100.0)) == [("batch_size", 64, 128)]


def test_idle_cores_get_actors_and_a_saturated_cpu_loses_one():
    assert moves(policy().decide(window(cpu_busy=0.3), now=100.0)) == [("actors", 2, 3)]
    assert moves(policy().decide(window(cpu_busy=0.95), now=100.0)) == [("actors", 2, 1)]


def test_blocked_actors_with_the_batch_at_its_limit_lose_an_actor():
    p = policy(batch=2048)
    assert moves(p.decide(window(actor_blocked_frac=0.5), now=100.0)) == [("actors", 2, 1)]


def test_a_busy_gpu_or_full_vram_halves_the_batch():
    assert moves(policy().decide(window(gpu_util=0.95), now=100.0)) == [("batch_size", 64, 32)]
    vram = {"vram_used": 9.5, "vram_total": 10.0, "gpu_util": 0.5}
    assert moves(policy().decide(window(**vram), now=100.0)) == [("batch_size", 64, 32)]


def test_fixed_knobs_never_move():
    p = policy(actors_auto=False, batch_auto=False, capacity_auto=False)
    recs = p.decide(window(learner_wait_frac=0.9, actor_blocked_frac=0.0, ram_headroom=0.9), now=100.0)
    assert moves(recs) == []
    assert {r["knob"] for r in recs if r["reason"] == "fixed in the config"} == {"actors", "capacity"}


def test_cooldown_spaces_moves_and_declines_are_logged_once():
    p = policy(cooldown=30.0, settle=10.0)
    assert moves(p.decide(window(learner_wait_frac=0.5), now=100.0)) == [("actors", 2, 3)]
    first = p.decide(window(learner_wait_frac=0.5), now=105.0)
    assert moves(first) == [] and [r["reason"] for r in first if r["kind"] == "declined"] == ["cooldown"]
    assert p.decide(window(learner_wait_frac=0.5), now=106.0) == []  # the same refusal is not repeated
    later = p.decide(window(learner_wait_frac=0.5, env_steps_per_s=1500.0), now=131.0)
    assert moves(later) == [("actors", 3, 4)]


def test_ram_pressure_shrinks_the_replay_even_during_the_cooldown():
    p = policy(cooldown=30.0)
    p.decide(window(learner_wait_frac=0.5), now=100.0)
    assert moves(p.decide(window(ram_headroom=0.1), now=102.0)) == [("capacity", 100_000, 70_000)]


def test_hysteresis_keeps_a_value_on_a_threshold_from_flipping():
    p = policy(cooldown=0.0, settle=0.0)
    p.decide(window(ram_headroom=0.41), now=0.0)  # > 40 %: grew
    assert p.knobs["capacity"].value == 120_000
    history = []
    for i, head in enumerate([0.29, 0.31, 0.28, 0.305, 0.27, 0.29]):  # hovering around the 30 % line
        history += moves(p.decide(window(ram_headroom=head), now=1.0 + i))
    assert history == [], "within the hysteresis margin of a reversal nothing moves"
    assert moves(p.decide(window(ram_headroom=0.24), now=10.0)) == [("capacity", 120_000, 108_000)]


def test_a_move_that_made_things_worse_is_undone_and_not_retried_at_once():
    p = policy(cooldown=5.0, settle=5.0)
    assert moves(p.decide(window(cpu_busy=0.3, env_steps_per_s=1000.0), now=0.0)) == [("actors", 2, 3)]
    recs = p.decide(window(cpu_busy=0.3, env_steps_per_s=700.0), now=6.0)
    effect = next(r for r in recs if r["kind"] == "effect")
    assert effect["verdict"] == "worse: undone" and effect["change"] == pytest.approx(-0.3)
    assert moves(recs) == [("actors", 3, 2)]
    assert next(r for r in recs if r["kind"] == "move")["undo_of"] == 1
    retry = p.decide(window(cpu_busy=0.3, env_steps_per_s=700.0), now=12.0)
    assert moves(retry) == [] and any("undone recently" in r.get("reason", "") for r in retry)


def test_a_move_that_did_not_help_shrinks_the_step():
    p = policy(cooldown=5.0, settle=5.0)
    p.decide(window(actor_blocked_frac=0.5, env_steps_per_s=1000.0), now=0.0)
    recs = p.decide(window(actor_blocked_frac=0.5, env_steps_per_s=1005.0), now=6.0)
    assert next(r for r in recs if r["kind"] == "effect")["verdict"].startswith("did not help")
    assert p.knobs["batch_size"].step == pytest.approx(2**0.5)
    assert moves(recs) == [("batch_size", 128, 181)]  # the next move is the smaller step


def test_the_bottleneck_is_named_from_the_pipeline_first():
    p = policy()
    assert p.classify(window(learner_wait_frac=0.5, cpu_busy=0.95))["bottleneck"].startswith("actors")
    assert p.classify(window(actor_blocked_frac=0.5))["bottleneck"].startswith("learner")
    assert p.classify(window(cpu_busy=0.95))["bottleneck"] == "cpu"
    assert p.classify(window(ram_headroom=0.05))["bottleneck"] == "ram"
    levels = p.classify(window(cpu_busy=0.75))["levels"]
    assert levels["cpu"] == "potential" and levels["gpu"] is None


def test_memory_moves_keep_their_own_cooldown_beside_throughput_moves():
    p = policy(cooldown=30.0)
    both = moves(p.decide(window(ram_headroom=0.65, actor_blocked_frac=0.5), now=100.0))
    assert both == [("capacity", 100_000, 200_000), ("batch_size", 64, 128)]
    assert moves(p.decide(window(ram_headroom=0.65, actor_blocked_frac=0.5), now=110.0)) == []  # both cooling down


def width_policy(actors=8, auto=True) -> Policy:
    k = knobs(actors=actors)
    k["width"] = Knob("width", 100, auto, 25, 800, step=2.0, min_step=2.0)
    return Policy(k, cooldown_s=30.0, settle_s=10.0)


def test_a_starved_learner_that_more_actors_cannot_feed_gets_a_wider_network():
    p = width_policy(actors=8)  # the actors are at their bound
    recs = p.decide(window(learner_wait_frac=0.5), now=100.0)
    assert ("width", 100, 200) in moves(recs)
    rec = next(r for r in recs if r["kind"] == "move" and r["knob"] == "width")
    assert "wider network" in rec["rule"]


def test_more_actors_come_first_when_they_can_feed_the_learner():
    p = width_policy(actors=2)
    assert moves(p.decide(window(learner_wait_frac=0.5), now=100.0)) == [("actors", 2, 3)]


def test_memory_pressure_narrows_the_network_and_a_worse_growth_is_undone():
    p = width_policy()
    assert ("width", 100, 50) in moves(p.decide(window(ram_headroom=0.1), now=100.0))
    p = width_policy()
    p.decide(window(learner_wait_frac=0.5), now=100.0)
    recs = p.decide(window(learner_wait_frac=0.5, env_steps_per_s=500.0), now=111.0)  # settled: half the rate
    assert ("width", 200, 100) in moves(recs) and any(r.get("verdict") == "worse: undone" for r in recs)


def test_a_network_fixed_in_the_config_never_grows():
    p = width_policy(auto=False)
    recs = p.decide(window(learner_wait_frac=0.5), now=100.0)
    assert all(r["knob"] != "width" for r in recs if r["kind"] == "move")
    assert any(r["kind"] == "declined" and r["knob"] == "width" and "fixed" in r["reason"] for r in recs)


def floor_policy(floor=400) -> Policy:
    k = knobs(actors=8, actors_auto=False, batch_auto=False, capacity_auto=False)  # only the width may move
    k["width"] = Knob("width", 100, True, 100, 1600, step=2.0, min_step=2.0, floor=floor)
    return Policy(k, cooldown_s=10.0, settle_s=10.0)


def learning(ret: float, n: int = 20, **over) -> dict:
    """A learner-bound pipeline (actors held back) whose window saw `n` episodes of median `ret`."""
    return window(**{"actor_blocked_frac": 0.5, "ram_headroom": 0.5, "return_median": ret, "return_count": n, **over})


def test_a_network_below_its_kinds_shipped_size_widens_even_while_the_learner_is_the_bottleneck():
    p = floor_policy()
    recs = p.decide(learning(20.0), now=100.0)
    assert ("width", 100, 200) in moves(recs)
    assert "under the size its kind ships with (400 %)" in next(r["rule"] for r in recs if r["knob"] == "width")
    # Its throughput cost is expected: judged by learning, kept, and the next step follows at once.
    recs = p.decide(learning(30.0, env_steps_per_s=700.0), now=111.0)
    effect = next(r for r in recs if r["kind"] == "effect" and r["knob"] == "width")
    assert effect["verdict"].startswith("kept (toward its kind's shipped size") and effect["change"] == -0.3
    assert (effect["return_before"], effect["return_after"]) == (20.0, 30.0)
    assert ("width", 200, 400) in moves(recs)
    p.decide(learning(40.0, env_steps_per_s=600.0), now=122.0)  # judged and kept
    assert moves(p.decide(learning(40.0), now=140.0)) == []  # at its floor, the learner busy: it stays


def test_a_resize_that_learning_suffers_from_is_undone_and_not_retried_at_once():
    p = floor_policy()
    p.decide(learning(100.0), now=100.0)
    recs = p.decide(learning(40.0), now=111.0)  # the median return fell by 60 %
    effect = next(r for r in recs if r["kind"] == "effect")
    assert effect["verdict"] == "worse: undone" and ("width", 200, 100) in moves(recs)
    assert "median return 100 -> 40" in next(r["rule"] for r in recs if r["kind"] == "move")
    later = p.decide(learning(40.0), now=125.0)
    assert not moves(later) and any(r.get("reason") == "a move this way was undone recently" for r in later)


def test_a_return_is_compared_only_over_enough_episodes():
    p = floor_policy()
    p.decide(learning(100.0, n=3), now=100.0)  # too few episodes before: learning cannot be judged
    recs = p.decide(learning(10.0), now=111.0)
    assert next(r for r in recs if r["kind"] == "effect")["verdict"].startswith("kept")


def test_no_widening_toward_the_floor_while_memory_is_short():
    p = floor_policy()
    assert not [m for m in moves(p.decide(learning(20.0, ram_headroom=0.25), now=100.0)) if m[0] == "width"]
