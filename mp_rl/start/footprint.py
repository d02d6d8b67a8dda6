"""What a process, an env and a network cost in memory: the measured inputs of the budget.

- `bases()`: resident memory of an mp_rl process before its own data, by role, measured once per
  machine and software in a child process and cached (`cache`).
  A process that has imported torch holds ~230 MB before it owns a byte of replay; no formula knows
  that figure for the next torch release, so it is measured. Members are forks of a server that
  imported torch (`mp_rl.system.forks`), so theirs are measured in a fork of such a process: the
  server's pages they only read count in theirs (RssAnon) as they do on the machine's meter.
- `env_cost(cfg.env)`: the first env (its libraries, a ROM) and each further one, measured in this process.
- `network(spec, lc)`: parameters, and the activations one sample keeps for the backward pass.

Resident memory here is RssAnon + RssFile: what a process holds privately or maps from files.
Shared-memory pages (the ring, the board) are counted once, as bytes in /dev/shm, not in every process
that touches them.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mp_rl.agent.iqn import ACTING, ImplicitQuantiles
from mp_rl.start import cache
from mp_rl.system import forks

# Measured on the 2-core development machine (torch 2.13, CPU): used when the child cannot run.
FALLBACK = {"bare": 15 << 20, "server": 237 << 20, "imported": 162 << 20, "actor": 176 << 20,
            "learner": 260 << 20, "supervisor": 319 << 20}  # fmt: skip
CALIBRATION_VERSION = 2  # 2: members forked from the fork server


def rss() -> int:
    """This process's resident bytes, shared memory excluded (RssAnon + RssFile)."""
    total, found = 0, False
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:")):
                    total += int(line.split()[1]) * 1024
                    found = True
    except OSError:
        pass
    if not found:  # not Linux: psutil's RSS, shared pages included
        import psutil

        return psutil.Process().memory_info().rss
    return total


@dataclass(frozen=True)
class Bases:
    """Resident bytes of an mp_rl process by role, before its own buffers."""

    bare: int  # a Python interpreter with nothing imported (the multiprocessing resource tracker)
    server: int  # mp_rl's member modules imported (torch, numpy, gymnasium): the members' fork server
    imported: int  # a member as forked from the server, nothing more done: the monitor
    actor: int  # a member, plus inference with one torch thread
    learner: int  # a member, plus backward and a fused Adam step on the default threads
    supervisor: int  # not forked: the modules imported, inference and a training step (its evaluator)
    learner_cuda: int | None = None  # the learner on CUDA: the CUDA context's host memory included
    measured: bool = True

    def member(self, role: str) -> int:
        """A member's base (`imported`, `actor`, `learner`, `learner_cuda`): as a fork of the server, or
        with MP_RL_START_METHOD=spawn its own whole import, the server's pages a fork never touched too."""
        base = getattr(self, role)
        return base if forks.method() == "forkserver" else base + self.server - self.imported


class CachedBases(BaseModel):
    """A footprint entry as the cache holds it: positive byte counts (a negative one would switch
    preflight's memory check off)."""

    model_config = ConfigDict(strict=True, extra="forbid")  # the dataclass it becomes takes no other key
    bare: int = Field(gt=0)
    server: int = Field(gt=0)
    imported: int = Field(gt=0)
    actor: int = Field(gt=0)
    learner: int = Field(gt=0)
    supervisor: int = Field(gt=0)
    learner_cuda: int | None = Field(default=None, gt=0)
    measured: bool = True


# The child's first lines read its footprint before anything is imported (this module imports torch).
_CHILD = """
import json
bare = 0
with open('/proc/self/status') as f:
    bare = sum(int(x.split()[1]) * 1024 for x in f if x.startswith(('RssAnon:', 'RssFile:')))
from mp_rl.start import footprint
print(json.dumps(footprint._child(bare)))
"""


def _child(bare: int) -> dict:
    """Run inside the calibration child: each role's resident bytes after what that role does. The
    child stands for the fork server, then for the supervisor; a fork of it for each member."""
    out = {"bare": bare or FALLBACK["bare"]}
    for name in forks.PRELOAD:
        importlib.import_module(name)
    out["server"] = rss()
    out |= _in_a_fork(_member)
    _infer()
    _train("cpu")
    out["supervisor"] = rss()
    return out


def _member() -> dict:
    """A member's roles, in order, in one process: each adds its work to the last one's."""
    out = {"imported": rss()}
    _infer()
    out["actor"] = rss()
    _train("cpu")
    out["learner"] = rss()
    if torch.cuda.is_available():  # here, in the fork: the server must never initialise CUDA
        _train("cuda")
        out["learner_cuda"] = rss()
    return out


def _in_a_fork(measure) -> dict:
    """`measure()` in a fork of this process, its answer back through a pipe."""
    r, w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the fork: answer, then leave without this interpreter's teardown or atexit
        code = 1
        try:
            forks.death_signal()  # the calibration's timeout kills its child, and so this fork
            if os.getppid() != parent:
                raise SystemExit
            os.close(r)
            os.write(w, json.dumps(measure()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("the forked calibration failed")
    return json.loads(data)


_NET = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))


def _infer() -> None:
    """An actor's work: inference on one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.no_grad():
        for _ in range(20):
            _NET(torch.randn(16, 8))
    torch.set_num_threads(threads)


def _train(device: str) -> None:
    """A learner's work: backward and a fused Adam step, on the default threads."""
    net = copy.deepcopy(_NET).to(device)
    opt = torch.optim.Adam(net.parameters(), fused=True)
    for _ in range(20 if device == "cpu" else 5):
        opt.zero_grad()
        net(torch.randn(64, 8, device=device)).square().mean().backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()


def _key() -> str:
    return cache.key("footprint", CALIBRATION_VERSION, cache.versions(), cache.fingerprint())


def bases(timeout: float = 120.0) -> Bases:
    """The roles' base footprints: cached, else measured in a child (a few seconds, once per machine)."""
    digest = _key()
    hit = cache.load("footprint", digest, CachedBases)
    if hit is not None:
        return Bases(**hit)
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                              timeout=timeout, check=True)  # fmt: skip
        measured = Bases(**json.loads(done.stdout.strip().splitlines()[-1]))
    except (OSError, subprocess.SubprocessError, ValueError, TypeError, IndexError):
        return Bases(**FALLBACK, measured=False)
    cache.save("footprint", digest, asdict(measured))
    return measured


@dataclass(frozen=True)
class EnvCost:
    first: int  # the first env in a process: its libraries and data
    each: int  # every env after it


def env_cost(cfg) -> EnvCost:
    """Resident bytes of this env config's environments, measured here: one env, then two more.
    An env that cannot be built here (EnvPool-only ids) counts 0; preflight's probe says why."""
    from mp_rl.agent.envs import env_factory

    try:
        make = env_factory(cfg.model_copy(update={"backend": "gymnasium"}))
        r0 = rss()
        envs = [make()]
        r1 = rss()
        envs += [make(), make()]
        for i, env in enumerate(envs):  # buffers that exist only once an env has run
            env.reset(seed=i)
            for _ in range(8):
                _, _, term, trunc, _ = env.step(env.action_space.sample())
                if term or trunc:
                    env.reset()
        r2 = rss()
        for env in envs:
            env.close()
    except Exception:  # a measurement, not a check: the probe reports bad envs
        return EnvCost(0, 0)
    return EnvCost(max(0, r1 - r0), max(0, (r2 - r1) // 2))


@dataclass(frozen=True)
class NetCost:
    numel: int  # parameters
    activations: int  # values one sample keeps for the backward pass (every layer's output)
    inputs: int  # values of one observation as the network reads it (float)
    macs: int = 0  # multiply-accumulates of one sample's forward pass (linear and convolution layers)


def network(net: nn.Module, obs_shape: tuple[int, ...]) -> NetCost:
    """Parameters and per-sample activations of a network, from a shape-only (meta) forward pass."""
    sizes: list[int] = []
    macs = [0]
    if any(p.device.type != "meta" for p in net.parameters()):
        net = copy.deepcopy(net).to("meta")  # shapes only, and the caller's network stays as it was

    def hook(m, _inp, out) -> None:
        # The whole output of a one-sample pass: IQN's layers after its embedding see one row per
        # quantile fraction (asked at 32, more than a learner samples), every other layer one row.
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel())
            if isinstance(m, nn.Linear):
                macs[0] += out.numel() * m.in_features
            elif isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
                macs[0] += out.numel() * k

    leaves = [m for m in net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.device("meta"):
            taus = (torch.empty((1, ACTING)),) if isinstance(net, ImplicitQuantiles) else ()
            net(torch.empty((1, *obs_shape)), *taus)
    finally:
        for h in handles:
            h.remove()
    numel = sum(p.numel() for p in net.parameters())
    return NetCost(numel, sum(sizes), math.prod(obs_shape), macs[0])
