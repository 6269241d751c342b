"""The host's CPU cores shared by the encoding children of one prefork worker.

On CPU, N single-thread encoder processes outrun one process with N threads: two processes with
one thread each encoded 2,000 AG News texts 1.07-1.16x faster than one with two (2-core AMX VM,
docs/BENCHMARKS.md, issue 10, fifteenth session), and each one's claim and write overlap the
other's encoding instead of leaving a core idle. But a job alone in a one-thread process leaves
the other cores idle. So each child, while it works, takes ``cores // busy`` torch threads, where
``busy`` counts the children working now (itself included), and re-reads it after every batch it
encodes: alone it has every core, beside others its share. The count lives in shared memory made
by the worker's main process before its children fork; a child records its pid in a slot while it
works, so a child killed mid-task (whose slot is never cleared) counts only while its pid lives.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

SLOTS = 256  # children counted at most; a child finding no free slot works uncounted


def host_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's cpuset, taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class CoreShare:
    """``with share.working() as rebalance:`` counts this process as working and sets its torch
    threads to its share of the cores; ``rebalance()`` (between batches) follows the count."""

    def __init__(self, cores: int | None = None) -> None:
        self.cores = cores or host_cores()
        self.owner = os.getpid()  # the worker's main process: the share is its children's
        # fork: the slots are inherited by the children, never pickled
        self._pids = multiprocessing.get_context("fork").Array("i", SLOTS)

    def in_child(self) -> bool:
        return os.getpid() != self.owner

    def working_now(self) -> int:
        """How many processes hold a slot and are alive."""
        with self._pids.get_lock():
            pids = [pid for pid in self._pids if pid]
        return sum(1 for pid in pids if _alive(pid))

    def threads_now(self) -> int:
        return max(1, self.cores // max(1, self.working_now()))

    @contextlib.contextmanager
    def working(self) -> Iterator[Callable[[], None]]:
        slot = self._take_slot()
        try:
            self.rebalance()
            yield self.rebalance
        finally:
            if slot is not None:
                with self._pids.get_lock():
                    self._pids[slot] = 0

    def rebalance(self) -> None:
        import torch  # the workers' processes have it loaded by now; the parent never calls this

        threads = self.threads_now()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    def _take_slot(self) -> int | None:
        pid = os.getpid()
        with self._pids.get_lock():
            for slot, holder in enumerate(self._pids):
                if holder == 0 or (holder != pid and not _alive(holder)):
                    self._pids[slot] = pid
                    return slot
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (a recycled pid)
        return True
    return True


_SHARE: CoreShare | None = None


def share_among_children() -> None:
    """In a worker's main process, before its pool forks: its prefork children will share the cores.
    Where shared memory cannot be made (no /dev/shm), each child keeps its even share."""
    global _SHARE
    try:
        _SHARE = CoreShare()
    except OSError as exc:
        log.warning("prefork children cannot share the cores (%s); each keeps cores / concurrency threads", exc)


def even_share(concurrency: int) -> int:
    """A prefork child's torch threads before it works: its even share of the cores (two encoder
    processes each with every core ran 4x slower on 2 cores, docs/BENCHMARKS.md, issue 12)."""
    return max(1, host_cores() // max(1, concurrency))


def cores_while_working() -> contextlib.AbstractContextManager[Callable[[], None] | None]:
    """``with cores_while_working() as rebalance:`` around a task that encodes: a prefork child takes
    the cores its working siblings leave it and ``rebalance()`` between batches follows them;
    elsewhere (solo, threads, the embedded worker) nothing changes and ``rebalance`` is None."""
    if _SHARE is None or not _SHARE.in_child():
        return contextlib.nullcontext(None)
    return _SHARE.working()
