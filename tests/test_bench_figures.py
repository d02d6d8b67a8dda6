"""The benchmarks' arithmetic on status lines, where a unit slip would print a wrong figure."""

from __future__ import annotations

from benchmarks.flagship import summary, vram_text


def _line(t: float, **kw) -> dict:
    base = {"time": t, "env_steps": 1000 * t, "updates": 10 * t, "actors": 15, "batch_size": 128, "weight_lag": 2,
            "replay_size": 5000, "gpu_util": 0.25, "vram_used": 0.0175, "bottleneck": "learner"}  # fmt: skip
    return {**base, **kw}


def test_the_flagships_vram_is_a_share_of_the_device_turned_into_gib():
    """The status lines give GPU memory as a share (0..1) of the device's; reading it as bytes printed
    '0.0 GiB' for a learner that held 2.5 GB of an H200."""
    lines = [_line(float(t)) for t in range(10)]
    r = summary(lines, lines[2:], bytes_per_row=100.0, skip=4, one_core=1000.0, vram_total=141 * 2**30)
    assert abs(r["vram_used_gib"] - 0.0175 * 141) < 1e-9
    assert vram_text(r) == "2.5 GiB, 1.8% of the device"
    assert r["frames_per_s"] == 4000 and r["scaling"] == 4000 / (15 * 1000)


def test_without_a_gpu_the_flagship_has_no_vram_figure():
    lines = [_line(float(t), vram_used=None, gpu_util=None) for t in range(4)]
    r = summary(lines, lines, bytes_per_row=100.0, skip=1, one_core=1000.0, vram_total=None)
    assert r["vram_used_gib"] is None and vram_text(r) == "—"
