"""A network sized from the hardware: `learner.hidden: auto` and `learner.cnn_scale: auto`.

The learner must keep up with the data: the replay ratio asks for

    needed updates/s = actors x one actor's env steps/s x samples_per_insert / batch

and a training step on the learner's device costs about `a + b x MACs x batch` seconds (multiply-
accumulates a sample; timed here on two sizes, cached). So the largest network that keeps up has

    MACs a sample <= (1 / needed - a) / (b x batch)

Speed grows the network, it never shrinks it below the one the configs ship with (`REFERENCE`): a
learner that cannot keep up at that size is the bottleneck at every size, and a smaller network only
trades capacity for data (MinAtar Breakout, 180 s on 2 CPU cores: half the small CNN trained on 60 %
more env steps and ended at a median return of 14.3 against the shipped network's 17.9). Below the
reference only memory decides. Above it, the step's fixed cost (launches, Python, the optimizer's
loop) hides some compute for free: a learner that cannot keep up takes the size it hides.

The choice is the largest rung of a ladder under that bound that also fits RAM and VRAM (the budget):
for an MLP from one layer of 16 units through two equal layers of 16 .. 2048 to five of 2048 (the
seeds' bounds); for the CNNs a width multiplier from 0.25 to 4. The resolved widths go into the
run's config, which the run folder keeps, so resume and evaluate rebuild the same network.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from mp_rl.agent.envs import make_vector_env
from mp_rl.agent.envspec import EnvSpec
from mp_rl.agent.models import build_q_network, choose
from mp_rl.config import Config
from mp_rl.start import cache, footprint

MLP_LADDER = ((16,), *(((w, w)) for w in (16, 32, 64, 128, 256, 512, 1024, 2048)), (2048,) * 3, (2048,) * 4,
              (2048,) * 5)  # fmt: skip
CNN_LADDER = (0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
REFERENCE = {"mlp": (128, 128), "cnn": 1.0}  # what a fixed config ships with; what actors are timed with


@dataclass
class Sizing:
    """The choice and the figures behind it (the plan prints `reasons`)."""

    choice: tuple[int, ...] | float
    numel: int
    needed: float  # updates/s the replay ratio asks for
    predicted: float  # updates/s the chosen network should reach
    reasons: list[str] = field(default_factory=list)


def _net(spec: EnvSpec, cfg: Config, rung) -> torch.nn.Module:
    lc = cfg.learner
    mlp = choose(spec.obs_shape, lc.network) == "mlp"
    hidden = rung if mlp else REFERENCE["mlp"]
    scale = 1.0 if mlp else rung
    quantiles = lc.n_quantiles if lc.algo == "qr_dqn" else 0
    return build_q_network(spec.obs_shape, spec.n_actions, hidden, lc.dueling, lc.network, spec.obs_scale, quantiles,
                           scale, implicit=lc.algo == "iqn", spectral=lc.spectral_norm, merge=lc.iqn_merge)  # fmt: skip


def actor_rate(cfg: Config, spec: EnvSpec, seconds: float = 0.4) -> float:
    """Env steps/s of one actor's loop (its envs and a reference-size policy, one torch thread)."""
    env = make_vector_env(cfg.env, cfg.run.seed, cfg.env.envs_per_actor)
    rung = REFERENCE["mlp" if choose(spec.obs_shape, cfg.learner.network) == "mlp" else "cnn"]
    policy, threads = _net(spec, cfg, rung), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        obs, _ = env.reset(seed=cfg.run.seed)
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or steps < 4 * env.num_envs:
            with torch.inference_mode():
                actions = policy(torch.as_tensor(obs)).argmax(dim=1).numpy()
            obs, *_ = env.step(actions)
            steps += env.num_envs
        return steps / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
        env.close()


def step_seconds(net: torch.nn.Module, obs_shape, obs_dtype: str, batch: int, device: str, reps: int = 6) -> float:
    """One Double DQN training step's time: online forward and backward, two forwards on next obs, Adam."""
    net = net.to(device)
    target = copy.deepcopy(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=True)
    dtype = np.dtype(obs_dtype)
    make = (lambda: torch.randint(0, 2, (batch, *obs_shape), device=device).to(torch.uint8)) if dtype == np.uint8 \
        else (lambda: torch.randn((batch, *obs_shape), device=device))  # fmt: skip
    x, x2 = make(), make()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    for i in range(reps + 2):  # two warm-up steps
        sync()
        t0 = time.perf_counter()
        q = net(x)
        with torch.no_grad():
            nxt = net(x2).argmax(1, keepdim=True)
            y = target(x2).gather(1, nxt)
        loss = (q.gather(1, nxt) - y).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


class CachedStepCost(BaseModel):
    """A step-cost entry: a >= 0 and b > 0 seconds (the sizing rule divides by b)."""

    model_config = ConfigDict(strict=True, extra="allow")
    a: float = Field(ge=0)
    b: float = Field(gt=0)


def step_cost(cfg: Config, spec: EnvSpec, batch: int, device: str, threads: int) -> tuple[float, float]:
    """(a, b): a training step takes a + b x MACs x batch seconds here; two ladder rungs timed, cached."""
    ladder = MLP_LADDER if choose(spec.obs_shape, cfg.learner.network) == "mlp" else CNN_LADDER
    small, large = (ladder[3], ladder[6]) if ladder is MLP_LADDER else (ladder[2], ladder[6])
    lc = cfg.learner
    digest = cache.key("stepcost", cache.fingerprint(), cache.versions(), device, threads, batch,
                       dataclasses.asdict(spec), lc.network, lc.dueling, lc.algo, small, large)  # fmt: skip
    if (hit := cache.load("stepcost", digest, CachedStepCost)) is not None:
        return hit["a"], hit["b"]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        points = []
        for rung in (small, large):
            net = _net(spec, cfg, rung)
            macs = footprint.network(net, spec.obs_shape).macs
            points.append((macs * batch, step_seconds(net, spec.obs_shape, spec.obs_dtype, batch, device)))
    finally:
        torch.set_num_threads(before)
    (w1, t1), (w2, t2) = points
    b = max((t2 - t1) / max(w2 - w1, 1), 1e-15)
    a = max(t1 - b * w1, 0.0)
    cache.save("stepcost", digest, {"a": a, "b": b, "points": points})
    return a, b


def choose_size(cfg: Config, spec: EnvSpec, actors: int, batch: int, device: str, threads: int, fits) -> Sizing:
    """The largest rung that keeps up with the actors and `fits(net_cost)` (RAM and VRAM)."""
    mlp = choose(spec.obs_shape, cfg.learner.network) == "mlp"
    ladder = MLP_LADDER if mlp else CNN_LADDER
    what = "learner.hidden" if mlp else "learner.cnn_scale"
    spi = cfg.replay.samples_per_insert
    rate = actor_rate(cfg, spec)
    a, b = step_cost(cfg, spec, batch, device, threads)
    costs = [footprint.network(_net(spec, cfg, rung), spec.obs_shape) for rung in ladder]
    # Below `free` MACs a sample the step's fixed cost (launches, Python, the optimizer's loop) dominates:
    # a smaller network would not be much faster. Speed never takes the network below the reference.
    free = a / (b * batch)
    floor = footprint.network(_net(spec, cfg, REFERENCE["mlp" if mlp else "cnn"]), spec.obs_shape).macs
    if spi is None:
        needed, limit = 0.0, float("inf")
        why = "replay.samples_per_insert is off: no rate to keep up with, so the largest network that fits"
    else:
        needed = actors * rate * spi / batch
        keep_up = (1 / needed - a) / (b * batch)
        limit = max(keep_up, free, floor)
        why = (f"{actors} actor(s) x {rate:,.0f} env steps/s x {spi:g} samples per insert / batch {batch} = "
               f"{needed:,.0f} updates/s needed; keeping up allows {max(keep_up, 0):,.0f} MACs a sample")  # fmt: skip
    pick = 0
    for i, c in enumerate(costs):
        if c.macs <= limit and fits(c):
            pick = i
    chosen = costs[pick]
    predicted = 1 / (a + b * chosen.macs * batch)
    cost = (f"a training step on the {device} ({threads} thread(s)) takes {a * 1e3:.2f} ms + {b * 1e12:.2f} ps per "
            f"MAC and sample: its fixed cost dominates up to {free:,.0f} MACs a sample")  # fmt: skip
    if np.isfinite(limit):
        behind = "the size its fixed cost hides" if limit == free else "the shipped size, speed never shrinks it"
        rule = "keeps up" if limit == keep_up else f"cannot keep up at the shipped size: {behind}"
        cost += f"; limit {limit:,.0f} ({rule})"
    reasons = [why, cost, f"{what} auto: {ladder[pick]} ({chosen.numel:,} parameters, {chosen.macs:,} MACs a sample), "
                          f"about {predicted:,.0f} updates/s"]  # fmt: skip
    return Sizing(ladder[pick], chosen.numel, needed, predicted, reasons)


def resolve(cfg: Config, sizing: Sizing) -> Config:
    """The config with the chosen widths in place of 'auto' (what the run folder keeps)."""
    key = "hidden" if isinstance(sizing.choice, tuple) else "cnn_scale"
    update = {key: sizing.choice}
    if cfg.learner.hidden == "auto" and key != "hidden":
        update["hidden"] = REFERENCE["mlp"]
    if cfg.learner.cnn_scale == "auto" and key != "cnn_scale":
        update["cnn_scale"] = REFERENCE["cnn"]
    return cfg.model_copy(update={"learner": cfg.learner.model_copy(update=update)})
