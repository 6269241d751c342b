"""Queue ``embed``: turn a batch of items into encoder features, then hand them to ``fusion``."""

from __future__ import annotations

import contextlib
import logging

from celery import Celery

from shared.dispatch import TaskName
from shared.service.claims import claim
from shared.service.embed import encode_claimed, store_encoded
from workers.memory import release_freed_memory
from workers.retry import DB_RETRY
from workers.write_behind import retry_on_database_errors, writer

log = logging.getLogger(__name__)


def register(app: Celery, *, settings) -> None:
    """Define the embed task on ``app`` (tasks are bound to one app, so they enqueue on its broker)."""

    @app.task(name=str(TaskName.EMBED), bind=True, shared=False, **DB_RETRY)
    def embed_items(self, job_id: str, item_ids: list[int]) -> int:
        """Encode the still-pending items among ``item_ids``, then return while their results are
        written in the background (workers.write_behind); fusion is enqueued after that commit."""
        held = claim(settings, job_id, item_ids)
        if not held.items:
            return 0
        with contextlib.ExitStack() as lease:
            lease.enter_context(held.heartbeat(settings))  # renewed until the write commits
            try:
                encoded = encode_claimed(settings, held)
            finally:
                release_freed_memory()  # new batch shapes would otherwise grow the worker without bound
            renewing = lease.pop_all()

        def write() -> None:
            with renewing:
                moved = retry_on_database_errors(lambda: store_encoded(settings, held, encoded))
            if moved:
                self.app.send_task(str(TaskName.FUSE), args=[job_id, moved])
            log.info("job %s: embedded %d of %d items", job_id, len(held.items), len(item_ids))

        writer.submit(write)
        return len(held.items)
