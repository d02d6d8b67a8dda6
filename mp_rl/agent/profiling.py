"""torch.profiler around the learner's updates, over one scheduled window (wait / warmup / active).

When the window closes it writes, into `<run>/profile/`: a Chrome trace (`learner_trace.json`, open in
chrome://tracing or Perfetto), the same trace under `tensorboard/`
(named as the PyTorch profiler plugin expects: `tensorboard --logdir <run>/profile/tensorboard`)
and `learner_top_ops.txt`, the operators by self time. Off (a no-op) unless `logging.torch_profile`.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile, schedule

log = logging.getLogger("mp_rl.agent.learner")


class LearnerProfiler:
    def __init__(self, enabled: bool, folder: Path, window: tuple[int, int, int], cuda: bool):
        self.prof = None
        self.folder = Path(folder)
        if not enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        wait, warmup, active = window
        self.sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        self.prof = profile(
            activities=activities,
            schedule=schedule(wait=wait, warmup=warmup, active=active, repeat=1),
            on_trace_ready=self._ready,
            record_shapes=True,
        )
        self.prof.__enter__()

    def _ready(self, prof) -> None:
        try:
            trace = self.folder / "learner_trace.json"
            prof.export_chrome_trace(str(trace))  # kineto saves a trace once: the TensorBoard copy is a copy
            board = self.folder / "tensorboard"
            board.mkdir(exist_ok=True)
            shutil.copyfile(trace, board / f"learner.{int(time.time() * 1000)}.pt.trace.json")  # the plugin's naming
            table = prof.key_averages().table(sort_by=self.sort, row_limit=20)
            (self.folder / "learner_top_ops.txt").write_text(table + "\n")
        except Exception:  # a profiler failure must never stop training
            log.exception("torch.profiler export failed")

    def step(self) -> None:
        if self.prof is not None:
            self.prof.step()

    def close(self) -> None:
        if self.prof is not None:
            self.prof.__exit__(None, None, None)
            self.prof = None
