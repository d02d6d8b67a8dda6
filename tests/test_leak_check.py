"""The leak check itself: what it calls a leak, and what it leaves to the session."""

from __future__ import annotations

import time

import psutil
from helpers import child_processes


def test_torch_compiles_worker_pool_is_not_called_a_leak():
    """torch.compile starts a pool of compile workers that lives until the interpreter exits (with
    Triton installed, on the first compile); the check must not fail the test that compiled first."""
    from torch._inductor.async_compile import AsyncCompile, shutdown_compile_workers

    AsyncCompile.warm_pool()
    try:
        deadline, workers = time.monotonic() + 30, []
        while not workers and time.monotonic() < deadline:
            kids = psutil.Process().children(recursive=True)
            workers = [p for p in kids if "compile_worker" in " ".join(p.cmdline())]
            time.sleep(0.05)
        assert workers, "the compile-worker pool did not start"
        assert not {p.pid for p in workers} & {p.pid for p in child_processes()}
    finally:
        shutdown_compile_workers()
