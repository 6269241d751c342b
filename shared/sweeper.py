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

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.jobs import OPEN_STATUSES, chunks, mark_failed, refresh_job
from shared.db.models import Item, Job, LlmRequest, utcnow
from shared.settings import Settings

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
    _complete_finished_jobs(session, now, result)
    return result


def _expired_items(session: Session, statuses: tuple[str, ...], now: dt.datetime, limit: int, *extra):
    return session.execute(
        sa.select(Item.id, Item.job_id, Item.attempts, Item.resends)
        .where(Item.status.in_(statuses), Item.lease_until < now, *extra)
        .order_by(Item.id).limit(limit).with_for_update(skip_locked=True)
    ).all()


def _sweep_pending(session, settings, now, lease, limit, result: SweepResult) -> None:
    """Items the encoder never finished."""
    rows = _expired_items(session, ("pending",), now, limit)
    dead = {r.id: _dead_letter_error(r.attempts, "embed") for r in rows if r.attempts >= settings.max_attempts}
    if dead:
        mark_failed(session=session, errors=dead)
        result.dead_items += len(dead)
    again = [r for r in rows if r.id not in dead]
    _renew(session, [r.id for r in again], lease)
    result.embed += _batches(again, settings.embed_items_per_task)


def _sweep_requests(session, settings, now, lease, limit, result: SweepResult) -> None:
    """LLM requests that no worker answered in time."""
    rows = session.execute(
        sa.select(LlmRequest.id, LlmRequest.item_id, LlmRequest.job_id, LlmRequest.source, LlmRequest.attempts)
        .where(LlmRequest.status == "queued", LlmRequest.lease_until < now)
        .order_by(LlmRequest.id).limit(limit).with_for_update(skip_locked=True)
    ).all()
    dead = [r for r in rows if r.attempts >= settings.max_attempts]
    for r in dead:  # the signal is missing now: the aggregator finishes the item without it
        session.execute(sa.update(LlmRequest).where(LlmRequest.id == r.id).values(
            status="failed", error=_dead_letter_error(r.attempts, f"llm_{r.source}"), updated_at=now))
    result.dead_requests += len(dead)
    result.fuse += _batches([_Row(r.item_id, r.job_id) for r in dead], FUSE_ITEMS_PER_TASK)
    again = [r for r in rows if r.attempts < settings.max_attempts]
    if again:
        session.execute(sa.update(LlmRequest).where(LlmRequest.id.in_([r.id for r in again]))
                        .values(lease_until=lease, updated_at=now))
    for source in sorted({r.source for r in again}):
        result.llm[source] = _batches([_Row(r.item_id, r.job_id) for r in again if r.source == source],
                                      settings.llm_batch_items)


def _sweep_unfused(session, settings, now, lease, limit, result: SweepResult) -> None:
    """Items whose signals are all in but that the aggregator never finished."""
    waiting = sa.exists().where(LlmRequest.item_id == Item.id, LlmRequest.status == "queued")
    rows = _expired_items(session, ("embedded", "scoring"), now, limit, ~waiting)
    dead = {r.id: _dead_letter_error(r.resends, "fusion") for r in rows if r.resends >= settings.max_attempts}
    if dead:
        mark_failed(session=session, errors=dead)
        result.dead_items += len(dead)
    again = [r for r in rows if r.id not in dead]
    _renew(session, [r.id for r in again], lease, count_resend=True)
    result.fuse += _batches(again, FUSE_ITEMS_PER_TASK)


def _complete_finished_jobs(session, now, result: SweepResult) -> None:
    """Jobs whose last aggregator never ran (or whose items were dead-lettered just now)."""
    open_items = sa.exists().where(Item.job_id == Job.id, Item.status.in_(OPEN_STATUSES))
    for job_id in session.scalars(sa.select(Job.id).where(Job.status != "completed", ~open_items)).all():
        if refresh_job(session=session, job_id=job_id).status == "completed":
            result.jobs_completed += 1


@dataclass(frozen=True)
class _Row:
    id: int
    job_id: uuid.UUID


def _renew(session, item_ids: list[int], lease: dt.datetime, *, count_resend: bool = False) -> None:
    if not item_ids:
        return
    values = {"lease_until": lease}
    if count_resend:  # the aggregator has no claim step: count the sweeper's re-sends instead
        values["resends"] = Item.resends + 1
    for ids in chunks(item_ids, 10_000):
        session.execute(sa.update(Item).where(Item.id.in_(ids)).values(**values))


def _batches(rows, size: int) -> list[tuple[str, list[int]]]:
    per_job: dict[str, list[int]] = {}
    for r in rows:
        per_job.setdefault(str(r.job_id), []).append(r.id)
    return [(job_id, batch) for job_id, ids in per_job.items() for batch in chunks(ids, size)]


def _dead_letter_error(attempts: int, stage: str) -> str:
    return (f"dead-lettered after {attempts} deliveries at the {stage} stage: each time the lease ran out before the "
            "work finished (worker killed or stuck, message lost, or the stage kept failing; see the worker logs)")
