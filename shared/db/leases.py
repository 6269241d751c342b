"""Leases of outstanding work, for the sweeper: find expired ones, renew them, dead-letter requests.

Rows are taken ``FOR UPDATE SKIP LOCKED``: two sweepers never take the same work, and a task
that holds a row right now is left alone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import Item, LlmRequest
from shared.dispatch import chunks
from shared.vocab import RequestStatus


def expired_items(*, session: Session, statuses: Sequence[str], now: dt.datetime, limit: int,
                  without_queued_request: bool = False) -> list:
    """Items in ``statuses`` whose lease ran out (id, job_id, attempts, resends), locked.

    ``without_queued_request``: only items not waiting for an LLM answer (their signals are all in).
    """
    conditions = [Item.status.in_(list(statuses)), Item.lease_until < now]
    if without_queued_request:
        conditions.append(~sa.exists().where(LlmRequest.item_id == Item.id, LlmRequest.status == RequestStatus.QUEUED))
    return session.execute(
        sa.select(Item.id, Item.job_id, Item.attempts, Item.resends).where(*conditions)
        .order_by(Item.id).limit(limit).with_for_update(skip_locked=True)
    ).all()


def renew_items(*, session: Session, item_ids: Sequence[int], lease: dt.datetime, count_resend: bool = False) -> None:
    """Move the items' leases to ``lease``; ``count_resend`` counts a re-send of the aggregator's message."""
    if not item_ids:
        return
    values = {"lease_until": lease}
    if count_resend:  # the aggregator has no claim step: count the sweeper's re-sends instead
        values["resends"] = Item.resends + 1
    for ids in chunks(list(item_ids), 10_000):
        session.execute(sa.update(Item).where(Item.id.in_(ids)).values(**values))


def expired_requests(*, session: Session, now: dt.datetime, limit: int) -> list:
    """Queued LLM requests whose lease ran out (id, item_id, job_id, source, attempts), locked."""
    return session.execute(
        sa.select(LlmRequest.id, LlmRequest.item_id, LlmRequest.job_id, LlmRequest.source, LlmRequest.attempts)
        .where(LlmRequest.status == RequestStatus.QUEUED, LlmRequest.lease_until < now)
        .order_by(LlmRequest.id).limit(limit).with_for_update(skip_locked=True)
    ).all()


def renew_requests(*, session: Session, request_ids: Sequence[int], lease: dt.datetime, now: dt.datetime) -> None:
    if request_ids:
        session.execute(sa.update(LlmRequest).where(LlmRequest.id.in_(list(request_ids)))
                        .values(lease_until=lease, updated_at=now))


def fail_requests(*, session: Session, errors: dict[int, str], now: dt.datetime) -> None:
    """Dead-letter requests by id with their error (one executemany): the signal is then missing."""
    if not errors:
        return
    statement = (sa.update(LlmRequest).where(LlmRequest.id == sa.bindparam("b_id"))
                 .values(status=RequestStatus.FAILED, error=sa.bindparam("b_error"), updated_at=now))
    session.connection().execute(statement, [{"b_id": i, "b_error": e} for i, e in errors.items()])

