"""The sweeper: Postgres says what is unfinished; whatever lost its message is sent again.

Every piece of outstanding work carries a lease (an item waiting for the encoder or the
aggregator, a queued LLM request). When a lease runs out — the worker was killed, the broker
lost the message, the database was down when a task tried — the sweeper renews the lease and
re-sends the work; after ``max_attempts`` it dead-letters the work with its error instead. Every
stage is idempotent, so a re-send that races a slow worker changes nothing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from shared.db.items import mark_failed
from shared.db.jobs import count_finished, jobs_ready_to_complete, refresh_job
from shared.db.leases import expired_items, expired_requests, fail_requests, renew_items, renew_requests
from shared.db.models import utcnow
from shared.dispatch import chunks
from shared.settings import Settings
from shared.vocab import WAITING_FOR_AGGREGATOR, ItemStatus, JobStatus

FUSE_ITEMS_PER_TASK = 256


@dataclass
class SweepResult:
    """Messages to send (task kind -> [(job id, item ids)]) and what was dead-lettered."""

    embed: list[tuple[str, list[int]]] = field(default_factory=list)
    fuse: list[tuple[str, list[int]]] = field(default_factory=list)
    llm: dict[str, list[tuple[str, list[int]]]] = field(default_factory=dict)
    dead_items: int = 0
    dead_requests: int = 0
    jobs_completed: int = 0

    @property
    def resent_items(self) -> int:
        batches = self.embed + self.fuse + [b for per in self.llm.values() for b in per]
        return sum(len(ids) for _, ids in batches)


def sweep(session: Session, settings: Settings, *, now: dt.datetime | None = None, limit: int = 50_000) -> SweepResult:
    """Find expired leases in the caller's transaction; renew or dead-letter them.

    Rows are locked with SKIP LOCKED, so two sweepers never take the same work, and a task
    that holds an item right now is left alone.
    """
    now = now or utcnow()
    lease = now + dt.timedelta(seconds=settings.item_lease_seconds)
    result = SweepResult()
    _sweep_pending(session, settings, now, lease, limit, result)
    _sweep_requests(session, settings, now, lease, limit, result)
    _sweep_unfused(session, settings, now, lease, limit, result)
    _complete_finished_jobs(session, result)
    return result


def _sweep_pending(session, settings, now, lease, limit, result: SweepResult) -> None:
    """Items the encoder never finished."""
    rows = expired_items(session=session, statuses=(ItemStatus.PENDING,), now=now, limit=limit)
    dead = {r.id: _dead_letter_error(r.attempts, "embed") for r in rows if r.attempts >= settings.max_attempts}
    if dead:
        _dead_letter(session, dead, result)
        result.dead_items += len(dead)
    again = [r for r in rows if r.id not in dead]
    renew_items(session=session, item_ids=[r.id for r in again], lease=lease)
    result.embed += _batches(again, settings.embed_items_per_task)


def _sweep_requests(session, settings, now, lease, limit, result: SweepResult) -> None:
    """LLM requests that no worker answered in time."""
    rows = expired_requests(session=session, now=now, limit=limit)
    dead = [r for r in rows if r.attempts >= settings.max_attempts]
    # the signal is missing now: the aggregator finishes the item without it
    fail_requests(session=session, errors={r.id: _dead_letter_error(r.attempts, f"llm_{r.source}") for r in dead},
                  now=now)
    result.dead_requests += len(dead)
    # their items go to the aggregator now, leased again so that _sweep_unfused does not send them twice
    renew_items(session=session, item_ids=[r.item_id for r in dead], lease=lease)
    result.fuse += _batches([_Row(r.item_id, r.job_id) for r in dead], FUSE_ITEMS_PER_TASK)
    again = [r for r in rows if r.attempts < settings.max_attempts]
    renew_requests(session=session, request_ids=[r.id for r in again], lease=lease, now=now)
    for source in sorted({r.source for r in again}):
        result.llm[source] = _batches([_Row(r.item_id, r.job_id) for r in again if r.source == source],
                                      settings.llm_batch_items)


def _sweep_unfused(session, settings, now, lease, limit, result: SweepResult) -> None:
    """Items whose signals are all in but that the aggregator never finished."""
    rows = expired_items(session=session, statuses=WAITING_FOR_AGGREGATOR, now=now, limit=limit,
                         without_queued_request=True)
    dead = {r.id: _dead_letter_error(r.resends, "fusion") for r in rows if r.resends >= settings.max_attempts}
    if dead:
        _dead_letter(session, dead, result)
        result.dead_items += len(dead)
    again = [r for r in rows if r.id not in dead]
    renew_items(session=session, item_ids=[r.id for r in again], lease=lease, count_resend=True)
    result.fuse += _batches(again, FUSE_ITEMS_PER_TASK)


def _dead_letter(session, errors: dict[int, str], result: SweepResult) -> None:
    """Fail the items for good and count them on their jobs (completing those that had nothing else left)."""
    for job_id, failed in mark_failed(session=session, errors=errors).items():
        if count_finished(session=session, job_id=job_id, failed=failed) == JobStatus.COMPLETED:
            result.jobs_completed += 1


def _complete_finished_jobs(session, result: SweepResult) -> None:
    """Jobs whose last aggregator never ran (or whose items were dead-lettered just now)."""
    for job_id in jobs_ready_to_complete(session=session):
        if refresh_job(session=session, job_id=job_id).status == JobStatus.COMPLETED:
            result.jobs_completed += 1


@dataclass(frozen=True)
class _Row:
    id: int
    job_id: uuid.UUID


def _batches(rows, size: int) -> list[tuple[str, list[int]]]:
    per_job: dict[str, list[int]] = {}
    for r in rows:
        per_job.setdefault(str(r.job_id), []).append(r.id)
    return [(job_id, batch) for job_id, ids in per_job.items() for batch in chunks(ids, size)]


def _dead_letter_error(attempts: int, stage: str) -> str:
    return (f"dead-lettered after {attempts} deliveries at the {stage} stage: each time the lease ran out before the "
            "work finished (worker killed or stuck, message lost, or the stage kept failing; see the worker logs)")
