"""The two :class:`shared.dispatch.Dispatcher` implementations, and the one a client's settings ask for.

* :class:`CeleryDispatcher`: ``send_task`` by name on a Celery app (Redis or any real broker).
* :class:`EmbeddedDispatcher`: the same, on the in-memory broker, with the embedded worker
  running the tasks in a thread of this process (the default when no broker is configured).
"""

from __future__ import annotations

from celery import Celery
from kombu.exceptions import OperationalError as BrokerOperationalError

from shared.errors import BrokerUnavailable
from shared.settings import Settings, hide_password
from workers.celery_app import create_app
from workers.embedded import EmbeddedWorker


def broker_failure(url: str, exc: Exception) -> str | None:
    """What to tell a user whose broker does not answer; None when ``exc`` is no broker failure."""
    if not isinstance(exc, (BrokerOperationalError, ConnectionError)):
        return None
    return (f"cannot reach the broker {hide_password(url)}: {exc}; start it, or fix FUSIONQ_BROKER_URL "
            "(unset it to run everything in this process)")


class CeleryDispatcher:
    """Sends tasks by name on ``app``'s broker; refuses to be built when nobody answers there, so a
    client never stores a job it cannot enqueue."""

    def __init__(self, app: Celery, *, check: bool = True) -> None:
        self.app = app
        if check:
            try:
                with app.connection_for_write() as conn:
                    conn.ensure_connection(max_retries=1, timeout=5)
            except Exception as exc:
                message = broker_failure(app.conf.broker_url, exc)
                if message is None:
                    raise
                raise BrokerUnavailable(message) from None

    def send(self, task: str, job_id: str, item_ids: list[int]) -> None:
        try:
            self.app.send_task(str(task), args=[job_id, list(item_ids)])
        except Exception as exc:
            message = broker_failure(self.app.conf.broker_url, exc)
            if message is None:
                raise
            raise BrokerUnavailable(message) from None

    def close(self) -> None:
        self.app.close()

    def live_workers(self) -> dict[str, dict]:
        """Workers that announced themselves recently: hostname -> queues, pid, time (``workers.presence``)."""
        from workers.presence import live_workers

        return live_workers(self.app)

    def queue_depths(self, queues) -> dict[str, int]:
        """Messages waiting in each of ``queues``."""
        from workers.presence import queue_depths

        return queue_depths(self.app, queues)


class EmbeddedDispatcher(CeleryDispatcher):
    """A Celery app on ``memory://`` whose worker runs in this process; stopped by :meth:`close`."""

    def __init__(self, app: Celery, *, sweep_interval: float | None = None) -> None:
        super().__init__(app, check=False)
        self.worker = EmbeddedWorker(app, sweep_interval=sweep_interval).start()

    def close(self) -> None:
        self.worker.stop()
        super().close()


def dispatcher_for(settings: Settings) -> CeleryDispatcher:
    """The dispatcher ``settings`` describe: embedded when no broker is configured, else Celery on the broker."""
    app = create_app(settings)
    return EmbeddedDispatcher(app, sweep_interval=settings.sweep_interval) if settings.embedded else CeleryDispatcher(app)
