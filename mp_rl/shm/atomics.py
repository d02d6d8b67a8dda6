"""Atomic operations and futex wakeups on words in shared memory.

Why ctypes on libatomic: measured on the 2-core development machine, one `__atomic_fetch_add_8` call
through ctypes costs about 0.75 us, the `atomics` package about 10 us (it validates and wraps every
call). Every hot-path user (ring writers, the sampler, wakeups) makes one or two such calls per
*block* of transitions, never per transition, so 0.75 us is noise beside the memcpy of the block.
libatomic's functions are real `lock`-prefixed instructions on x86-64 (and LSE/LL-SC on arm64),
so they are atomic across processes that map the same page, attached ones included.

All functions take an integer address (see `address_of`). Orders follow C11: SEQ_CST unless a
weaker order is named, because these calls are rare and a full barrier is the easy proof.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import time

import numpy as np

RELAXED, CONSUME, ACQUIRE, RELEASE, ACQ_REL, SEQ_CST = range(6)


def _load_libatomic() -> ctypes.CDLL:
    name = ctypes.util.find_library("atomic") or "libatomic.so.1"
    try:
        return ctypes.CDLL(name)
    except OSError as exc:  # pragma: no cover - depends on the host
        raise ImportError(
            "mp_rl needs libatomic (Debian/Ubuntu: apt-get install libatomic1) for shared-memory atomics"
        ) from exc


def _bind(lib: ctypes.CDLL, name: str, restype, *argtypes):
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


_lib = _load_libatomic()
_i64, _i32, _vp, _int = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int
_fetch_add_8 = _bind(_lib, "__atomic_fetch_add_8", _i64, _vp, _i64, _int)
_fetch_add_4 = _bind(_lib, "__atomic_fetch_add_4", _i32, _vp, _i32, _int)
_load_8 = _bind(_lib, "__atomic_load_8", _i64, _vp, _int)
_load_4 = _bind(_lib, "__atomic_load_4", _i32, _vp, _int)
_store_8 = _bind(_lib, "__atomic_store_8", None, _vp, _i64, _int)
# libatomic's out-of-line CAS takes (ptr, expected*, desired, success_order, failure_order).
_cas_8 = _bind(_lib, "__atomic_compare_exchange_8", ctypes.c_bool, _vp, _vp, _i64, _int, _int)
_fence = _bind(_lib, "atomic_thread_fence", None, _int)


def fetch_add(addr: int, value: int) -> int:
    """Add `value` to the int64 at `addr`; return the value before the add."""
    return _fetch_add_8(addr, value, SEQ_CST)


def fetch_add32(addr: int, value: int) -> int:
    """Add `value` to the int32 at `addr` (futex words are 32-bit); return the old value."""
    return _fetch_add_4(addr, value, SEQ_CST)


def load(addr: int) -> int:
    return _load_8(addr, SEQ_CST)


def load32(addr: int) -> int:
    return _load_4(addr, SEQ_CST)


def store(addr: int, value: int) -> None:
    _store_8(addr, value, SEQ_CST)


def compare_exchange(addr: int, expected: int, desired: int) -> tuple[bool, int]:
    """Set the int64 at `addr` to `desired` if it equals `expected`; return (done, value seen)."""
    exp = ctypes.c_int64(expected)
    done = _cas_8(addr, ctypes.addressof(exp), desired, SEQ_CST, SEQ_CST)
    return bool(done), exp.value


def fence(order: int = SEQ_CST) -> None:
    """A thread fence. Orders numpy's plain loads/stores (memcpy) against the stamps around them."""
    _fence(order)


def address_of(array: np.ndarray, index: int = 0) -> int:
    """Address of element `index` of a C-contiguous 1-D array (a word in a shared segment)."""
    return array.ctypes.data + index * array.itemsize


# --- futex -------------------------------------------------------------------------------------
# Not FUTEX_PRIVATE_FLAG: the waiters and wakers are different processes sharing the page.
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine())
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def futex_wait(addr: int, expected: int, timeout_s: float) -> bool:
    """Sleep while the int32 at `addr` equals `expected`, at most `timeout_s`.

    Returns False on timeout, True when woken (or when the word had already changed). Spurious
    wakeups are possible; callers re-check their condition.
    """
    if _SYS_FUTEX is None:  # pragma: no cover - other architectures: a short nap instead
        time.sleep(min(timeout_s, 0.001))
        return True
    timeout_s = max(timeout_s, 0.0)
    ts = _Timespec(int(timeout_s), int((timeout_s % 1.0) * 1e9))
    rc = _syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAIT, ctypes.c_int(expected), ctypes.byref(ts), None, 0)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EAGAIN, errno.EINTR):
        return True
    if err == errno.ETIMEDOUT:
        return False
    raise OSError(err, os.strerror(err))


def futex_wake(addr: int, count: int = 2**31 - 1) -> int:
    """Wake up to `count` processes sleeping on the int32 at `addr`; return how many woke."""
    if _SYS_FUTEX is None:  # pragma: no cover
        return 0
    return _syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAKE, ctypes.c_int(count), None, None, 0)
