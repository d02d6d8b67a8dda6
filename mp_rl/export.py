"""`python -m mp_rl.export runs/<id> --format torchscript|onnx [--checkpoint best|final|PATH] --out FILE`

Writes a run's Q-network as a file that runs without mp_rl: TorchScript needs torch only, ONNX any
ONNX runtime. Either takes a batch of observations as the run's env gives them (the network's own
scaling inside) and returns the Q-values, (batch, n_actions) float32; the greedy action is their
argmax. Before it says done, it plays the run's env with the policy to collect a batch of real
observations, runs the file on them (torch.jit.load; onnxruntime where the `onnx` extra is
installed: without it an ONNX file is written unchecked, and says so) and prints the largest
difference from the PyTorch policy. The file is written beside `--out` and renamed onto it only
once it passed, so a failure leaves an existing file as it was. Bad input is one line and exit code 2.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mp_rl.agent.models import q_values
from mp_rl.cli import TRUST_FLAG, TRUST_HELP, Parser, fail
from mp_rl.policy import Policy, PolicyError

FORMATS = ("torchscript", "onnx")
ATOL, RTOL = 1e-4, 1e-5  # the difference in any Q-value the check accepts: float32 kernels differ, more on larger Q


class QValues(nn.Module):
    """The network with its output reduced to Q-values (a quantile network's mean over quantiles)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return q_values(self.net(obs)).float()


def observations(policy: Policy, n: int = 64, seed: int = 0) -> np.ndarray:
    """n real observations: the run's env played by the policy, 10 % of the actions random."""
    try:
        env, rng, out = policy.make_env(), np.random.default_rng(seed), []
        obs, _ = env.reset(seed=seed)
        while len(out) < n:
            out.append(obs)
            obs, _, terminated, truncated, _ = env.step(policy.act(obs, epsilon=0.1, rng=rng))
            if terminated or truncated:
                obs, _ = env.reset()
        env.close()
    except PolicyError:
        raise
    except Exception as exc:  # the run's env, whatever it raises
        raise PolicyError(f"the run's env failed while collecting observations: {type(exc).__name__}: "
                          f"{str(exc)[:120]}") from None  # fmt: skip
    return np.stack(out)


def check(got: np.ndarray, want: np.ndarray) -> float:
    """The largest difference, in units of the tolerance (atol + rtol |want|): over 1 fails; inf if not finite."""
    if not np.isfinite(got).all() or not np.isfinite(want).all():
        return float("inf")
    return float((np.abs(got - want) / (ATOL + RTOL * np.abs(want))).max())


def write(policy: Policy, fmt: str, out: Path, sample: np.ndarray) -> tuple[float, float | None]:
    """Write the file at `out`; return (largest |difference| from the PyTorch policy on `sample`, the same
    in units of the tolerance), the second None where the file could not be run (no onnxruntime)."""
    model = QValues(policy.net.cpu()).eval().requires_grad_(False)  # a user's .numpy() works on its output
    x = torch.as_tensor(sample)
    want = model(x).numpy()
    if fmt == "torchscript":
        with torch.inference_mode():
            traced = torch.jit.trace(model, x[:2])
        traced.save(str(out))
        got = torch.jit.load(str(out))(x).numpy()
        return float(np.abs(got - want).max()), check(got, want)
    with warnings.catch_warnings(), _quiet("torch.onnx"):
        warnings.simplefilter("ignore")  # the exporter's notes on deprecated pytree classes and torchvision
        batch = torch.export.Dim("batch", min=1)
        # external_data=False: one self-contained file, weights inside (the default splits them into FILE.data)
        torch.onnx.export(model, (x[:2],), str(out), input_names=["obs"], output_names=["q_values"],
                          dynamic_shapes={"obs": {0: batch}}, external_data=False, verbose=False)  # fmt: skip
    try:
        import onnxruntime
    except ImportError:
        return float("nan"), None
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"obs": sample})[0]
    return float(np.abs(got - want).max()), check(got, want)


def export(policy: Policy, fmt: str, out: Path, sample: np.ndarray) -> tuple[float, bool]:
    """Write and check the file through a temporary one beside `out`, renamed onto it only once it passed:
    a failure leaves nothing new behind and an existing `out` as it was. (difference, checked)."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        diff, scaled = write(policy, fmt, tmp, sample)
        if scaled is not None and scaled > 1:
            raise PolicyError(f"the {fmt} file's Q-values differ from the policy's by {diff:.2e} (tolerance "
                              f"{ATOL:g} + {RTOL:g} |q|); nothing written")  # fmt: skip
        os.replace(tmp, out)
        return diff, scaled is not None
    except PolicyError:
        raise
    except Exception as exc:  # the tracer, the exporter, the runtime and the file system raise many kinds
        raise PolicyError(f"could not export to {fmt}: {type(exc).__name__}: {str(exc)[:150]}") from None
    finally:
        tmp.unlink(missing_ok=True)


class _quiet:
    """Raise a logger's level for a block (the ONNX exporter logs each op it cannot find)."""

    def __init__(self, name: str):
        self.logger = logging.getLogger(name)

    def __enter__(self):
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="mp_rl.export", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a run folder, or a checkpoint file inside one")
    ap.add_argument("--format", required=True, help="torchscript or onnx")
    ap.add_argument("--checkpoint", default="best", help="best (default; final if none), final, or a path")
    ap.add_argument("--out", required=True, help="the file to write")
    ap.add_argument(TRUST_FLAG, action="store_true", help=TRUST_HELP)
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        if args.format not in FORMATS:
            raise PolicyError(f"--format {args.format!r}: one of {', '.join(FORMATS)}")
        if not out.parent.is_dir():
            raise PolicyError(f"--out {args.out}: its folder does not exist")
        if out.is_dir():
            raise PolicyError(f"--out {args.out}: is a folder; name the file to write")
        if args.format == "onnx":
            try:
                import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
            except ImportError:
                raise PolicyError("--format onnx needs the onnx extra: pip install -e '.[onnx]'") from None
        policy = Policy.load(args.run_dir, args.checkpoint, trust_imports=args.trust_imports)  # on the CPU
        diff, checked = export(policy, args.format, out, observations(policy))
    except PolicyError as exc:
        return fail("mp_rl.export", exc)
    if not checked:
        print(f"wrote {out} ({args.format}); not checked: onnxruntime is not installed (the onnx extra)")
        return 0
    print(f"wrote {out} ({args.format}): {policy.n_actions} Q-values per observation of shape {policy.obs_shape}; "
          f"largest difference from the PyTorch policy on 64 real observations {diff:.1e}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
