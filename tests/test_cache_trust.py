"""The disk cache is trusted no further than it deserves: entries validated like the config, what is
applied clamped to the plan, and files that are not the user's own, or that others may write, ignored."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from mp_rl.config import load_config
from mp_rl.start import autotune, cache, footprint, sizing
from mp_rl.start.preflight import plan


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """The smoke plan, once: its footprint is measured in a child process and cached under `home`."""
    home = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(home))
        return home, plan(load_config("configs/smoke.yaml"))


@pytest.fixture
def smoke(planned, monkeypatch):
    """The plan and its tuner's cache key, with no tuner entry cached yet."""
    home, p = planned
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    for entry in home.rglob("autotune-*.json"):
        entry.unlink()
    return p, autotune.for_run(p, None, lambda: True).key


def _entry(p, **point) -> dict:
    start = dataclasses.asdict(autotune.for_run(p, None, lambda: True).best)
    return {"point": {**start, **point}, "rate": 5000.0}


@pytest.mark.parametrize(
    "bad",
    [{"capacity": -1}, {"actors": 0}, {"batch": "64"}, {"envs_per_actor": 2.5}],
    ids=["negative capacity", "no actors", "a string batch", "a fraction of an env"],
)
def test_an_autotune_entry_with_a_bad_point_is_ignored_with_one_line(smoke, bad, caplog):
    p, key = smoke
    cache.save("autotune", key, _entry(p, **bad))
    assert autotune.for_run(p, None, lambda: True).cached is None
    lines = [r.getMessage() for r in caplog.records if r.name == "mp_rl.cache"]
    assert len(lines) == 1 and "ignored" in lines[0] and f"autotune-{key}.json" in lines[0]


def test_an_entry_with_a_key_its_dataclass_does_not_take_is_ignored(smoke, tmp_path):
    p, key = smoke
    cache.save("autotune", key, _entry(p, threads=4))
    assert autotune.for_run(p, None, lambda: True).cached is None
    good = {"bare": 10 << 20, "server": 240 << 20, "imported": 160 << 20, "actor": 175 << 20, "learner": 260 << 20,
            "supervisor": 320 << 20}  # fmt: skip
    cache.save("footprint", "k", {**good, "gpu": 1})
    assert cache.load("footprint", "k", footprint.CachedBases) is None


def test_an_autotune_entry_with_a_string_rate_is_ignored(smoke):
    p, key = smoke
    cache.save("autotune", key, {**_entry(p), "rate": "5000"})
    assert autotune.for_run(p, None, lambda: True).cached is None


def test_a_cached_point_is_clamped_to_the_plans_bounds(smoke):
    """The smoke plan allows 1 actor and its search 2..8 envs: 70 actors and 4,096 envs are not applied."""
    p, key = smoke
    cache.save("autotune", key, _entry(p, actors=70, envs_per_actor=4096, batch=1 << 20))
    t = autotune.for_run(p, None, lambda: True)
    assert t.best.actors == max(t.space.actors) == 1
    assert t.best.envs_per_actor == max(t.space.envs) and t.best.batch == max(t.space.batch)
    assert t.best.capacity == p.knobs.capacity.start


def test_footprint_and_step_cost_entries_are_validated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    good = {"bare": 10 << 20, "server": 240 << 20, "imported": 160 << 20, "actor": 175 << 20, "learner": 260 << 20,
            "supervisor": 320 << 20}  # fmt: skip
    cache.save("footprint", "k", good)
    assert cache.load("footprint", "k", footprint.CachedBases) is not None
    cache.save("footprint", "k", {**good, "learner": -(1 << 40)})  # would switch preflight's memory check off
    assert cache.load("footprint", "k", footprint.CachedBases) is None
    cache.save("stepcost", "k", {"a": 1e-4, "b": 1e-12, "points": []})
    assert cache.load("stepcost", "k", sizing.CachedStepCost) is not None
    cache.save("stepcost", "k", {"a": "0", "b": -1.0, "points": []})
    assert cache.load("stepcost", "k", sizing.CachedStepCost) is None


def test_an_entry_others_may_write_or_another_user_owns_is_ignored(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = cache.save("stepcost", "k", {"a": 1e-4, "b": 1e-12, "points": []})
    assert cache.load("stepcost", "k", sizing.CachedStepCost) is not None
    os.chmod(path, 0o622)
    assert cache.load("stepcost", "k", sizing.CachedStepCost) is None
    os.chmod(path, 0o600)
    if os.getuid() == 0:  # only root can give a file away; CI runs as root
        os.chown(path, 12345, -1)
        assert cache.load("stepcost", "k", sizing.CachedStepCost) is None
    assert any("not this user's own" in r.getMessage() or "others" in r.getMessage() for r in caplog.records)
    assert json.loads(path.read_text())["a"] == 1e-4  # left in place for the user to look at
