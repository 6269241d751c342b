"""Queue ``maintenance``: the sweeper, run every FUSIONQ_SWEEP_INTERVAL seconds by celery beat (or, in
the embedded default, by the in-process worker at start and on the same interval).

``celery -A workers.app beat`` plus ``celery -A workers.app worker -Q maintenance -c 1``.
"""

from __future__ import annotations

import logging

from celery import Celery

from shared.db.engine import session_for
from shared.dispatch import LLM_TASKS, TaskName
from shared.service.sweeper import sweep
from workers.inflight import in_flight_view
from workers.retry import DB_RETRY

log = logging.getLogger(__name__)


def register(app: Celery, *, settings) -> None:
    register_webhook(app)

    @app.task(name=str(TaskName.SWEEP), bind=True, shared=False, **DB_RETRY)
    def sweep_leases(self) -> dict:
        """Re-send work whose claim lapsed or whose message is lost, dead-letter what ran out of attempts."""
        in_flight = in_flight_view(self.app, grace_seconds=settings.item_lease_seconds)
        with session_for(settings.effective_database_url) as session, session.begin():
            result = sweep(session, settings, in_flight=in_flight)
        for job_id, ids in result.embed:  # after commit, like every other send
            self.app.send_task(str(TaskName.EMBED), args=[job_id, ids])
        for job_id, ids in result.fuse:
            self.app.send_task(str(TaskName.FUSE), args=[job_id, ids])
        for source, batches in result.llm.items():
            for job_id, ids in batches:
                self.app.send_task(str(LLM_TASKS[source]), args=[job_id, ids])
        for notify, summary in result.notices:  # completion notices asked at submit
            if notify.get("task"):
                self.app.send_task(str(notify["task"]), args=[summary], queue=notify.get("queue"))
            if notify.get("webhook"):
                self.app.send_task(str(TaskName.WEBHOOK), args=[notify["webhook"], summary])
        summary = result.summary()
        if any(summary.values()):
            log.warning("sweep: %s", summary)
        return summary


class WebhookRefused(Exception):
    """The webhook answered 429 or 5xx, or could not be reached: worth another try."""


def register_webhook(app: Celery) -> None:
    @app.task(name=str(TaskName.WEBHOOK), bind=True, shared=False, autoretry_for=(WebhookRefused,),
              retry_backoff=5, retry_backoff_max=600, retry_jitter=True, max_retries=8)
    def post_webhook(self, url: str, summary: dict) -> int:
        """POST a finished job's summary to the caller's webhook; retried with backoff (about an hour in
        all) while it is down or busy. A 4xx other than 429 is the caller's answer: not retried."""
        import httpx

        try:
            answer = httpx.post(url, json=summary, timeout=10, headers={"User-Agent": "fusionq-webhook"})
        except httpx.HTTPError as exc:
            raise WebhookRefused(f"{url}: {type(exc).__name__}") from None
        if answer.status_code == 429 or answer.status_code >= 500:
            raise WebhookRefused(f"{url} answered {answer.status_code}")
        if answer.status_code >= 400:
            log.warning("webhook %s refused the notice of job %s with %d; not retried", url, summary.get("job_id"),
                        answer.status_code)
        return answer.status_code
