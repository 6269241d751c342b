"""The two :class:`shared.dispatch.Dispatcher` implementations, and the one a client's settings ask for.

* :class:`CeleryDispatcher`: ``send_task`` by name on a Celery app (Redis or any real broker).
* :class:`EmbeddedDispatcher`: the same, on the in-memory broker, with the embedded worker
  running the tasks in a thread of this process (the default when no broker is configured).
"""

from __future__ import annotations

from celery import Celery

from shared.settings import Settings
from workers.celery_app import create_app
from workers.embedded import EmbeddedWorker


class CeleryDispatcher:
    """Sends tasks by name on ``app``'s broker."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def send(self, task: str, job_id: str, item_ids: list[int]) -> None:
        self.app.send_task(str(task), args=[job_id, list(item_ids)])

    def close(self) -> None:
        self.app.close()


class EmbeddedDispatcher(CeleryDispatcher):
    """A Celery app on ``memory://`` whose worker runs in this process; stopped by :meth:`close`."""

    def __init__(self, app: Celery) -> None:
        super().__init__(app)
        self.worker = EmbeddedWorker(app).start()

    def close(self) -> None:
        self.worker.stop()
        super().close()


def dispatcher_for(settings: Settings) -> CeleryDispatcher:
    """The dispatcher ``settings`` describe: embedded when no broker is configured, else Celery on the broker."""
    app = create_app(settings)
    return EmbeddedDispatcher(app) if settings.embedded else CeleryDispatcher(app)
