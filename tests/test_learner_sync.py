"""The learner's update loop never waits for the device: no value read back per update, publishes
completed by events, TD errors returned asynchronously. On the CPU the profiler shows the host reads
(`aten::item`); on CUDA it shows the synchronisations themselves."""

from __future__ import annotations

import pytest
import torch
from helpers import requires_cuda

from mp_rl.config import load_config
from mp_rl.shm.manifest import SharedRun
from mp_rl.start.preflight import plan
from mp_rl.testing import make_rows

HOST_READS = {"aten::item", "aten::_local_scalar_dense"}
SYNCS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"}


def _learner(tmp_path, shm_name, device: str, extra: list[str]):
    from mp_rl.agent.learner import Learner

    over = [f"learner.device={device}", "replay.min_fill=64", "learner.batch_size=32",
            "replay.samples_per_insert=null", "learner.publish_every=5", *extra]  # fmt: skip
    cfg = load_config("configs/smoke.yaml", over)
    p = plan(cfg)
    shared = SharedRun.create(tmp_path, shm_name("x").split(".")[1], p.ring, p.limit, p.numel, 4)
    block = shared.ring.spec.block
    rows = make_rows(0, 0, block)
    rows["action"] = rows["action"] % 2
    for _ in range(512 // block):
        shared.ring.writer(1).write(rows)
    return Learner(cfg, shared, p.spec, p.knobs.batch_size), shared


WINDOW = "mp_rl.profiled_steps"


def _profiled_steps(learner, n: int, activities) -> list[str]:
    """Names of the events of `n` profiled steps (see `_inside`)."""
    for _ in range(5):  # warm-up: allocator, lazy inits, the first publish
        assert learner.step(timeout=2.0)
    with torch.profiler.profile(activities=activities) as prof, torch.profiler.record_function(WINDOW):
        for _ in range(n):
            assert learner.step(timeout=2.0)
    return _inside(prof.events())


def _inside(events) -> list[str]:
    """Names of the events that began inside the `WINDOW` range, leaving out those inside the
    optimizer's kernel (on the CPU fused Adam reads its step counter, a host scalar there; on CUDA it
    lives on the device). Only the window counts: leaving a profiler on CUDA synchronises the device
    itself (torch's profiler calls torch.cuda.synchronize() on exit, recorded as cudaDeviceSynchronize)."""
    # With CUDA activity the range appears twice: on the host and as a GPU annotation. The host's counts.
    (window,) = [e.time_range for e in events if e.name == WINDOW and e.device_type == torch.autograd.DeviceType.CPU]
    names = []
    for e in events:
        if not window.start <= e.time_range.start <= window.end or e.name == WINDOW:
            continue
        parent = e.cpu_parent
        while parent is not None and "adam" not in parent.name:
            parent = parent.cpu_parent
        if parent is None:
            names.append(e.name)
    return names


def test_only_what_happens_inside_the_profiled_steps_is_counted():
    """A host read inside the window is counted; one after it (as the profiler's own device sync on
    exit is, on CUDA) is not."""
    x = torch.ones(4)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.profiler.record_function(WINDOW):
            x.sum().item()
        x.sum().item()
        x.sum().item()
    names = _inside(prof.events())
    assert sum(n in HOST_READS for n in names if n == "aten::item") == 1, names


@pytest.mark.parametrize("prioritized", [False, True])
@pytest.mark.parametrize("prefetch", [False, True])
def test_no_value_is_read_back_to_the_host_per_update(tmp_path, shm_name, prioritized, prefetch):
    learner, shared = _learner(tmp_path, shm_name, "cpu", [f"replay.prioritized={str(prioritized).lower()}",
                                                         f"learner.prefetch={str(prefetch).lower()}"])  # fmt: skip
    try:
        names = _profiled_steps(learner, 30, [torch.profiler.ProfilerActivity.CPU])
        assert "aten::addmm" in names or "aten::linear" in names  # the profiler saw the updates
        reads = [n for n in names if n in HOST_READS]
        assert not reads, f"{len(reads)} host reads in 30 updates: {sorted(set(reads))}"
        assert learner.updates == 35 and shared.board.version == 7
    finally:
        learner.close()
        shared.close()


def test_statistics_are_read_every_stats_every_updates(tmp_path, shm_name):
    learner, shared = _learner(tmp_path, shm_name, "cpu", ["learner.stats_every=10"])
    try:
        lines = tmp_path / "learner.jsonl"
        learner.stats_at = 0.0  # as if the last line were long ago
        folder = tmp_path / "checkpoints"
        folder.mkdir()
        for _ in range(9):
            learner.step_and_keep(0, folder, None, timeout=2.0)
        assert not lines.exists()  # nine updates: not a multiple of stats_every, nothing read
        learner.step_and_keep(0, folder, None, timeout=2.0)
        import json

        (line,) = [json.loads(x) for x in lines.read_text().splitlines()]
        assert line["updates"] == 10 and line["loss"] > 0 and line["td_abs"] > 0
    finally:
        learner.close()
        shared.close()


@requires_cuda
@pytest.mark.parametrize("prioritized", [False, True])
@pytest.mark.parametrize("prefetch", [False, True])
def test_no_device_synchronisation_per_update_on_cuda(tmp_path, shm_name, prioritized, prefetch):
    learner, shared = _learner(tmp_path, shm_name, "cuda", [f"replay.prioritized={str(prioritized).lower()}",
                                                          f"learner.prefetch={str(prefetch).lower()}"])  # fmt: skip
    try:
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        names = _profiled_steps(learner, 50, acts)
        syncs = [n for n in names if n in SYNCS or n in HOST_READS]
        # Event waits may appear: the prefetch thread waits for its own copy, the staged sampler for a
        # copy queued two batches earlier. No stream or device synchronisation, no host read.
        assert len([n for n in syncs if n != "cudaEventSynchronize"]) == 0, sorted(set(syncs))
        assert learner.updates == 55 and shared.board.flush() == 11
    finally:
        learner.close()
        shared.close()
