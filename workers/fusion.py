"""Queue ``fusion``: the aggregator that turns available signals into final predictions."""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy.exc import OperationalError

from shared.pipeline import fusion_stage

log = logging.getLogger(__name__)
FUSE_TASK = "fusionq.fuse_items"


def register(app: Celery, *, settings) -> None:
    """Define the fusion aggregator task on ``app``."""

    @app.task(name=FUSE_TASK, bind=True, shared=False, autoretry_for=(OperationalError,), retry_backoff=True,
              retry_backoff_max=60, max_retries=8)
    def fuse_items(self, job_id: str, item_ids: list[int]) -> int:
        """Write the final prediction of every embedded item among ``item_ids``; complete the job when due."""
        written = fusion_stage(settings, job_id=job_id, item_ids=item_ids)
        log.info("job %s: %d predictions written", job_id, written)
        return written
