"""Long-lived objects kept out of Python's full garbage collections, in fusionq's long-running processes.

Python's full (generation 2) collection walks every tracked object, and a worker holds hundreds of
thousands for as long as it lives (torch, transformers, Celery, the models): one full collection
took 110-230 ms on the AMX VM, and one that fell inside a one-text job made that job 200 ms
slower; the API server's imports alone make a 90 ms one (docs/BENCHMARKS.md, issue 10, tenth
session). Frozen objects are skipped by every later collection, and refcounting still frees them:
only a reference cycle among them would never be collected, so what is frozen is what was alive
just after a collection.
"""

from __future__ import annotations

import gc
import time

SLOW_FULL_COLLECTION_SECONDS = 0.02
_full_collection_started: float | None = None
_slow_full_collection_seen = False


def freeze_what_is_alive() -> None:
    """Collect, then freeze every survivor: for a process that has just loaded what it keeps (the API server at start)."""
    gc.collect()
    gc.freeze()


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
    """Time this process's full collections from now on (idempotent); a worker's start calls it."""
    if _time_full_collections not in gc.callbacks:
        gc.callbacks.append(_time_full_collections)


def freeze_survivors_after_slow_collection() -> bool:
    """After a task: if a full collection since the last call was slow, freeze what is alive now, so
    the next full collections walk only what the process creates from here on; whether it froze.

    Workers load their models lazily, in their first task, so this follows the load rather than
    guessing it. The young generations are collected first, so the task's own garbage is not frozen
    with the survivors. After a freeze or two a worker's full collections stay short and this stops."""
    global _slow_full_collection_seen
    if not _slow_full_collection_seen:
        return False
    gc.collect(1)
    gc.freeze()
    _slow_full_collection_seen = False
    return True
