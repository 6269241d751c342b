"""Running torch work on a thread that ends with it, or beside a database statement.

PyTorch's CPU build runs its intra-op parallelism on OpenMP, and OpenMP keeps a team of threads
for every thread that ever ran a parallel operation, for as long as that thread lives. Two live
teams on cores that one team already fills slow every operation: the embedded worker encoded 15 %
slower once the main thread had trained a classifier, though the main thread was only waiting
(2-core AMX VM, docs/BENCHMARKS.md, issue 10, eighth session). The likely cause: GNU OpenMP, seeing
more of its threads than cores, stops spinning between operations, so each waits for its team to
wake. Work done on a thread that then ends leaves no team behind.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
S = TypeVar("S")


def run_on_own_thread(work: Callable[[], T], *, name: str, finish_when_interrupted: bool = False) -> T:
    """``work()`` on a new thread that ends when it returns; its result, or its exception raised here.

    Ctrl-C reaches the caller, not the thread: the caller then raises KeyboardInterrupt in the
    thread too, so ``work`` stops at its next Python line and unwinds as it would have on the
    caller's thread, and waits for that before re-raising (a thread still inside torch when the
    interpreter exits aborts the process). With ``finish_when_interrupted`` the work is let finish
    instead: a write under way completes or cleans up after itself."""
    outcome: dict[str, object] = {}
    finished = threading.Event()  # not Thread.join: an interrupted join marks a live thread as ended (3.11)

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, re-raised there
            outcome["error"] = exc
        finally:
            finished.set()

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        finished.wait()
    except KeyboardInterrupt:
        if not finish_when_interrupted:
            _raise_in(thread, KeyboardInterrupt)
        finished.wait()
        raise
    thread.join()  # gone, and its OpenMP team with it, before the caller goes on
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _raise_in(thread: threading.Thread, exception: type[BaseException]) -> None:
    """Raise ``exception`` in ``thread`` at its next bytecode (CPython's asynchronous exception)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exception))


def run_beside(statement: Callable[[], S], work: Callable[[], T]) -> tuple[S, T]:
    """``statement()`` (a database call: it waits on the server) on a helper thread while ``work()``
    runs here; both results, once both are done.

    The server's process computes on one core while ``work`` uses the other, where in turn one
    would wait for the other (a fast task's finish: its UPDATE beside the fusion network's
    decision, docs/BENCHMARKS.md, issue 10, fourteenth session). The helper is joined before this
    returns or raises (the executor's exit waits for it), so its connection is never in two
    threads' hands at once; ``work``'s exception wins, else the statement's is raised here."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusionq-statement") as helper:
        pending = helper.submit(statement)
        result = work()
    return pending.result(), result
