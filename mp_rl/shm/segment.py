"""Named shared-memory segments and the layouts that describe what lives in them.

A `Segment` is a file in /dev/shm created `O_EXCL` with mode 0600 by exactly one owner, who alone
unlinks it. Other processes attach by name, including ones the owner never spawned (an actor
started by hand in another terminal). We open /dev/shm directly instead of using
`multiprocessing.shared_memory`: on Python < 3.13 its resource tracker registers every *attach*
and unlinks the segment when the attaching process exits, destroying a segment it does not own.

A `Layout` places named arrays in a segment (64-byte aligned so hot counters do not share a cache
line; page aligned when large, so ranges of a big array can be released with madvise).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import re
import stat
from dataclasses import dataclass

import numpy as np

SHM_DIR = "/dev/shm"  # module-level so tests (and cleanup's --shm-dir) can point it elsewhere
PREFIX = "mp_rl."
PAGE = mmap.PAGESIZE
# A start names its segments `mp_rl.<run id>-<8 random hex>.<part>` (`manifest.SharedRun.create`):
# the random part keeps another local user from pre-creating them. `run_of` strips it again.
TAG_HEX = 8
_TAG = re.compile(rf"-[0-9a-f]{{{TAG_HEX}}}$")


def run_of(segments_id: str) -> str:
    """The run id in a segment name's middle part (`<run id>-<tag>`)."""
    return _TAG.sub("", segments_id)


_NAME_OK = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class SegmentError(RuntimeError):
    """A segment could not be created or attached; the message says which and why."""


class SegmentExists(SegmentError):
    """The name is taken: another run's segment, a dead run's, or someone else's file."""


@dataclass(frozen=True)
class ArraySpec:
    """One named array in a segment: dtype string, shape, byte offset."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.shape, dtype=np.int64)))


class Layout:
    """Ordered named arrays with their offsets; serialisable to JSON for the manifest.

    >>> lay = Layout.build([("cursor", "int64", (1,)), ("data", "float32", (1024, 4))])
    >>> lay["data"].offset % 64 == 0
    True
    """

    def __init__(self, arrays: list[ArraySpec]):
        self.arrays = {a.name: a for a in arrays}
        self.size = max((a.offset + a.nbytes for a in arrays), default=0)

    @classmethod
    def build(cls, fields: list[tuple[str, str, tuple[int, ...]]]) -> Layout:
        arrays, offset = [], 0
        for name, dtype, shape in fields:
            nbytes = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
            align = PAGE if nbytes >= PAGE else 64
            offset = -(-offset // align) * align
            arrays.append(ArraySpec(name, np.dtype(dtype).str, tuple(int(s) for s in shape), offset))
            offset += nbytes
        return cls(arrays)

    def __getitem__(self, name: str) -> ArraySpec:
        return self.arrays[name]

    def views(self, buf: mmap.mmap) -> dict[str, np.ndarray]:
        return {
            a.name: np.ndarray(a.shape, dtype=np.dtype(a.dtype), buffer=buf, offset=a.offset)
            for a in self.arrays.values()
        }

    def to_json(self) -> list[dict]:
        return [
            {"name": a.name, "dtype": a.dtype, "shape": list(a.shape), "offset": a.offset} for a in self.arrays.values()
        ]

    @classmethod
    def from_json(cls, items: list[dict]) -> Layout:
        return cls([ArraySpec(i["name"], i["dtype"], tuple(i["shape"]), int(i["offset"])) for i in items])


class Segment:
    """A named shared-memory mapping. `create` makes and owns it; `attach` maps an existing one."""

    def __init__(self, name: str, fd: int, size: int, owner: bool):
        self.name, self.size, self.owner = name, size, owner
        self._fd = fd
        self.buf = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        probe = ctypes.c_char.from_buffer(self.buf)
        self.address = ctypes.addressof(probe)
        del probe  # release the buffer export at once, or the mapping could never be closed

    @staticmethod
    def path(name: str) -> str:
        if not _NAME_OK.match(name):
            raise SegmentError(f"invalid segment name {name!r}")
        return os.path.join(SHM_DIR, name)

    @staticmethod
    def rounded(size: int) -> int:
        """The size a segment made for `size` bytes has: whole pages, at least one."""
        return max(PAGE, -(-size // PAGE) * PAGE)

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        path = cls.path(name)
        size = cls.rounded(size)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise SegmentExists(
                f"segment {name} already exists (another run, or a dead one: mp_rl.tools.cleanup)"
            ) from None
        try:
            os.fchmod(fd, 0o600)  # the umask cannot widen 0600, but be explicit about intent
            os.ftruncate(fd, size)  # sparse: pages are committed only when first touched
            return cls(name, fd, size, owner=True)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise

    @classmethod
    def attach(cls, name: str, size: int | None = None) -> Segment:
        """Map an existing segment; `size`, when given, is the size its layout needs (checked)."""
        path = cls.path(name)
        try:
            # O_NOFOLLOW: a symlink planted under the name is refused, not followed to some other file;
            # O_NONBLOCK: a FIFO planted under the name cannot block the open (S_ISREG refuses it next).
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise SegmentError(f"segment {name} does not exist (the run has ended or never started)") from None
        except PermissionError:
            raise SegmentError(f"segment {name} belongs to another user") from None
        except OSError as exc:  # ELOOP: a symlink
            raise SegmentError(f"segment {name} cannot be opened: {exc.strerror}") from None
        st = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(st.st_mode):
            problem = "is not a regular file"
        elif st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
            problem = "is not owner-only or belongs to another user"
        elif size is not None and st.st_size != cls.rounded(size):
            problem = f"holds {st.st_size:,} bytes but its layout makes {cls.rounded(size):,}"
        if problem:
            os.close(fd)
            raise SegmentError(f"segment {name} {problem}; refusing to attach")
        return cls(name, fd, st.st_size, owner=False)

    def release(self, offset: int, length: int) -> None:
        """Give the pages fully inside [offset, offset+length) back to the system; they read as zeros."""
        start = -(-offset // PAGE) * PAGE
        end = ((offset + length) // PAGE) * PAGE
        if end > start:
            self.buf.madvise(mmap.MADV_REMOVE, start, end - start)

    def allocated_bytes(self) -> int:
        """Bytes of the segment actually backed by memory (what shrinking must reduce)."""
        return os.fstat(self._fd).st_blocks * 512

    def close(self) -> None:
        """Unmap and close. Views still alive keep the mapping until they are collected."""
        # Numpy views may still reference the mapping; then it goes when they do.
        with contextlib.suppress(BufferError):
            self.buf.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def unlink(self) -> None:
        """Remove the name (owner only). Processes that still map it keep their mapping."""
        if not self.owner:
            raise SegmentError(f"only the owner may unlink {self.name}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(self.name))


def list_segments() -> list[str]:
    """Names of the mp_rl segments present in /dev/shm."""
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(PREFIX))
    except FileNotFoundError:  # pragma: no cover
        return []
