"""mp_rl's disk cache: measurements that depend only on the machine and the software, kept as plain JSON.

Everything lives under `$XDG_CACHE_HOME/mp_rl` (default `~/.cache/mp_rl`), one file per entry, named by a
hash of everything that could change the answer (as Triton keys its autotuner's disk cache): a new GPU
driver, a torch upgrade or another env is a different file, never a stale answer. A user may read or
delete any of it. An entry is trusted no further than the config is: one that is not the user's own file,
that others may write, that is not JSON, or that its kind's schema refuses (a pydantic model, strict as
the config's) is ignored with one logged line and measured again; what is applied is clamped by its user.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
from importlib import metadata
from pathlib import Path

import psutil
from pydantic import BaseModel, ValidationError

from mp_rl.start import resources

log = logging.getLogger("mp_rl.cache")

LIBRARIES = ("torch", "numpy", "gymnasium", "ale-py", "envpool", "minatar", "mp_rl")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mp_rl"


def versions() -> dict[str, str | None]:
    """Versions of the libraries that shape a measurement (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _gpu() -> list[str]:
    """Each GPU's name and memory, and the driver: from nvidia-ml-py, without touching CUDA."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver, no library: no GPU as far as a measurement is concerned
        return []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        out = [f"driver {driver.decode() if isinstance(driver, bytes) else driver}"]
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            out.append(f"{name} {pynvml.nvmlDeviceGetMemoryInfo(h).total}")
        return out
    except Exception:
        return []
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def fingerprint() -> dict:
    """The machine as a measurement sees it: CPU model, usable CPUs, RAM (GiB), GPUs and driver."""
    from mp_rl.hardware import cpu_model  # hardware imports torch: not needed to read the cache dir

    return {
        "cpu": cpu_model(),
        "usable_cpus": resources.usable_cpus(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30),
        "gpus": _gpu(),
        "machine": platform.machine(),
    }


def key(*parts: object) -> str:
    """A short hash of JSON-able parts: the file name of one cache entry."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def path(kind: str, digest: str) -> Path:
    return cache_dir() / f"{kind}-{digest}.json"


def load(kind: str, digest: str, schema: type[BaseModel] | None = None) -> dict | None:
    """The cached entry, or None: when there is none, or when it cannot be trusted (one logged line)."""
    p = path(kind, digest)
    try:
        st = p.stat()
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        who = "not this user's own" if st.st_uid != os.getuid() else "writable by others"
        log.warning("cache entry %s ignored: the file is %s", p, who)
        return None
    try:
        data = json.loads(p.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if schema is not None:
            schema.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        log.warning("cache entry %s ignored (measured again): %s: %s", p, where, err["msg"])
        return None
    except (OSError, ValueError) as exc:
        log.warning("cache entry %s ignored (measured again): %s", p, exc)
        return None
    return data


def save(kind: str, digest: str, data: dict) -> Path | None:
    """Write an entry atomically, owner-only; a cache that cannot be written is not an error (None)."""
    from mp_rl.files import write_json_atomic

    target = path(kind, digest)
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_atomic(target, data)
    except OSError:
        return None
    return target
