"""The hardware profile: CPU, memory, GPU, and a short matmul measurement on each device.

    python -m mp_rl.hardware [--json] [--seconds 0.5]

Every run also writes it as `hardware_profile.json` in its run folder (the supervisor calls `profile`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import psutil
import torch

from mp_rl.start import resources


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(device: str, seconds: float, n: int = 1024, dtype=torch.float32) -> float:
    """Sustained n x n matmul throughput: 2 n^3 flops per product, timed after a warm-up."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
        if device.startswith("cuda") and count % 16:
            continue
        sync()
    sync()
    return 2 * n**3 * count / (time.perf_counter() - t0) / 1e9


def gpus(seconds: float) -> list[dict]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        dev = f"cuda:{i}"
        out.append({
            "index": i, "name": p.name, "vram_bytes": int(p.total_memory),
            "compute_capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
            "bf16": bool(torch.cuda.is_bf16_supported()),
            "matmul_gflops_fp32": round(matmul_gflops(dev, seconds, 4096), 1),
            "matmul_gflops_fp16": round(matmul_gflops(dev, seconds, 4096, torch.float16), 1),
        })  # fmt: skip
    return out


def profile(seconds: float = 0.3) -> dict:
    """What this machine is, and what this process may use of it (affinity, cgroup limits)."""
    freq = psutil.cpu_freq()
    vm = psutil.virtual_memory()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core's figure: what one actor or a CPU learner thread gets
    one_core = matmul_gflops("cpu", seconds, 512)
    torch.set_num_threads(threads)
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_model": cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "affinity": sorted(os.sched_getaffinity(0)),
        "cgroup_cpu_limit": resources.cgroup_cpu_limit(),
        "usable_cpus": resources.usable_cpus(),
        "cpu_mhz": None if freq is None else {"current": round(freq.current), "max": round(freq.max)},
        "ram_bytes": int(vm.total),
        "ram_available_bytes": int(resources.available_memory()),
        "cgroup_memory_limit": resources.cgroup_memory_limit(),
        "cpu_matmul_gflops_1_thread": round(one_core, 1),
        "gpus": gpus(seconds),
    }


def describe(p: dict) -> str:
    gib = 2**30
    lines = [
        f"cpu      {p['cpu_model']}",
        f"cores    {p['physical_cores']} physical, {p['logical_cores']} logical; this process may use "
        f"{p['usable_cpus']} (affinity {len(p['affinity'])}, cgroup limit {p['cgroup_cpu_limit'] or 'none'})",
        f"clock    {p['cpu_mhz']['current']} MHz" + (f" (max {p['cpu_mhz']['max']})" if p["cpu_mhz"]["max"] else "")
        if p["cpu_mhz"]
        else "clock    unknown",
        f"memory   {p['ram_bytes'] / gib:.1f} GiB, {p['ram_available_bytes'] / gib:.1f} GiB available"
        + (f", cgroup limit {p['cgroup_memory_limit'] / gib:.1f} GiB" if p["cgroup_memory_limit"] else ""),
        f"matmul   cpu, 1 thread: {p['cpu_matmul_gflops_1_thread']:.1f} GFLOPS (fp32, 512x512)",
    ]
    for g in p["gpus"]:
        lines.append(
            f"gpu {g['index']}    {g['name']}, {g['vram_bytes'] / gib:.1f} GiB, compute {g['compute_capability']}, "
            f"{g['matmul_gflops_fp32']:,.0f} GFLOPS fp32 / {g['matmul_gflops_fp16']:,.0f} fp16 (4096x4096)"
        )
    if not p["gpus"]:
        lines.append("gpu      none (no CUDA device visible to torch)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mp_rl.hardware", description="Print this machine's hardware profile.")
    ap.add_argument("--json", action="store_true", help="the profile as JSON (what runs keep)")
    ap.add_argument("--seconds", type=float, default=0.5, help="time per matmul measurement")
    args = ap.parse_args(argv)
    p = profile(args.seconds)
    print(json.dumps(p, indent=2) if args.json else describe(p))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
