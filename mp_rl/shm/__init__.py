"""The shared-memory core: atomics and futexes, the replay ring, the weight board, the control block."""

from mp_rl.shm.board import WeightBoard, flatten_parameters
from mp_rl.shm.control import ControlBlock, Kind, State
from mp_rl.shm.manifest import AttachError, SharedRun, read_manifest
from mp_rl.shm.ring import FieldSpec, ReplayRing, RingClosed, RingSampler, RingSpec, RingWriter
from mp_rl.shm.segment import Segment, SegmentError, list_segments
from mp_rl.shm.sync import RateLimit, RateLimitError, Wakeup

__all__ = [
    "AttachError",
    "ControlBlock",
    "FieldSpec",
    "Kind",
    "RateLimit",
    "RateLimitError",
    "ReplayRing",
    "RingClosed",
    "RingSampler",
    "RingSpec",
    "RingWriter",
    "Segment",
    "SegmentError",
    "SharedRun",
    "State",
    "Wakeup",
    "WeightBoard",
    "flatten_parameters",
    "list_segments",
    "read_manifest",
]  # fmt: skip
