"""Queue ``submit``: any Celery client (any language speaking the protocol) sends a job by task name,
without the database credentials.

    app.send_task("fusionq.submit", args=[{"texts": [...], "classifier": "news", "mode": "fast",
                                           "idempotency_key": "batch-42",
                                           "reply_to": {"task": "myapp.job_accepted", "queue": "myapp"},
                                           "on_complete": {"task": "myapp.job_done", "queue": "myapp"},
                                           "webhook_url": "https://myapp.example/hooks/fusionq"}],
                  queue="submit")

The one argument is a JSON object (``shared.schemas.BrokerJobRequest``). There is no result
backend: the job id goes to ``reply_to`` (called with ``{"job_id", "idempotency_key", "status":
"accepted"}``, or ``"refused"`` with an ``error``), and the idempotency key makes a re-sent message
the same job. A refused request is logged and answered, never retried.
"""

from __future__ import annotations

import functools
import logging

from celery import Celery
from pydantic import ValidationError

from shared.dispatch import TaskName
from shared.errors import FusionqError
from shared.schemas import BrokerJobRequest
from shared.service.submit import submit_job
from workers.retry import DB_RETRY

log = logging.getLogger(__name__)


def register(app: Celery, *, settings) -> None:
    @functools.cache
    def dispatcher():  # one per worker process, sending on this worker's broker
        from workers.dispatch import CeleryDispatcher  # imported late: workers.dispatch imports this app's factory

        return CeleryDispatcher(app, check=False)

    @app.task(name=str(TaskName.SUBMIT), bind=True, shared=False, **DB_RETRY)
    def submit(self, request: dict) -> dict:
        """Store and enqueue the job ``request`` describes; answer ``reply_to`` with its id."""
        reply_to = request.get("reply_to") if isinstance(request, dict) else None
        try:
            job = BrokerJobRequest.model_validate(request)
            job_id = submit_job(settings, dispatcher(), job.texts, job.classifier, str(job.mode),
                                idempotency_key=job.idempotency_key, **job.submit_options())
            answer = {"job_id": str(job_id), "idempotency_key": job.idempotency_key, "status": "accepted"}
        except (ValidationError, FusionqError) as exc:
            message = _describe(exc)
            log.warning("fusionq.submit refused a request: %s", message)
            answer = {"job_id": None, "idempotency_key": request.get("idempotency_key") if isinstance(request, dict)
                      else None, "status": "refused", "error": message}
        if isinstance(reply_to, dict) and reply_to.get("task"):
            self.app.send_task(str(reply_to["task"]), args=[answer], queue=reply_to.get("queue"))
        return answer


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors()[:5])
    return str(exc)
