"""The run configuration's schema: nested frozen pydantic models, one description per field.

Every key a YAML file may set is a field here; `docs/configuration.md`'s reference is generated from
these models when the site is built. Reading a file into them is `mp_rl.config.loading`.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ConfigError(ValueError):
    """Bad configuration input; str() is the one line to show the user."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


Auto = Literal["auto"]
Width = Annotated[int, Field(ge=1, le=65536)]  # one layer's units
Count = Annotated[int, Field(ge=0, le=10**9)]


class RunConfig(_Section):
    name: str = Field(
        "run", pattern=r"^[A-Za-z0-9_-]{1,40}$", description="Run name: folder suffix and process titles."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Base random seed; actor i uses seed + i.")
    runs_dir: str = Field("runs", description="Folder that holds one sub-folder per run.")
    total_env_steps: int = Field(1_000_000, ge=1, description="Stop after this many environment steps.")
    wall_time_s: float | None = Field(None, gt=0, description="Stop after this many seconds (null: no limit).")
    target_return: float | None = Field(None, description="Stop once the greedy evaluation mean reaches this.")
    serial: bool = Field(False, description="Run actor, learner and monitor in one process (debugging, tests).")
    autotune: bool = Field(
        False,
        description="Search envs per actor, actors and batch size for the most env steps/s at the start "
        "(cached per machine and config: a cached start only re-checks its point).",
    )
    pin_cpus: bool = Field(
        False, description="Pin the learner to the last usable CPU and actor i to CPU i of the rest (wrapping)."
    )
    save_replay: bool | None = Field(
        None,
        description="At a clean stop write the replay's live window into the run folder, for --resume "
        "(null: when it takes at most half the free disk).",
    )
    stop_deadline_s: float = Field(5.0, gt=0, description="Seconds for children to stop before terminate, then kill.")
    heartbeat_timeout_s: float = Field(30.0, gt=0, description="A member silent this long is hung: killed, restarted.")
    max_restarts: int = Field(
        5, ge=0, description="Restarts allowed per actor slot before the run stops with an error."
    )


# `env.register` is the name users expect; it shadows ABCMeta.register, which no config ever calls.
warnings.filterwarnings("ignore", message='Field name "register" in "EnvConfig" shadows', category=UserWarning)


class EnvConfig(_Section):
    id: str = Field(
        "CartPole-v1", min_length=1, max_length=200,
        description="Gymnasium id ('module:EnvId' imports module first), or 'module:Class'.",
    )  # fmt: skip
    kwargs: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], Any] = Field(
        default_factory=dict, max_length=64, description="Keyword arguments for the environment's constructor."
    )
    register: str | None = Field(
        None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="'package.module:function' called before the env is made (it registers ids).",
    )  # fmt: skip
    backend: Literal["gymnasium", "envpool"] = Field(
        "gymnasium",
        description="gymnasium: a vector env in the actor's process; envpool: EnvPool's C++ threads (the envpool "
        "extra; Atari and classic control), two pools per actor stepped alternately.",
    )
    envpool_threads: int = Field(1, ge=1, le=64, description="EnvPool threads per pool (an actor has two pools).")
    envs_per_actor: int = Field(8, ge=1, le=1024, description="Environments per actor, stepped as one vector env.")
    frame_stack: int = Field(4, ge=1, le=16, description="Frames stacked per observation (Atari ids only).")
    noop_max: int = Field(30, ge=0, le=1000, description="Up to this many no-op steps at each reset (Atari ids only).")
    max_episode_steps: int | None = Field(
        None, ge=1, description="Truncate episodes at this length (null: the env's own)."
    )


class ActorsConfig(_Section):
    count: int | Auto = Field(2, description="Actor processes: a number, or 'auto' for the monitor to choose.")
    initial_count: int | None = Field(
        None, ge=1, description="With count 'auto': actors to start with (null: what fits)."
    )
    max_count: int = Field(64, ge=1, le=4096, description="Upper bound on actors (clamped to usable CPUs).")
    eps_base: float = Field(
        0.4, ge=0, le=1, description="Ape-X epsilon base: explorer i of N uses eps ** (1 + alpha*i/(N-1))."
    )
    eps_alpha: float = Field(7.0, ge=0, description="Ape-X epsilon exponent spread.")
    eps_per: Literal["env", "actor"] = Field(
        "env", description="Who gets one Ape-X epsilon: every env of every actor (env), or each actor's envs together."
    )
    sync_every: int = Field(400, ge=1, description="Env steps between weight pickups from the board.")
    torch_threads: int = Field(
        1, ge=1, le=256, description="torch threads per actor (1: N actors do not oversubscribe)."
    )
    block: int = Field(64, ge=1, le=65536, description="Transitions per ring write (one atomic reservation each).")

    @model_validator(mode="after")
    def _count_range(self) -> ActorsConfig:
        if self.count != "auto" and not 1 <= self.count <= self.max_count:
            raise ValueError(f"count: must be 'auto' or 1..max_count ({self.max_count}), got {self.count}")
        return self


class ReplayConfig(_Section):
    capacity: int | Auto = Field(100_000, description="Live replay rows: a number, or 'auto' for the monitor.")
    initial_capacity: int | None = Field(
        None, ge=64, description="With capacity 'auto': rows to start with (null: a quarter of available memory)."
    )
    min_capacity: int = Field(10_000, ge=64, description="With capacity 'auto': the smallest the monitor may choose.")
    max_capacity: int = Field(
        1_000_000,
        ge=1024,
        le=10**9,
        description="Rows reserved up front (pages commit on first touch): the most the monitor may choose.",
    )
    min_fill: int = Field(1_000, ge=1, description="Rows in the ring before the learner samples.")
    samples_per_insert: float | None = Field(
        8.0, gt=0, description="Replay ratio held by the rate limiter (null: off)."
    )
    error_buffer: float | None = Field(
        None, gt=0, description="Rate limiter slack in samples (null: 4x the deadlock-free minimum)."
    )
    prioritized: bool = Field(False, description="Prioritized replay (Schaul et al.): draw rows by TD error.")
    alpha: float = Field(0.6, ge=0, le=1, description="Prioritized: how much priorities count (0: uniform).")
    beta0: float = Field(0.4, ge=0, le=1, description="Prioritized: importance-weight exponent at the start.")
    beta_steps: int = Field(
        100_000, ge=1, le=10**12, description="Prioritized: updates over which beta anneals linearly to 1."
    )
    priority_eps: float = Field(1e-6, gt=0, le=1, description="Prioritized: added to |TD error|, so none is 0.")
    frames_once: bool = Field(
        True, description="Store each frame of stacked observations once (about 1/7 of the memory for Atari)."
    )
    n_step: int = Field(3, ge=1, le=100, description="Steps in the n-step return.")
    gamma: float = Field(0.99, gt=0, le=1, description="Discount factor.")

    @model_validator(mode="after")
    def _capacity_range(self) -> ReplayConfig:
        if self.capacity != "auto" and not 1024 <= self.capacity <= self.max_capacity:
            raise ValueError(
                f"capacity: must be 'auto' or 1024..max_capacity ({self.max_capacity}), got {self.capacity}"
            )
        return self


class LearnerConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' picks CUDA when present.")
    batch_size: int | Auto = Field(64, description="Rows per update: 8..2048, or 'auto' for the monitor.")
    max_batch_size: int = Field(2048, ge=8, le=65536, description="Largest batch the monitor may choose.")
    initial_batch_size: int = Field(64, ge=8, le=65536, description="With batch_size 'auto': the batch to start with.")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate.")
    grad_clip: float = Field(10.0, gt=0, description="Gradient-norm clip.")
    target_update: int = Field(1000, ge=0, description="Hard target copy every N updates (0: Polyak with tau).")
    tau: float = Field(0.005, gt=0, le=1, description="Polyak rate when target_update is 0.")
    policy_ema: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Decay per update of a moving average of the online weights, kept as the run's policy: "
        "checkpoints hold it as `policy`, the final evaluation, evaluate, Policy.load and export play it; actors "
        "explore with the online weights (0: off; 0.999 averages over about 1000 updates).",
    )
    dueling: bool = Field(True, description="Dueling value/advantage head.")
    algo: Literal["dqn", "qr_dqn", "iqn"] = Field(
        "dqn",
        description="dqn: Double DQN; qr_dqn: quantile regression (Dabney et al. 2018); iqn: implicit quantiles "
        "(Dabney et al. 2018, sampled fractions, cosine embedding); all with Double DQN's action choice.",
    )
    n_quantiles: int = Field(
        50, ge=2, le=512, description="qr_dqn: quantiles of each action's return; iqn: fractions sampled per row."
    )
    iqn_merge: Literal["head", "hidden"] = Field(
        "head",
        description="iqn: where the fraction embedding multiplies in: the features the head reads (cheap: only the "
        "head runs per fraction), or those the last hidden layer reads (after a CNN's convolutions, as the paper).",
    )
    munchausen: bool = Field(
        False,
        description="Munchausen targets (Vieillard et al. 2020): a soft, entropy-regularised target plus the scaled "
        "log-policy of the action taken; for dqn, qr_dqn and iqn.",
    )
    munchausen_alpha: float = Field(0.9, ge=0, le=1, description="munchausen: the log-policy bonus's scale.")
    munchausen_tau: float = Field(0.03, gt=0, le=10, description="munchausen: the softmax policy's temperature.")
    munchausen_clip: float = Field(-1.0, lt=0, description="munchausen: the log-policy bonus's lower clip.")
    network: Literal["auto", "nature_cnn", "small_cnn", "impala_cnn", "mlp"] = Field(
        "auto",
        description="auto: Nature CNN for >= 36x36 images, small CNN for smaller ones, MLP for the rest; "
        "impala_cnn (by choice): the Impala ResNet with an adaptive max-pool, any image size.",
    )
    spectral_norm: bool = Field(
        False, description="impala_cnn: spectral normalization of the residual blocks' convolutions (as BTR)."
    )
    hidden: Annotated[tuple[Width, ...], Field(min_length=1, max_length=8)] | Auto = Field(
        (128, 128),
        description="MLP hidden sizes (vector observations), or 'auto': the largest the learner can update at the "
        "rate the replay ratio needs, from 1 x 16 up to 5 x 2048 (the plan says why).",
    )
    cnn_scale: Annotated[float, Field(ge=0.125, le=8)] | Auto = Field(
        1.0,
        description="Width multiplier of the CNNs' layers, or 'auto': chosen like hidden 'auto' (0.25 .. 4).",
    )
    grow: Literal["off", "auto"] = Field(
        "off",
        description="auto: the monitor widens the network (x2 a step, the learned function kept exactly) toward "
        "its kind's shipped size while memory allows, and beyond it while the learner waits for data; it narrows "
        "it under memory pressure and undoes a resize that cost throughput or learning; within 16..2048 units a "
        "layer, cnn_scale 0.25..4, and what the budget fits.",
    )
    amp: bool = Field(True, description="Mixed precision on CUDA (bf16 where supported, else fp16 + scaler).")
    amp_dtype: Literal["auto", "bfloat16", "float16"] = Field(
        "auto", description="With amp on CUDA: auto is bf16 where the GPU supports it, else fp16 with a loss scaler."
    )
    publish_every: int = Field(10, ge=1, description="Updates between weight publishes.")
    stats_every: int = Field(
        100, ge=1, description="Updates between reads of loss / mean Q / |TD| to the host (each one device sync)."
    )
    prefetch: bool = Field(True, description="Sample the next batch in a thread while the GPU trains.")
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = Field(
        "none",
        description="torch.compile the loss (forward and backward) with this mode; reduce-overhead also captures "
        "it in CUDA graphs on CUDA. Off by default: measure with benchmarks.learner first.",
    )

    @model_validator(mode="after")
    def _batch_range(self) -> LearnerConfig:
        if self.batch_size != "auto" and not 8 <= self.batch_size <= self.max_batch_size:
            raise ValueError(
                f"batch_size: must be 'auto' or 8..max_batch_size ({self.max_batch_size}), got {self.batch_size}"
            )
        if self.spectral_norm and self.network != "impala_cnn":
            raise ValueError(f"spectral_norm: only impala_cnn has it, and network is {self.network}")
        if self.grow == "auto" and self.network == "impala_cnn":
            # Its residual blocks add a stack's input to its output: not the chain of layers growth widens.
            raise ValueError("grow: auto widens chains of layers; impala_cnn's residual blocks are not one")
        return self


class EvalConfig(_Section):
    episodes: int = Field(20, ge=1, le=1000, description="Greedy episodes per evaluation.")
    every_s: float = Field(20.0, gt=0, description="Seconds between evaluations (run in the supervisor).")
    max_episode_steps: int = Field(
        27_000, ge=1, description="Steps after which an evaluation episode is cut (envs without a time limit)."
    )


class MonitorConfig(_Section):
    enabled: bool = Field(True, description="Run the resource monitor.")
    interval_s: float = Field(0.1, gt=0, le=60, description="Seconds between samples of the machine.")
    cooldown_s: float = Field(30.0, ge=0, description="Seconds between two moves of the knobs.")
    decide_every_s: float = Field(1.0, gt=0, le=600, description="Seconds between two rounds of decisions.")
    window_s: float = Field(3.0, gt=0, le=600, description="Seconds of history averaged for a decision.")
    history_s: float = Field(300.0, gt=0, description="Seconds of snapshots kept (trends).")
    bottleneck: float = Field(0.85, gt=0, le=1, description="A resource busier than this is a bottleneck.")
    potential: float = Field(0.70, gt=0, le=1, description="Busier than this: a potential bottleneck.")
    headroom: float = Field(0.50, gt=0, le=1, description="Less busy than this: room to grow.")
    starved: float = Field(0.20, ge=0, le=1, description="Learner waiting for data this share of time: starved.")
    blocked: float = Field(0.20, ge=0, le=1, description="Actors held by the rate limiter this share: blocked.")
    hysteresis: float = Field(0.05, ge=0, le=0.5, description="Margin a threshold needs to reverse a knob.")
    worse: float = Field(0.05, ge=0, le=1, description="Throughput drop after a move that undoes it.")


class LoggingConfig(_Section):
    status_every_s: float = Field(5.0, gt=0, description="Seconds between status lines.")
    checkpoint_every: int = Field(10_000, ge=1, description="Updates between checkpoints.")
    report: bool = Field(
        True,
        description="Write training_report.png and training_summary.txt into the run folder when the run stops "
        "(about 2 s; `python -m mp_rl.report` writes them later from the same files).",
    )
    tensorboard: bool = Field(False, description="Also write TensorBoard events (needs tensorboard).")
    torch_profile: bool = Field(False, description="Profile the learner with torch.profiler (into <run>/profile).")
    torch_profile_schedule: tuple[Count, Count, Count] = Field(
        (100, 20, 50), description="torch.profiler window in updates: wait, warmup, active (then it stops)."
    )


class Config(_Section):
    run: RunConfig = RunConfig()
    env: EnvConfig = EnvConfig()
    actors: ActorsConfig = ActorsConfig()
    replay: ReplayConfig = ReplayConfig()
    learner: LearnerConfig = LearnerConfig()
    eval: EvalConfig = EvalConfig()
    monitor: MonitorConfig = MonitorConfig()
    logging: LoggingConfig = LoggingConfig()
