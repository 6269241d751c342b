"""The LLM scoring task, defined once and registered for each LLM queue (llm_local, llm_api)."""

from __future__ import annotations

import logging

from celery import Celery

from shared.dispatch import LLM_TASKS, TaskName
from shared.service.llm import llm_stage
from workers.retry import DB_RETRY

log = logging.getLogger(__name__)


def register_llm_task(app: Celery, *, settings, source: str) -> None:
    """Define the ``source`` scoring task: answer queued LLM requests, then hand the items to the aggregator."""

    @app.task(name=str(LLM_TASKS[source]), bind=True, shared=False, **DB_RETRY)
    def score_items(self, job_id: str, item_ids: list[int]) -> int:
        answered = llm_stage(settings, job_id=job_id, item_ids=item_ids, source=source)
        if answered:
            self.app.send_task(str(TaskName.FUSE), args=[job_id, answered])
        log.info("job %s: %s LLM handled %d of %d items (failures are logged by the stage)", job_id, source,
                 len(answered), len(item_ids))
        return len(answered)
