"""The resource monitor: measure the machine and the pipeline, name the bottleneck, move the knobs."""

from mp_rl.monitor.monitor import Monitor

__all__ = ["Monitor"]
