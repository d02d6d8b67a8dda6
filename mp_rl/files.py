"""Files written whole, owner-only and atomically: a reader sees the old file or the new one, never half.

Run folders hold a run's config, checkpoints, manifest and saved replay; the tuner's cache holds
what it measured. All of them are written through `private_file`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def private_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file written owner-only (0600) through a temporary file and a rename: readers never
    see half a file, and no other user ever sees any of it. Nothing is left if the writer raises.
    Durable: the file is fsynced before the rename, and its folder after."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # And the rename itself: without the folder's fsync a power loss can undo it, or leave the new
    # name on an empty file on file systems that order metadata before data.
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_private(path: Path, text: str | bytes) -> None:
    """Write a whole file through `private_file`."""
    with private_file(path) as f:
        f.write(text.encode() if isinstance(text, str) else text)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON owner-only and atomically (`write_private`)."""
    write_private(path, json.dumps(data, indent=2) + "\n")
