"""The peers of `benchmarks.learning`: Stable-Baselines3's DQN and Tianshou's DQN, each trained for a
wall-clock budget in its own interpreter, and the one greedy evaluation every system is judged by.

Each trainer keeps a copy of its Q-network's weights every `snap_s` seconds (a state-dict copy, not
an evaluation, so the peer's training is not slowed) and evaluates them after the budget: the first
snapshot whose greedy mean reaches the threshold gives the time to threshold, and is the policy the
peer ends with, as if it had stopped there (mp_rl's shipped CartPole config stops at its target).
The clock of every system starts when the benchmark launches its interpreter (`launched`, unix time).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

# rl-baselines3-zoo, hyperparams/dqn.yml, CartPole-v1 ("Almost Tuned"; n_timesteps 5e4).
ZOO_CARTPOLE = dict(
    learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
    target_update_interval=10, train_freq=256, gradient_steps=128, exploration_final_eps=0.04,
    policy_kwargs=dict(net_arch=[256, 256]),
)  # fmt: skip
ZOO_CARTPOLE_DECAY = 0.16 * 50_000  # exploration_fraction x n_timesteps: the env steps epsilon decays over

# MinAtar's reference DQN (Young & Tian 2019, examples/dqn.py); the zoo has no MinAtar entry.
MINATAR = dict(lr=2.5e-4, batch=32, buffer=100_000, start=5000, target_every=1000, gamma=0.99, eps_end=0.1,
               eps_decay=100_000)  # fmt: skip

# mp_rl's configs/minatar_breakout.yaml in each peer's terms ("matched" rows): Adam at 5e-4, batch 64,
# 3-step returns, a target copy every 500 updates, one update per 16 env steps (4 samples per insert).
MATCHED = dict(lr=5e-4, batch=64, n_step=3, target_updates=500, steps_per_update=16)

# Tianshou's CartPole DQN example (examples/discrete/discrete_dqn.py), with subprocess envs.
TIANSHOU_CARTPOLE = dict(lr=1e-3, batch=64, buffer=20_000, gamma=0.9, n_step=3, target_every=320, envs=10,
                         collect=10, updates_per_step=0.1, eps_train=0.1, hidden=[128, 128, 128])  # fmt: skip


class MinAtarBody(nn.Module):
    """MinAtar's reference network without its last layer: one 3x3 convolution of 16 channels over
    the (H, W, C) 0/1 grid, then 128 units. The same body mp_rl picks for MinAtar (`small_cnn`)."""

    def __init__(self, obs_shape: tuple[int, ...]) -> None:
        super().__init__()
        h, w, c = obs_shape
        self.conv = nn.Sequential(nn.Conv2d(c, 16, 3), nn.ReLU(), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(16 * (h - 2) * (w - 2), 128), nn.ReLU())
        self.out_dim = 128

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(obs.float().permute(0, 3, 1, 2)))


def make_env(env_id: str):
    import gymnasium as gym

    if env_id.startswith("MinAtar/") and env_id not in gym.registry:
        import logging

        logging.disable(logging.WARNING)  # minatar.gym warns that its plotting packages are missing
        import minatar.gym

        logging.disable(logging.NOTSET)
        minatar.gym.register_envs()
    return gym.make(env_id)


def greedy_returns(act: Callable[[np.ndarray], int], env_id: str, episodes: int, seed: int, max_steps: int) -> list:
    """Mean-free list of `episodes` greedy returns on one env, seeds seed, seed+1, ...: the one
    evaluation every system in the benchmark is judged by."""
    env, returns = make_env(env_id), []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total = 0.0
        for _ in range(max_steps):
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            if terminated or truncated:
                break
        returns.append(total)
    env.close()
    return returns


def argmax_of(q_fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[np.ndarray], int]:
    def act(obs: np.ndarray) -> int:
        with torch.inference_mode():
            return int(q_fn(torch.as_tensor(obs[None])).argmax(dim=1))

    return act


class Snapshots:
    """Weights kept every `every_s` seconds with their time since launch."""

    def __init__(self, module: nn.Module, launched: float, every_s: float | None) -> None:
        self.module, self.launched, self.every_s = module, launched, every_s
        self.kept: list[tuple[float, dict]] = []
        self.next_at = 0.0 if every_s else float("inf")

    def maybe(self) -> None:
        t = time.time() - self.launched
        if t >= self.next_at:
            self.kept.append((t, copy.deepcopy(self.module.state_dict())))
            self.next_at = t + self.every_s

    def first_reaching(self, act, env_id: str, threshold: float, episodes: int, seed: int, max_steps: int):
        """Seconds since launch of the first snapshot whose greedy mean reaches `threshold`, or None.

        Leaves the module holding that snapshot's weights (the run stops on reaching the threshold,
        as mp_rl's `run.target_return` stops it, here at no cost to the peer), else its final ones."""
        final = copy.deepcopy(self.module.state_dict())
        for t, state in self.kept:
            self.module.load_state_dict(state)
            if np.mean(greedy_returns(act, env_id, episodes, seed, max_steps)) >= threshold:
                return t
        self.module.load_state_dict(final)
        return None


def train_sb3(
    env_id: str, seed: int, launched: float, budget: float, snap_s: float | None, matched: bool = False
) -> tuple:
    """(q-network module, act, env steps, gradient updates, snapshots) after `budget` seconds; with
    `matched`, MinAtar runs with mp_rl's learning settings instead of MinAtar's reference ones."""
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback

    total = 10**8  # the budget stops it; epsilon's decay is kept in env steps, as its recipe has it
    if env_id == "CartPole-v1":
        kw = dict(ZOO_CARTPOLE, exploration_fraction=ZOO_CARTPOLE_DECAY / total)
    else:
        m = MINATAR
        kw = dict(learning_rate=m["lr"], batch_size=m["batch"], buffer_size=m["buffer"], learning_starts=m["start"],
                  gamma=m["gamma"], target_update_interval=m["target_every"], train_freq=1, gradient_steps=1,
                  exploration_final_eps=m["eps_end"], exploration_fraction=m["eps_decay"] / total,
                  policy_kwargs=dict(features_extractor_class=_sb3_minatar_extractor(), net_arch=[],
                                     optimizer_class=torch.optim.RMSprop,
                                     optimizer_kwargs=dict(alpha=0.95, centered=True, eps=0.01)))  # fmt: skip
        if matched:
            x = MATCHED
            kw.update(learning_rate=x["lr"], batch_size=x["batch"], n_steps=x["n_step"],
                      train_freq=x["steps_per_update"],
                      target_update_interval=x["target_updates"] * x["steps_per_update"])  # fmt: skip
            kw["policy_kwargs"] = dict(kw["policy_kwargs"], optimizer_class=torch.optim.Adam, optimizer_kwargs={})
    model = DQN("MlpPolicy", make_env(env_id), seed=seed, verbose=0, device="cpu", **kw)
    snaps = Snapshots(model.q_net, launched, snap_s)

    class Budget(BaseCallback):
        def _on_step(self) -> bool:
            snaps.maybe()
            return time.time() - launched < budget

    model.learn(total_timesteps=total, callback=Budget())
    q_net = model.q_net.eval()
    return q_net, argmax_of(q_net), model.num_timesteps, model._n_updates, snaps


def _sb3_minatar_extractor():
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class Extractor(BaseFeaturesExtractor):
        """MinAtar's body as an SB3 features extractor; `net_arch=[]` puts the Q layer right after it."""

        def __init__(self, observation_space) -> None:
            super().__init__(observation_space, features_dim=128)
            self.body = MinAtarBody(observation_space.shape)

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.body(obs)

    return Extractor


class TianshouQ(nn.Module):
    """A Q-network in Tianshou's model convention: forward(obs, state, info) -> (q, state)."""

    def __init__(self, body: nn.Module, n_actions: int) -> None:
        super().__init__()
        self.body, self.head = body, nn.Linear(body.out_dim, n_actions)

    def forward(self, obs, state=None, info=None):
        return self.head(self.body(torch.as_tensor(obs, dtype=torch.float32))), state


class MLPBody(nn.Module):
    def __init__(self, n_in: int, hidden: list[int]) -> None:
        super().__init__()
        layers, width = [], n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.net, self.out_dim = nn.Sequential(*layers), width

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.flatten(1))


class _Budget(Exception):
    pass


def train_tianshou(
    env_id: str, seed: int, launched: float, budget: float, snap_s: float | None, matched: bool = False
) -> tuple:
    """Tianshou's DQN with SubprocVectorEnv collection; same return as `train_sb3`."""
    import tianshou as ts
    from tianshou.algorithm.modelfree.dqn import DiscreteQLearningPolicy
    from tianshou.algorithm.optim import AdamOptimizerFactory, RMSpropOptimizerFactory
    from tianshou.data import CollectStats
    from tianshou.trainer import OffPolicyTrainerParams

    env = make_env(env_id)
    n_actions, shape = int(env.action_space.n), env.observation_space.shape
    if env_id == "CartPole-v1":
        c = TIANSHOU_CARTPOLE
        model = TianshouQ(MLPBody(int(np.prod(shape)), c["hidden"]), n_actions)
        optim, envs, eps0 = AdamOptimizerFactory(lr=c["lr"]), c["envs"], c["eps_train"]
        algo_kw = dict(gamma=c["gamma"], n_step_return_horizon=c["n_step"], target_update_freq=c["target_every"])
        batch, buffer, collect, ratio, start = c["batch"], c["buffer"], c["collect"], c["updates_per_step"], c["batch"]
    else:
        m = MINATAR
        model = TianshouQ(MinAtarBody(shape), n_actions)
        optim = RMSpropOptimizerFactory(lr=m["lr"], alpha=0.95, centered=True, eps=0.01)
        envs, eps0 = 8, 1.0
        algo_kw = dict(gamma=m["gamma"], target_update_freq=m["target_every"])
        batch, buffer, collect, ratio, start = m["batch"], m["buffer"], 8, 1.0, m["start"]
        if matched:
            x = MATCHED
            optim, batch, collect = AdamOptimizerFactory(lr=x["lr"]), x["batch"], x["steps_per_update"]
            algo_kw.update(n_step_return_horizon=x["n_step"], target_update_freq=x["target_updates"])
            ratio = 1 / x["steps_per_update"]
    torch.manual_seed(seed)
    policy = DiscreteQLearningPolicy(model=model, action_space=env.action_space, eps_training=eps0)
    algorithm = ts.algorithm.DQN(policy=policy, optim=optim, **algo_kw)
    train_envs = ts.env.SubprocVectorEnv([lambda: make_env(env_id) for _ in range(envs)])
    train_envs.seed(seed)
    collector = ts.data.Collector[CollectStats](
        algorithm, train_envs, ts.data.VectorReplayBuffer(buffer, envs), exploration_noise=True
    )
    collector.reset()
    collector.collect(n_step=-(-start // envs) * envs, random=True)  # a whole number of vector steps
    snaps, steps = Snapshots(model, launched, snap_s), [start]

    def training_fn(epoch: int, env_step: int) -> None:
        steps[0] = start + env_step
        if env_id != "CartPole-v1":  # MinAtar's linear epsilon decay
            m = MINATAR
            policy.set_eps_training(max(m["eps_end"], 1.0 - (1.0 - m["eps_end"]) * env_step / m["eps_decay"]))
        snaps.maybe()
        if time.time() - launched >= budget:
            raise _Budget

    params = OffPolicyTrainerParams(
        training_collector=collector, max_epochs=10**6, epoch_num_steps=10_000, collection_step_num_env_steps=collect,
        batch_size=batch, update_step_num_gradient_steps_per_sample=ratio, training_fn=training_fn,
        test_collector=None, verbose=False, show_progress=False,
    )  # fmt: skip
    try:
        algorithm.run_training(params)
    except _Budget:
        pass
    finally:
        train_envs.close()
    model.eval()
    return model, argmax_of(lambda obs: model(obs)[0]), steps[0], algorithm._iter, snaps
