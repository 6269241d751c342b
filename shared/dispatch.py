"""The dispatch seam: how work is handed to the workers, without knowing what carries it.

Everything that enqueues (the client, the tasks, the sweeper's task) sends a task *by name* with
a job id and item ids, through a :class:`Dispatcher`. ``workers.dispatch`` provides the two
implementations (a Celery app on a real broker, and the embedded in-process worker); the
interfaces (``cli``, ``demo``) wire one to the client. Nothing in ``shared`` imports Celery.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shared.vocab import Source, StrEnum


class TaskName(StrEnum):
    """Celery task names: the client, the sweeper and the workers all send by these."""

    EMBED = "fusionq.embed_items"
    FUSE = "fusionq.fuse_items"
    LLM_LOCAL = "fusionq.llm_local.score_items"
    LLM_API = "fusionq.llm_api.score_items"
    SWEEP = "fusionq.maintenance.sweep"
    WEBHOOK = "fusionq.maintenance.webhook"
    SUBMIT = "fusionq.submit"  # for other services: a job from a JSON request, over the broker


LLM_TASKS = {Source.LOCAL: TaskName.LLM_LOCAL, Source.API: TaskName.LLM_API}


class Dispatcher(Protocol):
    """Sends ``task`` for ``job_id``'s ``item_ids``; called only after the rows are committed."""

    def send(self, task: str, job_id: str, item_ids: list[int]) -> None: ...

    def close(self) -> None: ...

    # What the broker holds, for readiness and metrics (a broker that cannot tell raises).
    def live_workers(self) -> dict[str, dict]: ...

    def queue_depths(self, queues) -> dict[str, int]: ...


def chunks(ids: Sequence[int], size: int) -> list[list[int]]:
    """``ids`` cut into runs of at most ``size``: one message each."""
    return [list(ids[i:i + size]) for i in range(0, len(ids), size)]
