"""Claims and queued work, for the sweeper and the workers' heartbeats.

A claimed row (an item, an LLM request) carries ``lease_until``: its worker holds it until then and
renews it while it works. A queued row has no lease; ``updated_at`` says since when it waits.
Lapsed claims are taken ``FOR UPDATE SKIP LOCKED``: two sweepers never take the same work, and a
worker claiming a row right now is left alone. Queued rows are read without locks (most have a
message and are left alone) and only the lost ones are moved, by an UPDATE that checks again that
they are still queued as they were.
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


def _queued_item_conditions(statuses: Sequence[str], queued_before: dt.datetime, without_queued_request: bool) -> list:
    conditions = [Item.status.in_(list(statuses)), Item.lease_until.is_(None), Item.updated_at < queued_before]
    if without_queued_request:
        conditions.append(~sa.exists().where(LlmRequest.item_id == Item.id, LlmRequest.status == RequestStatus.QUEUED))
    return conditions


def queued_item_ids(*, session: Session, statuses: Sequence[str], queued_before: dt.datetime,
                    limit: int | None = None, without_queued_request: bool = False) -> list[int]:
    """Ids of unclaimed items in ``statuses`` queued before ``queued_before``; read, not locked: most
    of them have a message in the broker, and only the lost ones are then moved, by
    :func:`requeue_lost_items`, which checks the same conditions again.

    ``without_queued_request``: only items not waiting for an LLM answer (their signals are all in)."""
    return list(session.scalars(sa.select(Item.id).where(
        *_queued_item_conditions(statuses, queued_before, without_queued_request)).order_by(Item.id).limit(limit)))


def requeue_lost_items(*, session: Session, item_ids: Sequence[int], statuses: Sequence[str],
                       queued_before: dt.datetime, now: dt.datetime, without_queued_request: bool = False) -> list:
    """Queue again from ``now`` the items among ``item_ids`` that are still queued as they were (a worker
    did not claim or finish one meanwhile, another sweeper did not take it), counting a resend each;
    the ones moved (id, job_id, resends)."""
    moved = []
    for ids in chunks(list(item_ids), 10_000):
        moved += session.execute(
            sa.update(Item).where(Item.id.in_(ids), *_queued_item_conditions(statuses, queued_before,
                                                                             without_queued_request))
            .values(updated_at=now, resends=Item.resends + 1).returning(Item.id, Item.job_id, Item.resends),
            execution_options={"synchronize_session": False}).all()
    return sorted(moved, key=lambda r: r.id)


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


def _queued_request_conditions(queued_before: dt.datetime) -> list:
    return [LlmRequest.status == RequestStatus.QUEUED, LlmRequest.lease_until.is_(None),
            LlmRequest.updated_at < queued_before]


def queued_requests(*, session: Session, queued_before: dt.datetime, limit: int | None = None) -> list:
    """Unclaimed LLM requests queued before ``queued_before`` (id, item_id, source); read, not locked
    (as :func:`queued_item_ids`)."""
    return session.execute(sa.select(LlmRequest.id, LlmRequest.item_id, LlmRequest.source)
                           .where(*_queued_request_conditions(queued_before)).order_by(LlmRequest.id).limit(limit)).all()


def requeue_lost_requests(*, session: Session, request_ids: Sequence[int], queued_before: dt.datetime,
                          now: dt.datetime) -> list:
    """Queue again from ``now`` the requests among ``request_ids`` still queued as they were; the ones
    moved (id, item_id, job_id, source)."""
    moved = []
    for ids in chunks(list(request_ids), 10_000):
        moved += session.execute(
            sa.update(LlmRequest).where(LlmRequest.id.in_(ids), *_queued_request_conditions(queued_before))
            .values(updated_at=now)
            .returning(LlmRequest.id, LlmRequest.item_id, LlmRequest.job_id, LlmRequest.source),
            execution_options={"synchronize_session": False}).all()
    return sorted(moved, key=lambda r: r.id)


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
