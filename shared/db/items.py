"""The ``items``, ``item_features`` and ``predictions`` tables: claim, store features, fail, finish.

Every write is bulk and idempotent: a second run of the same call changes nothing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.common import ClaimedItem, insert_ignoring_conflicts
from shared.db.models import Item, ItemFeatures, Prediction, utcnow
from shared.dispatch import chunks
from shared.vocab import OPEN_ITEM_STATUSES, WAITING_FOR_AGGREGATOR, ItemStatus


def pending_item_batches(*, session: Session, job_id: uuid.UUID, items_per_batch: int) -> list[list[int]]:
    """Ids of the job's pending items, in runs of ``items_per_batch``, grouped by similar length.

    Sorting by length before cutting lets each embed task pad little.
    """
    rows = session.execute(
        sa.select(Item.id).where(Item.job_id == job_id, Item.status == ItemStatus.PENDING)
        .order_by(sa.func.length(Item.text), Item.id)
    ).scalars().all()
    return chunks(rows, items_per_batch)


def claim_pending(*, session: Session, item_ids: Sequence[int], lease_seconds: int) -> list[ClaimedItem]:
    """The still-pending items among ``item_ids``, with an attempt counted; others are already done."""
    rows = session.execute(
        sa.select(Item.id, Item.text).where(Item.id.in_(item_ids), Item.status == ItemStatus.PENDING)
    ).all()
    if rows:
        session.execute(sa.update(Item).where(Item.id.in_([r.id for r in rows])).values(
            attempts=Item.attempts + 1, lease_until=utcnow() + dt.timedelta(seconds=lease_seconds), updated_at=utcnow()))
    return [ClaimedItem(id=r.id, text=r.text) for r in rows]


def store_features(*, session: Session, encoder_key: str, vectors: dict[int, bytes], dim: int,
                   lease_seconds: int) -> None:
    """Upsert features and move their items from pending to embedded, leased to the aggregator."""
    now = utcnow()
    insert_ignoring_conflicts(session, ItemFeatures, [
        {"item_id": item_id, "encoder_key": encoder_key, "dim": dim, "vector": vector, "created_at": now}
        for item_id, vector in vectors.items()
    ], keys=("item_id", "encoder_key"))
    session.execute(sa.update(Item).where(Item.id.in_(list(vectors)), Item.status == ItemStatus.PENDING)
                    .values(status=ItemStatus.EMBEDDED, updated_at=now,
                            lease_until=now + dt.timedelta(seconds=lease_seconds)))


def mark_failed(*, session: Session, errors: dict[int, str]) -> None:
    """Record a final failure for items that are not already finished (one executemany)."""
    if not errors:
        return
    still_open = sa.or_(*(Item.status == status for status in OPEN_ITEM_STATUSES))  # executemany cannot expand IN
    statement = (sa.update(Item).where(Item.id == sa.bindparam("b_id"), still_open)
                 .values(status=ItemStatus.FAILED, error=sa.bindparam("b_error"), updated_at=utcnow()))
    session.connection().execute(statement, [{"b_id": i, "b_error": e[:4000]} for i, e in errors.items()])


def store_predictions(*, session: Session, rows: Sequence[dict]) -> None:
    """Upsert final predictions (one per item, unique) and mark their items done."""
    insert_ignoring_conflicts(session, Prediction, rows, keys=("item_id",))
    session.execute(sa.update(Item).where(Item.id.in_([r["item_id"] for r in rows]),
                                          Item.status.in_(WAITING_FOR_AGGREGATOR))
                    .values(status=ItemStatus.DONE, updated_at=utcnow()))


def job_result_rows(*, session: Session, job_id: uuid.UUID) -> list[tuple[Item, Prediction | None]]:
    """Every item of the job in submission order, with its prediction when it has one."""
    return list(session.execute(
        sa.select(Item, Prediction).outerjoin(Prediction, Prediction.item_id == Item.id)
        .where(Item.job_id == job_id).order_by(Item.position)
    ).tuples())
