"""A worker's memory between tasks: freed heap given back to the OS at most every few seconds, and
long-lived objects kept out of Python's full garbage collections.

The encoder allocates activations of a new size for every padded batch shape; glibc's malloc keeps
the freed blocks in its arenas, so an embed worker's resident memory grew with every new shape
(+390 MB over the last 12 % of a 100k-item job; +450 MB over 6,000 texts in a bare loop).
``malloc_trim(0)`` returns them: measured flat at ~510 MB over the same 6,000 texts.

Not after every task: the next task then page-faults all its activations back in. Trimming after
each 256-text task made the worker burn ~10 % more CPU than the same encoding without it (22.0
against 24.1 CPU-seconds per 2,000 texts, AMD EPYC, bf16). Once every ``TRIM_INTERVAL_SECONDS``
keeps memory bounded by what that many seconds of tasks retain, for a few tenths of a percent.
A no-op where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import time

TRIM_INTERVAL_SECONDS = 10.0
_last_trim = float("-inf")


@functools.cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory(min_interval: float = TRIM_INTERVAL_SECONDS) -> bool:
    """Trim the heap unless this process did so less than ``min_interval`` seconds ago; whether it did."""
    global _last_trim
    trim = _malloc_trim()
    now = time.monotonic()
    if trim is None or now - _last_trim < min_interval:
        return False
    trim(0)
    _last_trim = now
    return True


def resident_mb() -> float | None:
    """This process's resident memory in MB (Linux ``/proc``), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# Python's full (generation 2) collection walks every tracked object. A worker holds hundreds of
# thousands for as long as it lives (torch, transformers, Celery, the models): one full collection
# took 110-230 ms on the AMX VM, and when it fell inside a one-text job that job took 200 ms longer
# (docs/BENCHMARKS.md, issue 10, tenth session). Frozen objects are skipped by every collection;
# refcounting still frees them.
SLOW_FULL_COLLECTION_SECONDS = 0.02
_full_collection_started: float | None = None
_slow_full_collection_seen = False


def _time_full_collections(phase: str, info: dict) -> None:
    global _full_collection_started, _slow_full_collection_seen
    if info.get("generation") != 2:
        return
    if phase == "start":
        _full_collection_started = time.perf_counter()
    elif _full_collection_started is not None:
        if time.perf_counter() - _full_collection_started > SLOW_FULL_COLLECTION_SECONDS:
            _slow_full_collection_seen = True
        _full_collection_started = None


def watch_full_collections() -> None:
    """Time this process's full collections from now on (idempotent); the worker's start calls it."""
    if _time_full_collections not in gc.callbacks:
        gc.callbacks.append(_time_full_collections)


def freeze_survivors_after_slow_collection() -> bool:
    """After a task: if a full collection since the last call was slow, freeze what is alive now, so
    the next full collections walk only what the process creates from here on; whether it froze.

    The young generations are collected first, so the task's own garbage is not frozen with the
    survivors (a frozen cycle would never be collected). The heap a worker freezes is its models and
    libraries, loaded once: after a freeze or two its full collections stay short and this stops."""
    global _slow_full_collection_seen
    if not _slow_full_collection_seen:
        return False
    gc.collect(1)
    gc.freeze()
    _slow_full_collection_seen = False
    return True
