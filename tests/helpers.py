"""Shared test helpers: joining child processes under a hard deadline, GPU skip marker."""

from __future__ import annotations

import time
from queue import Empty

import psutil
import pytest
import torch

_no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def requires_cuda(test):
    """Marks a test `gpu` (select with -m gpu) and skips it without a CUDA device."""
    return pytest.mark.gpu(_no_cuda(test))


# Helpers that live for the whole session and are not a test's to reap: multiprocessing's resource
# tracker, and torch.compile's pool of compile workers (started by the first compile wherever Triton
# is installed, so on CUDA machines: there they outlived the test that compiled and were called a leak).
SESSION_HELPERS = ("resource_tracker", "torch/_inductor/compile_worker")


def child_processes() -> list[psutil.Process]:
    """This process's descendants, less the session's helpers."""
    kids = psutil.Process().children(recursive=True)
    return [p for p in kids if not any(h in " ".join(_cmdline(p)) for h in SESSION_HELPERS)]


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def join_all(procs, timeout: float) -> None:
    """Join processes under one deadline; a hung one fails the test (and the leak fixture kills it)."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    hung = [p.name for p in procs if p.is_alive()]
    assert not hung, f"processes did not finish within {timeout}s (deadlock?): {hung}"
    bad = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    assert not bad, f"processes failed: {bad}"


def drain(queue, n: int, timeout: float, procs=()) -> dict:
    """Collect `n` (key, value) results from a queue; fail at once if one of `procs` crashes."""
    out, deadline = {}, time.monotonic() + timeout
    while len(out) < n:
        try:
            key, value = queue.get(timeout=0.25)
            out[key] = value
        except Empty:
            crashed = [(p.name, p.exitcode) for p in procs if p.exitcode not in (None, 0)]
            assert not crashed, f"child processes crashed: {crashed}"
            assert time.monotonic() < deadline, f"only {len(out)} of {n} results within {timeout}s (deadlock?)"
    return out
