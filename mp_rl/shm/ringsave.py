"""A ring's live window on disk: written at a clean stop, read back into a new ring before actors start.

Saved as the ring holds it, one block at a time: each block's rows inside the window and, for frame
rows, the block's frame area, so frames stored once stay once (a Pong row is 7.7 KB this way, against
56 KB as stacked observations). Plain `.npy` files, read back memory-mapped:

    replay/replay.json      what the files hold and the ring spec they fit (its capacity aside)
    replay/blocks.npy       rows kept of each block, oldest block first
    replay/<field>.npy      each field's rows, block after block
    replay/frames.npy       each block's frame area (frame rows only)

`load` writes the blocks back through the ordinary writer protocol (stamps, leases), in their order,
under new seqs, keeping the newest that fit the new ring's live capacity; it then sets the rate
limiter's count of samples as if the run had been in balance, so neither side starts with a burst.
Only a clean stop writes (every writer has gone: nothing moves under the copy).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from mp_rl.files import write_json_atomic
from mp_rl.runfolder import REPLAY
from mp_rl.shm.ring import ReplayRing

FOLDER, VERSION = REPLAY, 1  # the run folder's subfolder (runfolder.REPLAY); its layout is this file's
_CHUNK = 256  # blocks copied at a time: bounded memory for a ring of any size
RESTORE_TOKEN = 2**31  # the writer token of a restore: above every member slot's


def _shape_of(spec) -> dict:
    """The spec without its capacity: what saved rows must match to be written into a ring."""
    d = spec.to_json()
    d.pop("capacity_max")
    return d


def size(ring: ReplayRing) -> int:
    """Bytes a `save` of the ring's live window would write (about: partial blocks count whole)."""
    lo, hi = ring.window()
    spec = ring.spec
    blocks = -(-(hi - lo) // spec.block) + 1
    row = sum(f.row_bytes for f in spec.fields)
    area = spec.frames.block_bytes if spec.frames is not None else 0
    return (hi - lo) * row + blocks * area


def save(ring: ReplayRing, run_dir: Path) -> dict:
    """Write the live window into `run_dir/replay` (replacing an older one); what was written."""
    spec, block, cap = ring.spec, ring.spec.block, ring.spec.capacity_max
    lo, hi = ring.window()
    first = lo - lo % block
    seqs = np.arange(first, max(first, hi + (-hi) % block), dtype=np.int64)
    keep = (ring.stamps[seqs % cap] == seqs + 1) & (seqs >= lo) & (seqs < hi)
    counts = keep.reshape(-1, block).sum(axis=1)
    nonempty = np.flatnonzero(counts)
    slots = seqs[keep] % cap
    folder = Path(run_dir) / FOLDER
    tmp = folder.with_name(f".{FOLDER}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    np.save(tmp / "blocks.npy", counts[nonempty])
    for f in spec.fields:  # in chunks: whole observations in the rows can be gigabytes
        out = np.lib.format.open_memmap(tmp / f"{f.name}.npy", "w+", np.dtype(f.dtype), (len(slots), *f.shape))
        for i in range(0, len(slots), _CHUNK * block):
            out[i : i + _CHUNK * block] = ring.fields[f.name][slots[i : i + _CHUNK * block]]
        out.flush()
        del out
    if spec.frames is not None:
        areas = ((seqs[nonempty * block] % cap) // block).astype(np.int64)  # each kept block's area
        fs = spec.frames
        out = np.lib.format.open_memmap(tmp / "frames.npy", "w+", np.dtype(fs.dtype), (len(areas), fs.area, *fs.shape))
        whole = ring.frames.reshape(-1, fs.area, *fs.shape)
        for i in range(0, len(areas), _CHUNK):
            out[i : i + _CHUNK] = whole[areas[i : i + _CHUNK]]
        out.flush()
        del out
    meta = {"version": VERSION, "spec": _shape_of(spec), "rows": int(keep.sum()), "blocks": len(nonempty)}
    write_json_atomic(tmp / "replay.json", meta)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # whole or absent: a stop killed halfway leaves only the temporary folder
    return {**meta, "bytes": sum(p.stat().st_size for p in folder.iterdir())}


def discard(run_dir: Path) -> None:
    """Remove a saved replay (a stop that saves none must not leave an older one to be restored)."""
    shutil.rmtree(Path(run_dir) / FOLDER, ignore_errors=True)


class ReplayFileError(ValueError):
    """A saved replay that does not fit this ring, or cannot be read."""


def check(run_dir: Path, spec) -> dict | None:
    """The saved replay's description if there is one that fits a ring of `spec`; None if none was
    saved; ReplayFileError (with why) if it cannot be restored. Reads headers only."""
    return _open(Path(run_dir) / FOLDER, spec)[0]


def _open(folder: Path, spec) -> tuple[dict | None, np.ndarray, dict, np.ndarray | None]:
    if not (folder / "replay.json").exists():
        return None, np.zeros(0, np.int64), {}, None
    try:
        meta = json.loads((folder / "replay.json").read_text())
        if meta.get("version") != VERSION or meta.get("spec") != _shape_of(spec):
            raise ReplayFileError("it was saved for another ring (env, n-step or frame settings changed)")
        counts = np.load(folder / "blocks.npy")
        fields = {f.name: np.load(folder / f"{f.name}.npy", mmap_mode="r") for f in spec.fields}
        frames = np.load(folder / "frames.npy", mmap_mode="r") if spec.frames is not None else None
        if counts.sum() != meta["rows"] or any(len(v) != meta["rows"] for v in fields.values()):
            raise ReplayFileError("its files disagree on the number of rows (damaged?)")
        if len(counts) and not (counts.min() >= 1 and counts.max() <= spec.block):
            raise ReplayFileError(f"a block holds other than 1..{spec.block} rows (damaged?)")
        for f in spec.fields:
            if fields[f.name].shape[1:] != f.shape or fields[f.name].dtype != np.dtype(f.dtype):
                raise ReplayFileError(f"field {f.name!r} is not {f.shape} {f.dtype} (damaged?)")
        area = None if spec.frames is None else (len(counts), spec.frames.area, *spec.frames.shape)
        if frames is not None and frames.shape != area:
            raise ReplayFileError("its frames do not match its blocks (damaged?)")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReplayFileError(f"{folder}: cannot be restored: {exc}") from None
    return meta, counts, fields, frames


def load(ring: ReplayRing, run_dir: Path) -> int:
    """Write a saved window into `ring` (before any actor writes); rows restored, 0 when none was saved."""
    meta, counts, fields, frames = _open(Path(run_dir) / FOLDER, ring.spec)
    if meta is None:
        return 0
    ends = np.cumsum(counts)
    first = max(0, len(counts) - ring.capacity // ring.spec.block)  # the newest blocks that fit the window
    w = ring.writer(RESTORE_TOKEN)
    for i in range(first, len(counts)):
        a, b = int(ends[i] - counts[i]), int(ends[i])
        rows = {name: np.asarray(v[a:b]) for name, v in fields.items()}
        w.write(rows, frames=None if frames is None else np.asarray(frames[i]), limited=False)
    restored = int(counts[first:].sum())
    limit = ring.limit
    if limit.samples_per_insert and ring.inserts > limit.min_fill:  # D = inserts * spi - samples at its centre
        ring.add("samples", int(limit.samples_per_insert * (ring.inserts - limit.min_fill)))
    return restored
