"""Give freed heap back to the OS after each encoder task.

The encoder allocates activations of a new size for every padded batch shape; glibc's malloc keeps
the freed blocks in its arenas, so an embed worker's resident memory grew with every new shape
(+390 MB over the last 12 % of a 100k-item job; +450 MB over 6,000 texts in a bare loop).
``malloc_trim(0)`` after each task returns them: measured flat at ~510 MB over the same 6,000
texts, for about a millisecond per task. A no-op where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
