"""Shared test helpers: joining child processes under a hard deadline, GPU skip marker."""

from __future__ import annotations

import time

import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def join_all(procs, timeout: float) -> None:
    """Join processes under one deadline; a hung one fails the test (and the leak fixture kills it)."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    hung = [p.name for p in procs if p.is_alive()]
    assert not hung, f"processes did not finish within {timeout}s (deadlock?): {hung}"
    bad = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    assert not bad, f"processes failed: {bad}"


def drain(queue, n: int, timeout: float) -> dict:
    """Collect `n` (key, value) results from a queue; writers report under their integer id."""
    out = {}
    for _ in range(n):
        key, value = queue.get(timeout=timeout)
        out[key] = value
    return out
