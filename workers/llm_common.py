"""The LLM scoring task, defined once and registered for each LLM queue (llm_local, llm_api)."""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy.exc import OperationalError

from shared.pipeline import llm_stage

log = logging.getLogger(__name__)


def register_llm_task(app: Celery, *, settings, source: str, task_name: str, next_task: str) -> None:
    """Define ``task_name``: score items with the ``source`` LLM, then hand them to the aggregator.

    Provider faults are retried inside the scorer (one retry loop); here only database
    OperationalErrors are retried.
    """

    @app.task(name=task_name, bind=True, shared=False, autoretry_for=(OperationalError,), retry_backoff=True,
              retry_backoff_max=60, max_retries=8)
    def score_items(self, job_id: str, item_ids: list[int]) -> int:
        scored = llm_stage(settings, job_id=job_id, item_ids=item_ids, source=source)
        if scored:
            self.app.send_task(next_task, args=[job_id, scored])
        log.info("job %s: %s LLM scored %d of %d items", job_id, source, len(scored), len(item_ids))
        return len(scored)
