"""`python -m mp_rl.evaluate runs/<id> [--checkpoint best|final|PATH] [--episodes N] [--video out.mp4] [--seed S]`

Plays the greedy policy of a run's checkpoint on the run's own env config and prints each episode's
return and their mean. `--video` records the episodes, one after another, into one MP4 through
Gymnasium's `RecordVideo` (the `video` extra brings its encoder, moviepy). Bad input is one line and
exit code 2.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from mp_rl.agent import checkpoint, growth
from mp_rl.agent.envs import env_factory, probe
from mp_rl.agent.envspec import EnvError
from mp_rl.agent.evaluation import greedy_returns
from mp_rl.agent.models import q_network, q_values
from mp_rl.cli import TRUST_FLAG, TRUST_HELP, Parser, check_imports, fail
from mp_rl.config import ConfigError, load_config
from mp_rl.runfolder import CONFIG, RunFolder


class EvaluateError(ValueError):
    """Bad input; str() is the one line to show."""


def checkpoint_path(run_dir: Path, which: str) -> Path:
    """`best`, `final`, or a path; `best` falls back to `final` for a run that never evaluated."""
    folder = RunFolder(run_dir)
    if which in ("best", "final"):
        for path in [folder.best, folder.final] if which == "best" else [folder.final]:
            if path.is_file():
                return path
        raise EvaluateError(f"{run_dir}: no {which} checkpoint in {folder.checkpoints}")
    path = Path(which)
    if not path.is_file():
        raise EvaluateError(f"--checkpoint {which}: no such file")
    return path


def load_policy(run_dir: Path, which: str, trust_imports: bool = False):
    """(config, policy) of a run folder and one of its checkpoints, checked to fit each other. A config
    that names modules to import is refused unless `trust_imports` (`cli.check_imports`)."""
    folder = RunFolder(run_dir)
    if not folder.is_run():
        raise EvaluateError(f"{run_dir}: not an mp_rl run folder (no {CONFIG})")
    cfg = load_config(folder.config)
    check_imports(run_dir, cfg.env, trust_imports)
    path = checkpoint_path(run_dir, which)
    try:
        state = checkpoint.load(path)
        policy = q_network(probe(cfg.env), growth.saved_widths(cfg.learner, state))
        policy.load_state_dict(checkpoint.policy_weights(state))
    except EnvError:
        raise
    except Exception as exc:  # a damaged file, or another network's: torch raises many kinds
        raise EvaluateError(f"checkpoint {path}: cannot be loaded into this run's network "
                            f"({type(exc).__name__}: {str(exc)[:100]})") from None  # fmt: skip
    return cfg, policy.eval()


def record(policy, cfg, episodes: int, seed: int, video: Path, max_steps: int) -> np.ndarray:
    """Play `episodes` greedy episodes on one env, recorded into one MP4 at `video`."""
    try:
        import moviepy  # noqa: F401
    except ImportError:
        raise EvaluateError("--video needs the video extra: pip install -e '.[video]'") from None
    from gymnasium.wrappers import RecordVideo

    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Gymnasium's notes on fps and folders; what fails is reported below
        env = RecordVideo(env_factory(cfg.env, render_mode="rgb_array")(), folder, step_trigger=lambda s: s == 0,
                          video_length=10**9, name_prefix="mp_rl", disable_logger=True)  # fmt: skip
        try:
            returns = play(env, policy, episodes, seed, max_steps)
        except Exception as exc:  # an env without an rgb_array renderer (or its drawing library) fails here
            raise EvaluateError(f"--video: {cfg.env.id} could not render frames ({type(exc).__name__}: "
                                f"{str(exc)[:100]})") from None  # fmt: skip
        finally:
            env.close()  # writes the file
        made = sorted(Path(folder).glob("*.mp4"))
        if not made:
            raise EvaluateError("the env rendered no frames: it has no rgb_array render mode")
        shutil.move(str(made[0]), video)
    return returns


def play(env, policy, episodes: int, seed: int, max_steps: int) -> np.ndarray:
    """Greedy episodes on one (unbatched) env; their returns."""
    returns = np.zeros(episodes)
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        for _ in range(max_steps):
            with torch.inference_mode():
                action = int(q_values(policy(torch.as_tensor(obs[None]))).argmax(dim=1))
            obs, reward, terminated, truncated, _ = env.step(action)
            returns[i] += reward
            if terminated or truncated:
                break
    return returns


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="mp_rl.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--checkpoint", default="best", help="best (default; final if none), final, or a path")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--video", default=None, help="record the episodes into this .mp4 file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(TRUST_FLAG, action="store_true", help=TRUST_HELP)
    args = ap.parse_args(argv)
    try:
        if not 1 <= args.episodes <= 10_000:
            raise EvaluateError(f"--episodes must be 1..10000, got {args.episodes}")
        if args.video is not None:
            video = Path(args.video)
            if video.suffix != ".mp4" or not video.parent.is_dir():
                raise EvaluateError(f"--video {args.video}: needs a .mp4 file in an existing folder")
        run_dir = Path(args.run_dir).resolve()
        cfg, policy = load_policy(run_dir, args.checkpoint, args.trust_imports)
        steps = cfg.eval.max_episode_steps
        if args.video is not None:
            returns = record(policy, cfg, args.episodes, args.seed, Path(args.video), steps)
        else:
            returns = greedy_returns(policy, cfg.env, args.episodes, args.seed, steps)
    except (EvaluateError, EnvError, ConfigError) as exc:
        return fail("mp_rl.evaluate", exc)
    print("returns: " + " ".join(f"{r:g}" for r in returns))
    print(f"mean return {returns.mean():.2f} ± {returns.std():.2f} over {len(returns)} episodes (seed {args.seed})")
    if args.video is not None:
        print(f"video: {args.video}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
