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
        summary = result.summary()
        if any(summary.values()):
            log.warning("sweep: %s", summary)
        return summary
