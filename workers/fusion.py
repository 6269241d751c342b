"""Queue ``fusion``: the aggregator that fuses available signals, finishes items or sends them up a tier."""

from __future__ import annotations

import logging

from celery import Celery

from shared.dispatch import LLM_TASKS, TaskName, chunks
from shared.service.aggregate import fusion_stage
from workers.retry import DB_RETRY

log = logging.getLogger(__name__)


def register(app: Celery, *, settings) -> None:
    """Define the fusion aggregator task on ``app``."""

    @app.task(name=str(TaskName.FUSE), bind=True, shared=False, **DB_RETRY)
    def fuse_items(self, job_id: str, item_ids: list[int]) -> int:
        """Finish or escalate every item among ``item_ids`` whose signals are in; complete the job when due."""
        outcome = fusion_stage(settings, job_id=job_id, item_ids=item_ids)
        for source, ids in outcome.escalate.items():  # after commit: the requests exist when a worker looks
            for batch in chunks(ids, settings.llm_batch_items):
                self.app.send_task(str(LLM_TASKS[source]), args=[job_id, batch])
        log.info("job %s: %d predictions written, escalated %s", job_id, outcome.written,
                 {s: len(ids) for s, ids in outcome.escalate.items()} or "none")
        return outcome.written
