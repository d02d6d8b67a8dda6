"""Shared benchmark plumbing: a results table, JSON output, repeated timing."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import psutil


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "logical_cpus": psutil.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
    }


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median seconds per call of `fn` over `repeats` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table; columns are (key, heading, format)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "| " + " | ".join("---" for _ in columns) + " |"
    body = [
        "| " + " | ".join(format(r[k], f) if r.get(k) is not None else "" for k, _, f in columns) + " |" for r in rows
    ]
    return "\n".join([head, rule, *body])


def write_results(name: str, out_dir: str | None, payload: dict) -> Path:
    folder = Path(out_dir or Path("bench_out") / name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **payload}, indent=2) + "\n")
    return path
