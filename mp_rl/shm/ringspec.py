"""What a replay ring stores (fields, frames, reserved maximum, write block), its segment layout, and the
error its waiters get when it closes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mp_rl.shm import ringmath
from mp_rl.shm.segment import PAGE, Layout


class RingClosed(RuntimeError):
    """The ring was closed for shutdown while a caller waited."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def row_bytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.shape, dtype=np.int64)))


@dataclass(frozen=True)
class FrameSpec:
    """Stacked observations kept one frame per step: each block owns `area` frames (see `shm.frames`)."""

    shape: tuple[int, ...]  # one frame
    dtype: str
    stack: int  # frames per observation
    area: int  # frames per block: block + stack - 1 + n

    @property
    def block_bytes(self) -> int:
        return self.area * FieldSpec("frame", self.shape, self.dtype).row_bytes


POS = FieldSpec("pos", (3,), "<i2")  # a frame row's area positions: observation, next observation, episode start
TRANSITION = ("obs", "action", "reward", "discount", "next_obs")  # what the learner's batch holds


@dataclass(frozen=True)
class RingSpec:
    """What a ring stores: named per-row fields, the reserved maximum, the write block size, and
    (frame rows) the per-block frame areas that `obs` and `next_obs` are rebuilt from."""

    fields: tuple[FieldSpec, ...]
    capacity_max: int
    block: int = 64
    frames: FrameSpec | None = None

    @classmethod
    def for_transitions(
        cls, obs_shape, obs_dtype, capacity_max: int, block: int = 64, action_dtype="int64"
    ) -> RingSpec:
        """Rows for n-step DQN: obs, action, n-step return, discount (gamma^n, 0 at terminal), next obs."""
        obs = (tuple(obs_shape), np.dtype(obs_dtype).str)
        fields = (
            FieldSpec("obs", *obs),
            FieldSpec("action", (), np.dtype(action_dtype).str),
            FieldSpec("reward", (), "<f4"),
            FieldSpec("discount", (), "<f4"),
            FieldSpec("next_obs", *obs),
        )
        return cls(fields, capacity_max, block)

    @classmethod
    def for_frames(
        cls, frame_shape, dtype, stack: int, n: int, capacity_max: int, block: int = 64, action_dtype="int64"
    ) -> RingSpec:
        """n-step DQN rows whose `stack`-frame observations are stored one frame per step."""
        fields = (
            FieldSpec("action", (), np.dtype(action_dtype).str),
            FieldSpec("reward", (), "<f4"),
            FieldSpec("discount", (), "<f4"),
            POS,
        )
        frames = FrameSpec(tuple(frame_shape), np.dtype(dtype).str, stack, block + stack - 1 + n)
        return cls(fields, capacity_max, block, frames)

    def batch_fields(self) -> tuple[FieldSpec, ...]:
        """The fields of a sampled batch: the stored ones, or for frame rows the rebuilt transition."""
        if self.frames is None:
            return self.fields
        f, row = self.frames, {x.name: x for x in self.fields}
        obs = FieldSpec("obs", (f.stack, *f.shape), f.dtype)
        return tuple(FieldSpec(name, obs.shape, obs.dtype) if "obs" in name else row[name] for name in TRANSITION)

    @property
    def bytes_per_row(self) -> float:
        """Shared bytes each row slot costs: stamp, fields, and its share of the block's lease and frames."""
        per_block = 8 + (self.frames.block_bytes if self.frames else 0)
        return 8 + sum(f.row_bytes for f in self.fields) + per_block / self.block

    @property
    def chunk(self) -> int:
        per_block = (self.frames.block_bytes,) if self.frames else ()
        return ringmath.chunk_rows(self.block, [8] + [f.row_bytes for f in self.fields], PAGE, per_block)

    def normalised(self) -> RingSpec:
        cap = ringmath.round_capacity_max(self.capacity_max, self.chunk)
        return RingSpec(self.fields, cap, self.block, self.frames)

    def layout(self) -> Layout:
        cap = self.capacity_max
        words = [(name, "<i8", (8,)) for name in ("cursor", "window", "inserts", "samples", "tally")]
        wakes = [("wake_sample", "<i4", (16,)), ("wake_insert", "<i4", (16,))]
        rows = [("stamps", "<i8", (cap,)), ("leases", "<i8", (cap // self.block,))]
        data = [(f"f_{f.name}", f.dtype, (cap, *f.shape)) for f in self.fields]
        if self.frames is not None:
            f = self.frames
            data.append(("frames", f.dtype, (cap // self.block * f.area, *f.shape)))
        return Layout.build(words + wakes + rows + data)

    def to_json(self) -> dict:
        fields = [{"name": f.name, "shape": list(f.shape), "dtype": f.dtype} for f in self.fields]
        d = {"fields": fields, "capacity_max": self.capacity_max, "block": self.block}
        if self.frames is not None:
            f = self.frames
            d["frames"] = {"shape": list(f.shape), "dtype": f.dtype, "stack": f.stack, "area": f.area}
        return d

    @classmethod
    def from_json(cls, d: dict) -> RingSpec:
        """The spec a manifest records, checked: a damaged or crafted one raises ValueError, never
        yields a layout whose offsets disagree with the live segment."""
        fields = tuple(
            FieldSpec(_name(f.get("name")), _shape(f.get("shape")), numeric_dtype(f.get("dtype")))
            for f in _list(d.get("fields"), "fields")
        )
        block = _int(d.get("block"), "block")
        frames = _frames(d["frames"], fields, block) if d.get("frames") is not None else None
        spec = cls(fields, _int(d.get("capacity_max"), "capacity_max"), block, frames)
        if not fields or spec.normalised() != spec:
            raise ValueError("ring spec: capacity_max is not a whole number of chunks, or no fields")
        return spec


def _frames(d: object, fields: tuple[FieldSpec, ...], block: int) -> FrameSpec:
    """A frame area spec, checked against the rows that index it (positions are int16)."""
    if not isinstance(d, dict):
        raise ValueError("ring spec: frames must be an object")
    f = FrameSpec(_shape(d.get("shape")), numeric_dtype(d.get("dtype")), _int(d.get("stack"), "frames.stack"),
                  _int(d.get("area"), "frames.area"))  # fmt: skip
    if POS not in fields or not block + f.stack <= f.area < 2**15:
        raise ValueError("ring spec: frames need a pos field and an area of block + stack .. 32767 frames")
    return f


def numeric_dtype(text: object) -> str:
    """A dtype string that names plain numbers; anything else (objects, strings, voids) is refused.

    >>> numeric_dtype("<f4")
    '<f4'
    """
    try:
        dt = np.dtype(text) if isinstance(text, str) else None
    except TypeError:
        dt = None
    if dt is None or dt.kind not in "biuf" or dt.hasobject:
        raise ValueError(f"dtype {text!r} is not a plain numeric type")
    return dt.str


def _int(x: object, what: str) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or x < 1:
        raise ValueError(f"{what} must be a positive integer, got {x!r}")
    return x


def _list(x: object, what: str) -> list:
    if not isinstance(x, list) or not all(isinstance(i, dict) for i in x):
        raise ValueError(f"{what} must be a list of objects")
    return x


def _shape(x: object) -> tuple[int, ...]:
    if not isinstance(x, list) or len(x) > 8:
        raise ValueError(f"shape must be a list of at most 8 sizes, got {x!r}")
    return tuple(_int(i, "a shape entry") for i in x)


def _name(x: object) -> str:
    if not isinstance(x, str) or not x.isidentifier():
        raise ValueError(f"field name must be an identifier, got {x!r}")
    return x


def rows_like(spec: RingSpec, n: int) -> dict[str, np.ndarray]:
    """Zero rows shaped for `spec`'s stored fields (tests and examples)."""
    return {f.name: np.zeros((n, *f.shape), dtype=f.dtype) for f in spec.fields}
