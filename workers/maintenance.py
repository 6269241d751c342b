"""Queue ``maintenance``: the sweeper, run every FUSIONQ_SWEEP_INTERVAL seconds by celery beat.

``celery -A workers.app beat`` plus ``celery -A workers.app worker -Q maintenance -c 1``.
"""

from __future__ import annotations

import logging

from celery import Celery

from shared.db.engine import session_for
from shared.dispatch import LLM_TASKS, TaskName
from shared.service.sweeper import sweep
from workers.retry import DB_RETRY

log = logging.getLogger(__name__)


def register(app: Celery, *, settings) -> None:
    @app.task(name=str(TaskName.SWEEP), bind=True, shared=False, **DB_RETRY)
    def sweep_leases(self) -> dict:
        """Re-send work whose lease expired, dead-letter what ran out of attempts."""
        with session_for(settings.effective_database_url) as session, session.begin():
            result = sweep(session, settings)
        for job_id, ids in result.embed:  # after commit, like every other send
            self.app.send_task(str(TaskName.EMBED), args=[job_id, ids])
        for job_id, ids in result.fuse:
            self.app.send_task(str(TaskName.FUSE), args=[job_id, ids])
        for source, batches in result.llm.items():
            for job_id, ids in batches:
                self.app.send_task(str(LLM_TASKS[source]), args=[job_id, ids])
        summary = {"resent_items": result.resent_items, "dead_items": result.dead_items,
                   "dead_requests": result.dead_requests, "jobs_completed": result.jobs_completed}
        if any(summary.values()):
            log.warning("sweep: %s", summary)
        return summary
