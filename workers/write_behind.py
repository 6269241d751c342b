"""Write-behind for the embed worker: a batch's results commit while the worker encodes the next.

A solo embed worker used to claim, encode, then write and commit before it acknowledged its
message and fetched the next: on two cores both sat idle for the ~30 ms of each 256-text write.
Now the task hands its write to one background thread and returns, so Celery acknowledges and the
next message is claimed and encoded while the previous write commits.

Acknowledging before the commit loses nothing: the claim's heartbeat keeps renewing its lease
until the write is done, and a worker that dies first stops renewing, so the sweeper sends the
work again once the lease lapses (issue 11's leases); writes are fenced by the claim's token, so a
late write of a re-sent batch lands nowhere. At most one write is in flight: a task that finishes
encoding while the previous write still runs waits for it, so memory and the database see no
more than one batch ahead. Shutdown (warm, memory recycling, prefork child exit) drains it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy.exc import InterfaceError, OperationalError

from workers.retry import DB_RETRY

log = logging.getLogger(__name__)


def retry_on_database_errors(write: Callable[[], object], *, max_retries: int = DB_RETRY["max_retries"],
                             backoff_max: float = DB_RETRY["retry_backoff_max"]) -> object:
    """Run ``write``, retrying a lost database connection with the backoff the tasks use (workers.retry)."""
    for attempt in range(max_retries + 1):
        try:
            return write()
        except (OperationalError, InterfaceError) as exc:
            if attempt == max_retries:
                raise
            delay = random.uniform(0, min(backoff_max, 2**attempt))  # full jitter, as Celery's retry_jitter
            log.warning("a write failed on the database (%s); retrying in %.1f s", type(exc).__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class WriteBehind:
    """One writer thread with at most one write in flight."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._last: Future | None = None
        self._lock = threading.Lock()

    def submit(self, write: Callable[[], object]) -> None:
        """Start ``write`` in the background once the previous one has finished."""
        with self._lock:
            self._wait_for_last()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusionq-write-behind")
            self._last = self._executor.submit(write)

    def drain(self, timeout: float | None = None) -> None:
        """Wait for the write in flight, if any (a worker calls this before it exits)."""
        with self._lock:
            self._wait_for_last(timeout)

    def _wait_for_last(self, timeout: float | None = None) -> None:
        last, self._last = self._last, None
        if last is None:
            return
        try:
            last.result(timeout)
        except Exception:  # noqa: BLE001 - its lease lapses and the sweeper sends the batch again
            log.exception("a background write failed; its items are sent again when their lease lapses")


# One per process: a prefork child has its own (the executor is created on first use, after the fork).
writer = WriteBehind()
