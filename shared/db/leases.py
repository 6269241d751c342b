"""Claims and queued work, for the sweeper and the workers' heartbeats.

A claimed row (an item, an LLM request) carries ``lease_until``: its worker holds it until then and
renews it while it works. A queued row has no lease; ``updated_at`` says since when it waits.
Rows are taken ``FOR UPDATE SKIP LOCKED``: two sweepers never take the same work, and a worker
claiming a row right now is left alone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import Item, LlmRequest
from shared.dispatch import chunks
from shared.vocab import ItemStatus, RequestStatus


def lapsed_item_claims(*, session: Session, now: dt.datetime, limit: int) -> list:
    """Pending items whose claim's lease ran out: their encoder died, hangs or was paused
    (id, job_id, attempts, resends), locked."""
    return session.execute(
        sa.select(Item.id, Item.job_id, Item.attempts, Item.resends)
        .where(Item.status == ItemStatus.PENDING, Item.lease_until < now)
        .order_by(Item.id).limit(limit).with_for_update(skip_locked=True)).all()


def queued_items(*, session: Session, statuses: Sequence[str], queued_before: dt.datetime, limit: int,
                 without_queued_request: bool = False) -> list:
    """Unclaimed items in ``statuses`` queued before ``queued_before`` (id, job_id, attempts, resends), locked.

    ``without_queued_request``: only items not waiting for an LLM answer (their signals are all in)."""
    conditions = [Item.status.in_(list(statuses)), Item.lease_until.is_(None), Item.updated_at < queued_before]
    if without_queued_request:
        conditions.append(~sa.exists().where(LlmRequest.item_id == Item.id, LlmRequest.status == RequestStatus.QUEUED))
    return session.execute(
        sa.select(Item.id, Item.job_id, Item.attempts, Item.resends).where(*conditions)
        .order_by(Item.id).limit(limit).with_for_update(skip_locked=True)).all()


def requeue_items(*, session: Session, item_ids: Sequence[int], now: dt.datetime, count_resend: bool = False) -> None:
    """The items wait in a queue again from ``now``, unclaimed; ``count_resend``: their message was lost."""
    values = {"lease_until": None, "updated_at": now}
    if count_resend:
        values["resends"] = Item.resends + 1
    for ids in chunks(list(item_ids), 10_000):
        session.execute(sa.update(Item).where(Item.id.in_(ids)).values(**values),
                        execution_options={"synchronize_session": False})


def lapsed_request_claims(*, session: Session, now: dt.datetime, limit: int) -> list:
    """Queued LLM requests whose claim's lease ran out (id, item_id, job_id, source, attempts), locked."""
    return session.execute(
        sa.select(LlmRequest.id, LlmRequest.item_id, LlmRequest.job_id, LlmRequest.source, LlmRequest.attempts)
        .where(LlmRequest.status == RequestStatus.QUEUED, LlmRequest.lease_until < now)
        .order_by(LlmRequest.id).limit(limit).with_for_update(skip_locked=True)).all()


def queued_requests(*, session: Session, queued_before: dt.datetime, limit: int) -> list:
    """Unclaimed LLM requests queued before ``queued_before`` (id, item_id, job_id, source, attempts), locked."""
    return session.execute(
        sa.select(LlmRequest.id, LlmRequest.item_id, LlmRequest.job_id, LlmRequest.source, LlmRequest.attempts)
        .where(LlmRequest.status == RequestStatus.QUEUED, LlmRequest.lease_until.is_(None),
               LlmRequest.updated_at < queued_before)
        .order_by(LlmRequest.id).limit(limit).with_for_update(skip_locked=True)).all()


def requeue_requests(*, session: Session, request_ids: Sequence[int], now: dt.datetime) -> None:
    """The requests wait in a queue again from ``now``, unclaimed."""
    for ids in chunks(list(request_ids), 10_000):
        session.execute(sa.update(LlmRequest).where(LlmRequest.id.in_(ids)).values(lease_until=None, updated_at=now),
                        execution_options={"synchronize_session": False})


def fail_requests(*, session: Session, errors: dict[int, str], now: dt.datetime) -> None:
    """Dead-letter requests by id with their error (one executemany): the signal is then missing."""
    if not errors:
        return
    statement = (sa.update(LlmRequest).where(LlmRequest.id == sa.bindparam("b_id"))
                 .values(status=RequestStatus.FAILED, error=sa.bindparam("b_error"), lease_until=None, updated_at=now))
    session.connection().execute(statement, [{"b_id": i, "b_error": e} for i, e in errors.items()])


def renew_item_claim(*, session: Session, item_ids: Sequence[int], token: int, lease: dt.datetime) -> int:
    """Extend the lease of the items this claim still holds (a finished item has none); how many."""
    return session.execute(
        sa.update(Item).where(Item.id.in_(list(item_ids)), Item.claim_token == token, Item.lease_until.is_not(None))
        .values(lease_until=lease), execution_options={"synchronize_session": False}).rowcount


def renew_request_claim(*, session: Session, item_ids: Sequence[int], source: str, token: int,
                        lease: dt.datetime) -> int:
    """Extend the lease of the ``source`` requests this claim still holds; how many."""
    return session.execute(
        sa.update(LlmRequest).where(LlmRequest.item_id.in_(list(item_ids)), LlmRequest.source == source,
                                    LlmRequest.claim_token == token, LlmRequest.lease_until.is_not(None))
        .values(lease_until=lease), execution_options={"synchronize_session": False}).rowcount
