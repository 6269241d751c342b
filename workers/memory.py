"""Give freed heap back to the OS between encoder tasks, once it has grown by a set amount.

The encoder allocates activations of a new size for every padded batch shape; glibc's malloc keeps
the freed blocks in its arenas, so an embed worker's resident memory grew with every new shape
(+390 MB over the last 12 % of a 100k-item job; +450 MB over 6,000 texts in a bare loop).
``malloc_trim(0)`` returns them: measured flat at ~510 MB over the same 6,000 texts.

Only when the heap has grown: a trim makes the next task page-fault all its activations back in.
Trimming before each task encoded ~4 % slower (2,000 AG News texts in two tasks, AMX VM), and
trimming at most every 10 s still cost the pipeline a few points where jobs come every few
seconds (docs/BENCHMARKS.md, issue 10, twelfth session). A worker encoding texts of shapes it has
seen stays ~150-200 MB above its trimmed size and never trims; new shapes that keep growing it
are trimmed every ``TRIM_AFTER_GROWTH_MB``, which bounds what freed heap a worker keeps.
A no-op where libc is not glibc or ``/proc`` cannot be read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

TRIM_AFTER_GROWTH_MB = 256.0
_resident_after_trim: float | None = None  # this process's resident MB right after its last trim


@functools.cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory(growth_mb: float = TRIM_AFTER_GROWTH_MB) -> bool:
    """Trim the heap if this process is ``growth_mb`` larger than right after its last trim (the first
    call trims, to know that size); whether it did."""
    global _resident_after_trim
    trim, resident = _malloc_trim(), resident_mb()
    if trim is None or resident is None:
        return False
    if _resident_after_trim is not None and resident < _resident_after_trim + growth_mb:
        return False
    trim(0)
    _resident_after_trim = resident_mb()
    return True


def resident_mb() -> float | None:
    """This process's resident memory in MB (Linux ``/proc``), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
