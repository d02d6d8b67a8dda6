"""The learner's device paths: the compiled loss (CPU here, CUDA graphs on a GPU), and every CUDA-only
path, marked `gpu`: AMP in bf16 and in fp16 with its scaler, the prefetch copy stream, the pinned
board's asynchronous publish and pickup, nvidia-ml-py's figures in the monitor."""

from __future__ import annotations

import pytest
import torch
from helpers import requires_cuda
from test_learner_sync import _learner


def _same_losses(tmp_path, shm_name, device: str, mode: str) -> None:
    """The compiled loss equals the eager one on the same batch and weights."""
    learner, shared = _learner(tmp_path, shm_name, device, [f"learner.compile={mode}", "learner.prefetch=false"])
    try:
        batch = learner.next_batch(timeout=2.0)
        eager_loss, eager_td, _ = learner._loss_terms(batch)
        for _ in range(2):  # the first call compiles; reduce-overhead records its graph on a later one
            loss, td, _ = learner._losses(batch)
        torch.testing.assert_close(loss, eager_loss, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(td, eager_td, rtol=1e-4, atol=1e-5)
        for _ in range(5):
            assert learner.step(timeout=2.0)
    finally:
        learner.close()
        shared.close()


@pytest.mark.timeout(180)
def test_the_compiled_loss_equals_the_eager_one_on_cpu(tmp_path, shm_name):
    _same_losses(tmp_path, shm_name, "cpu", "default")


@requires_cuda
def test_the_loss_captured_in_cuda_graphs_equals_the_eager_one(tmp_path, shm_name):
    _same_losses(tmp_path, shm_name, "cuda", "reduce-overhead")


@requires_cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_trains_in_both_precisions_and_fp16_keeps_its_scaler_on_the_device(tmp_path, shm_name, dtype):
    learner, shared = _learner(tmp_path, shm_name, "cuda", [f"learner.amp_dtype={dtype}"])
    try:
        assert learner.amp_dtype == getattr(torch, dtype)
        assert learner.scaler.is_enabled() == (dtype == "float16")
        before = learner.flat.clone()
        for _ in range(30):
            assert learner.step(timeout=5.0)
        loss = (learner.sums[0] / learner.summed).item()
        assert torch.isfinite(learner.flat).all() and not torch.equal(before, learner.flat) and loss == loss
        if dtype == "float16":
            assert learner.scaler.get_scale() > 0 and learner.scaler._scale.is_cuda
    finally:
        learner.close()
        shared.close()


@requires_cuda
def test_the_prefetch_stream_delivers_the_rows_it_sampled(tmp_path, shm_name):
    from mp_rl.testing import check_rows

    learner, shared = _learner(tmp_path, shm_name, "cuda", ["learner.prefetch=true"])
    try:
        assert learner.feed.stream is not None
        for _ in range(20):
            batch = learner.next_batch(timeout=5.0)
            assert batch["obs"].is_cuda
            host = {k: v.cpu() for k, v in batch.items()}
            obs = host["obs"]
            host["action"] = obs[:, 1].long() * 3 + obs[:, 0].long()  # the rows were written with action % 2
            assert (batch["action"].cpu() == host["action"] % 2).all()
            assert check_rows(host).all()  # every row is one writer's whole row, copied intact
    finally:
        learner.close()
        shared.close()


@requires_cuda
def test_an_async_publish_is_invisible_until_its_copy_has_landed(tmp_path, shm_name):
    learner, shared = _learner(tmp_path, shm_name, "cuda", [])
    try:
        board = shared.board
        assert board._pinned
        v0 = learner.publish()
        out = torch.empty(board.numel)
        torch.cuda._sleep(50_000_000)  # keep the stream busy, so the copy below is still queued
        v1 = board.begin_publish(learner.flat.detach() + 1)
        assert v1 == v0 + 1 and board.version == v0  # readers still see the previous version
        assert board.read_into(out) == v0
        assert board.flush() == v1 and board.read_into(out, v0) == v1
        torch.testing.assert_close(out, learner.flat.detach().cpu() + 1)
    finally:
        learner.close()
        shared.close()


@requires_cuda
def test_the_monitor_reads_the_gpu_through_nvidia_ml_py():
    from mp_rl.monitor.sources import Gpu

    g = Gpu().sample()
    assert g["vram_total"] > 0 and 0 <= g["gpu_util"] <= 1 and g["vram_used"] > 0


@requires_cuda
def test_the_learners_vram_is_within_a_fifth_of_the_budget(tmp_path, shm_name):
    """The budget's VRAM line (parameters x5, activations at the batch, two device batches) against
    what torch's allocator held at its peak over 30 updates, with a network large enough to matter."""
    from mp_rl.config import load_config
    from mp_rl.start.preflight import plan

    extra = ["learner.hidden=[2048,2048]", "learner.max_batch_size=256", "learner.batch_size=256", "learner.amp=false"]
    torch.cuda.reset_peak_memory_stats()
    learner, shared = _learner(tmp_path, shm_name, "cuda", extra)
    try:
        for _ in range(30):
            assert learner.step(timeout=5.0)
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated()
        over = ["learner.device=cuda", "replay.min_fill=64", "replay.samples_per_insert=null", *extra]
        estimate = plan(load_config("configs/smoke.yaml", over)).budget.learner(256).vram
        assert 0.8 <= estimate / measured <= 1.2, (estimate, measured)
    finally:
        learner.close()
        shared.close()


@requires_cuda
def test_the_average_is_kept_on_the_device_and_published_at_the_stop(tmp_path, shm_name):
    """With `policy_ema` the loop's asynchronous publishes carry the online weights and the average
    folds on the device between them; `publish_policy` puts exactly the average on the board."""
    learner, shared = _learner(tmp_path, shm_name, "cuda", ["learner.policy_ema=0.9"])
    try:
        out = torch.empty(shared.board.numel)
        for _ in range(13):
            assert learner.step(timeout=2.0)
        shared.board.flush()
        shared.board.read_into(out)
        n = learner.flat.numel()
        torch.testing.assert_close(out[:n], learner.flat.detach().cpu())  # what actors act with
        learner.publish_policy()
        shared.board.read_into(out)
        torch.testing.assert_close(out[:n], learner.policy_flat.cpu())
        assert learner.policy_flat.is_cuda and not torch.equal(learner.policy_flat, learner.flat)
    finally:
        learner.close()
        shared.close()
