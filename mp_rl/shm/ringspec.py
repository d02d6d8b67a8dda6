"""What a replay ring stores (fields, reserved maximum, write block), its segment layout, and the error its
waiters get when it closes."""

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
class RingSpec:
    """What a ring stores: named per-row fields, the reserved maximum, the write block size."""

    fields: tuple[FieldSpec, ...]
    capacity_max: int
    block: int = 64

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

    @property
    def chunk(self) -> int:
        return ringmath.chunk_rows(self.block, [8] + [f.row_bytes for f in self.fields], PAGE)

    def normalised(self) -> RingSpec:
        cap = ringmath.round_capacity_max(self.capacity_max, self.chunk)
        return RingSpec(self.fields, cap, self.block)

    def layout(self) -> Layout:
        cap = self.capacity_max
        words = [(name, "<i8", (8,)) for name in ("cursor", "window", "inserts", "samples", "tally")]
        wakes = [("wake_sample", "<i4", (16,)), ("wake_insert", "<i4", (16,))]
        rows = [("stamps", "<i8", (cap,)), ("leases", "<i8", (cap // self.block,))]
        data = [(f"f_{f.name}", f.dtype, (cap, *f.shape)) for f in self.fields]
        return Layout.build(words + wakes + rows + data)

    def to_json(self) -> dict:
        fields = [{"name": f.name, "shape": list(f.shape), "dtype": f.dtype} for f in self.fields]
        return {"fields": fields, "capacity_max": self.capacity_max, "block": self.block}

    @classmethod
    def from_json(cls, d: dict) -> RingSpec:
        """The spec a manifest records, checked: a damaged or crafted one raises ValueError, never
        yields a layout whose offsets disagree with the live segment."""
        fields = tuple(
            FieldSpec(_name(f.get("name")), _shape(f.get("shape")), numeric_dtype(f.get("dtype")))
            for f in _list(d.get("fields"), "fields")
        )
        spec = cls(fields, _int(d.get("capacity_max"), "capacity_max"), _int(d.get("block"), "block"))
        if not fields or spec.normalised() != spec:
            raise ValueError("ring spec: capacity_max is not a whole number of chunks, or no fields")
        return spec


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
    """Zero rows shaped for `spec` (tests and examples)."""
    return {f.name: np.zeros((n, *f.shape), dtype=f.dtype) for f in spec.fields}
