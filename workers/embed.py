"""Queue ``embed``: turn a batch of items into encoder features, then hand them to ``fusion``."""

from __future__ import annotations

from celery import Celery

from shared.dispatch import TaskName
from shared.service.embed import embed_stage
from workers.cores import cores_while_working
from workers.memory import release_freed_memory
from workers.retry import DB_RETRY

def register(app: Celery, *, settings) -> None:
    """Define the embed task on ``app`` (tasks are bound to one app, so they enqueue on its broker)."""

    @app.task(name=str(TaskName.EMBED), bind=True, shared=False, **DB_RETRY)
    def embed_items(self, job_id: str, item_ids: list[int]) -> int:
        """Embed the still-pending items among ``item_ids``; enqueue their fusion after commit."""
        try:
            with cores_while_working() as rebalance:
                embedded = embed_stage(settings, job_id=job_id, item_ids=item_ids, between_batches=rebalance)
        finally:
            release_freed_memory()  # new batch shapes would otherwise grow the worker without bound
        if embedded:
            self.app.send_task(str(TaskName.FUSE), args=[job_id, embedded])
        return len(embedded)
