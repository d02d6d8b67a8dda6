"""Environments: Gymnasium ids (`module:EnvId` too) or `module:Class`, batched per actor as one vector env.

`env.kwargs` go to the constructor; `env.register` names a function to call first (one that registers
ids). Atari ids (`ALE/...`) get Gymnasium's AtariPreprocessing (84x84 grey, frame skip 4, no-op
starts) and frame stacking, observations kept uint8; MinAtar ids (`MinAtar/...`) are registered from
the `minatar` package. `env.backend: envpool` steps Atari and classic control in EnvPool instead, with
the same preprocessing (`envpool_backend`). A missing extra is one clear line naming it, raised
before anything starts.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

import gymnasium as gym
import numpy as np

from mp_rl.agent.envspec import EnvError, EnvSpec
from mp_rl.config import EnvConfig


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


_REGISTERED: set[str] = set()  # hooks already run in this process: ids are registered once


def _register(path: str) -> None:
    """Call `env.register`'s 'package.module:function' (once per process); its failures are one line."""
    if path in _REGISTERED:
        return
    module_name, _, name = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), name, None)
    except ImportError as exc:
        raise EnvError(f"env.register {path!r}: cannot import {module_name}: {exc}") from None
    if not callable(fn):
        raise EnvError(f"env.register {path!r}: {name} is not a function in {module_name}")
    try:
        fn()
    except Exception as exc:
        raise EnvError(f"env.register {path!r} failed: {exc.__class__.__name__}: {exc}") from None
    _REGISTERED.add(path)


def code_imports(env) -> list[str]:
    """The modules outside mp_rl an env config would import: `env.register`'s, a 'module:EnvId' id's."""
    names = [env.register.partition(":")[0]] if env.register else []
    module, sep, _ = env.id.partition(":")
    names += [module] if sep else []
    return [n for n in names if n != "mp_rl" and not n.startswith("mp_rl.")]


def _import_prefix(env_id: str) -> str:
    """Gymnasium's 'module:EnvId' form: import the module (it registers the id), return the id."""
    module_name, sep, rest = env_id.partition(":")
    if not sep:
        return env_id
    try:
        importlib.import_module(module_name)
    except ImportError as exc:
        raise EnvError(f"env.id {env_id!r}: cannot import {module_name}: {exc}") from None
    return rest


def _register_minatar(env_id: str) -> None:
    """MinAtar registers its ids from a function, once per process."""
    handlers = list(logging.root.handlers)
    try:
        logging.disable(logging.WARNING)  # minatar.gym warns at import that seaborn (for rendering) is missing
        import minatar.gym
    except ImportError:
        raise EnvError(f"env.id {env_id!r} needs the minatar extra: pip install -e '.[minatar]'") from None
    finally:
        logging.disable(logging.NOTSET)
        logging.root.handlers[:] = handlers  # its logging.warning() gave the root logger a stderr handler
    if "MinAtar/Breakout-v1" not in gym.registry:
        minatar.gym.register_envs()


def _class_factory(env_id: str) -> Callable[[], gym.Env] | None:
    """`package.module:ClassName` -> a constructor; None when `env_id` is not of that form."""
    module_name, sep, attr = env_id.partition(":")
    if not sep or not attr.isidentifier():
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EnvError(f"env.id {env_id!r}: cannot import {module_name}: {exc}") from None
    cls = getattr(module, attr, None)
    if not isinstance(cls, type) or not issubclass(cls, gym.Env):
        raise EnvError(f"env.id {env_id!r}: {attr} is not a gymnasium.Env class in {module_name}")
    return cls


def env_factory(cfg: EnvConfig, render_mode: str | None = None) -> Callable[[], gym.Env]:
    """A zero-argument constructor for one (wrapped) environment; validates the id first. `render_mode`
    ("rgb_array" to record a video) goes to the constructor with `env.kwargs`."""
    env_id, kwargs = cfg.id, {**cfg.kwargs, **({"render_mode": render_mode} if render_mode else {})}
    if cfg.register:
        _register(cfg.register)
    cls = _class_factory(env_id)
    if cls is not None:
        return lambda: _limit(cls(**kwargs), cfg)
    env_id = _import_prefix(env_id)
    if env_id.startswith("MinAtar/"):
        _register_minatar(env_id)
    if is_atari(env_id):
        try:
            import ale_py

            gym.register_envs(ale_py)
        except ImportError:
            raise EnvError(f"env.id {env_id!r} needs the atari extra: pip install -e '.[atari]'") from None
    try:
        gym.spec(env_id)
    except gym.error.Error as exc:
        raise EnvError(f"env.id {env_id!r}: {exc}") from None
    if is_atari(env_id):
        return lambda: _atari(env_id, cfg, kwargs)
    return lambda: _limit(gym.make(env_id, **kwargs), cfg)


def _limit(env: gym.Env, cfg: EnvConfig) -> gym.Env:
    if cfg.max_episode_steps is not None:
        env = gym.wrappers.TimeLimit(env, cfg.max_episode_steps)
    return env


def _atari(env_id: str, cfg: EnvConfig, kwargs: dict) -> gym.Env:
    # frameskip=1 in the base env: AtariPreprocessing does the skipping (and max-pools frames).
    env = gym.make(env_id, **{"frameskip": 1, "repeat_action_probability": 0.0, **kwargs})
    env = gym.wrappers.AtariPreprocessing(env, frame_skip=4, screen_size=84, grayscale_obs=True, noop_max=cfg.noop_max)
    env = gym.wrappers.FrameStackObservation(env, cfg.frame_stack)
    return _limit(env, cfg)


def make_vector_env(cfg: EnvConfig, seed: int, num_envs: int | None = None):
    """`num_envs` copies stepped together (in-process: batching is for inference, processes for cores);
    with `env.backend: envpool`, one EnvPool of them."""
    n = num_envs or cfg.envs_per_actor
    if cfg.backend == "envpool":
        from mp_rl.agent.envpool_backend import EnvPoolVector

        return EnvPoolVector(cfg, seed, n, cfg.envpool_threads)
    factory = env_factory(cfg)
    env = gym.vector.SyncVectorEnv([factory] * n, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    env.reset(seed=seed)
    return env


def make_actor_envs(cfg: EnvConfig, seed: int) -> list:
    """One actor's envs: a Gymnasium vector env, or two EnvPools of half the envs each, which the actor
    steps alternately (inference for one while the other's threads step; `envpool_backend`)."""
    n = cfg.envs_per_actor
    if cfg.backend != "envpool" or n < 2:
        return [make_vector_env(cfg, seed)]
    # EnvPool seeds env i of a pool with seed + i: the second pool starts where the first ends.
    return [make_vector_env(cfg, seed, n // 2), make_vector_env(cfg, seed + n // 2, n - n // 2)]


def probe(cfg: EnvConfig) -> EnvSpec:
    """Build one environment to read its spaces; raises EnvError on an id that is no good."""
    if cfg.backend == "envpool":
        from mp_rl.agent import envpool_backend

        obs, act, stack = envpool_backend.probe(cfg)
        return _spec(cfg, obs, act, stack)
    try:
        env = env_factory(cfg)()
    except EnvError:
        raise
    except Exception as exc:  # a constructor that fails is a bad env id too, from the user's side
        raise EnvError(f"env.id {cfg.id!r} could not be created: {exc.__class__.__name__}: {exc}") from None
    try:
        return _spec(cfg, env.observation_space, env.action_space, frame_stack(env))
    finally:
        env.close()


def _spec(cfg: EnvConfig, obs, act, stack: int) -> EnvSpec:
    """The EnvSpec of these spaces, or the line that says why mp_rl cannot learn on them."""
    if not isinstance(act, gym.spaces.Discrete):
        raise EnvError(f"env.id {cfg.id!r}: mp_rl's DQN needs a Discrete action space, got {act}")
    if not isinstance(obs, gym.spaces.Box):
        raise EnvError(f"env.id {cfg.id!r}: needs a Box observation space, got {obs}")
    # Bytes stay bytes (pixels, and 0/1 grids such as MinAtar's bool planes); everything else is float32.
    small = obs.dtype in (np.uint8, np.bool_)
    dtype = np.dtype(np.uint8) if small else np.dtype(np.float32)
    scale = 1 / 255 if obs.dtype == np.uint8 and np.max(obs.high) == 255 else 1.0
    return EnvSpec(tuple(obs.shape), dtype.str, int(act.n), stack, scale)


def frame_stack(env: gym.Env) -> int:
    """k when the observation is a `FrameStackObservation` of k frames with "reset" padding and no
    wrapper outside it changes the observation (so each observation is the last one shifted by one
    new frame, and an episode's first is its reset frame repeated); 1 otherwise."""
    space = env.observation_space
    while isinstance(env, gym.Wrapper) and env.observation_space == space:
        if isinstance(env, gym.wrappers.FrameStackObservation):
            return env.stack_size if isinstance(env.padding_type, str) and env.padding_type == "reset" else 1
        env = env.env
    return 1
