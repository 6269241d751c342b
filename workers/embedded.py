"""The embedded default: one Celery worker in a thread of this process, on the in-memory broker.

Runs the very same tasks as the production workers, so `fusionq demo` exercises the real path
with nothing installed but the package. It sweeps too (no beat here): once at start, so work left
by an embedded process that died is taken up by the next one that opens the same database, and
then every FUSIONQ_SWEEP_INTERVAL seconds while it runs.
"""

from __future__ import annotations

import os
import threading

from celery import Celery
from celery.result import _set_task_join_will_block
from celery.worker import WorkController

from shared.dispatch import TaskName
from workers.celery_app import QUEUES


class _ReadyWorkController(WorkController):
    """A WorkController that says when its consumer is ready to take messages."""

    def __init__(self, *args, **kwargs) -> None:
        self.ready = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer) -> None:
        super().on_consumer_ready(consumer)
        self.ready.set()


class EmbeddedWorker:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager)."""

    def __init__(self, app: Celery, *, queues: tuple[str, ...] = QUEUES, sweep_interval: float | None = None) -> None:
        self.app = app
        self.queues = queues
        self.sweep_interval = sweep_interval  # None: no sweeps
        self._controller: _ReadyWorkController | None = None
        self._thread: threading.Thread | None = None
        self._sweeps: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self, timeout: float = 60.0) -> "EmbeddedWorker":
        self._controller = _ReadyWorkController(
            app=self.app, hostname=f"embedded-{os.getpid()}@localhost", pool_cls="solo", concurrency=1,
            queues=list(self.queues), without_heartbeat=True, without_mingle=True, without_gossip=True,
            loglevel="WARNING", ready_callback=None,
        )
        self._thread = threading.Thread(target=self._run, name="fusionq-embedded-worker", daemon=True)
        self._thread.start()
        if not self._controller.ready.wait(timeout):
            raise RuntimeError(f"the embedded Celery worker did not start within {timeout:.0f}s")
        if self.sweep_interval:
            self._stopping.clear()
            self._sweeps = threading.Thread(target=self._send_sweeps, name="fusionq-embedded-sweeps", daemon=True)
            self._sweeps.start()
        return self

    def _send_sweeps(self) -> None:
        """The beat of the embedded default: a sweep now, then one per interval (dropped if not run in time)."""
        while True:
            self.app.send_task(str(TaskName.SWEEP), expires=self.sweep_interval)
            if self._stopping.wait(self.sweep_interval):
                return

    def _run(self) -> None:
        # Celery's trace code finds tasks through the thread's current app.
        self.app.set_current()
        self._controller.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._sweeps is not None:
            self._sweeps.join(timeout=5)
            self._sweeps = None
        if self._controller is not None:
            self._controller.stop()
            self._thread.join(timeout=30)
            self._controller = self._thread = None
            # The solo pool marks the whole process as "inside a task" (result.get() refused); it is the
            # caller's process, which goes on after the worker stops (as celery.contrib.testing does).
            _set_task_join_will_block(False)

    def __enter__(self) -> "EmbeddedWorker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
