"""The ``items``, ``item_features`` and ``predictions`` tables: claim, store features, fail, finish.

Every write is bulk and idempotent: a second run of the same call changes nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections import Counter
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.common import ClaimedItem, insert_ignoring_conflicts, on_postgres
from shared.db.jobs import job_not_found, job_with_classifier
from shared.db.models import Classifier, Item, ItemFeatures, Job, Prediction, utcnow
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
    """The still-pending items among ``item_ids``, with an attempt counted; others are already done.

    One UPDATE ... RETURNING: the claim is a single round trip."""
    now = utcnow()
    items = Item.__table__
    rows = session.connection().execute(
        sa.update(items).where(items.c.id.in_(list(item_ids)), items.c.status == ItemStatus.PENDING)
        .values(attempts=items.c.attempts + 1, lease_until=now + dt.timedelta(seconds=lease_seconds), updated_at=now)
        .returning(items.c.id, items.c.text, items.c.mode)).all()
    order = {item_id: n for n, item_id in enumerate(item_ids)}
    return sorted((ClaimedItem(id=r.id, text=r.text, mode=r.mode) for r in rows), key=lambda c: order.get(c.id, 0))


def claim_job_items(*, session: Session, job_id: uuid.UUID, item_ids: Sequence[int], lease_seconds: int
                    ) -> tuple[Job, Classifier | None, list[ClaimedItem]]:
    """The job, its classifier and the still-pending items among ``item_ids``, claimed (an attempt
    counted, leased) as :func:`claim_pending` does.

    On Postgres one statement does it all (the claim is a data-modifying CTE) and lets the commit
    return before its WAL is on disk: a claim lost with a crashed Postgres only forgets an attempt.
    The job and classifier come once, the claimed items as arrays, so their JSON is parsed once."""
    if not on_postgres(session):
        job, classifier = job_with_classifier(session=session, job_id=job_id)
        return job, classifier, claim_pending(session=session, item_ids=item_ids, lease_seconds=lease_seconds)
    now = utcnow()
    row = session.execute(_claim_with_job_statement(), {
        "the_job": job_id, "the_ids": list(item_ids), "the_time": now,
        "the_lease": now + dt.timedelta(seconds=lease_seconds),
    }).first()
    if row is None:
        raise job_not_found(job_id)
    job, classifier, ids, texts, modes = row[:5]
    order = {item_id: n for n, item_id in enumerate(item_ids)}
    taken = sorted((ClaimedItem(id=i, text=t, mode=m) for i, t, m in zip(ids or (), texts or (), modes or ())),
                   key=lambda c: order.get(c.id, 0))
    return job, classifier, taken


@functools.cache
def _claim_with_job_statement():
    """:func:`claim_job_items`' statement, built once: constructing it cost more than running it.
    The ids travel as one array, so every batch size shares one prepared statement. (Parameters
    named after columns would become SET clauses of the UPDATE, hence ``the_``.)"""
    from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by

    items = Item.__table__
    claimed = (sa.update(items)
               .where(items.c.id == sa.any_(sa.bindparam("the_ids", type_=ARRAY(sa.BigInteger))),
                      items.c.job_id == sa.bindparam("the_job"), items.c.status == ItemStatus.PENDING.value)
               .values(attempts=items.c.attempts + 1, lease_until=sa.bindparam("the_lease"),
                       updated_at=sa.bindparam("the_time"))
               .returning(items.c.id, items.c.text, items.c.mode).cte("claimed"))

    def claimed_column(column):  # one array per column, all in id order
        return sa.select(sa.func.array_agg(aggregate_order_by(column, claimed.c.id))).scalar_subquery()

    return (sa.select(Job, Classifier, claimed_column(claimed.c.id), claimed_column(claimed.c.text),
                      claimed_column(claimed.c.mode), sa.func.set_config("synchronous_commit", "off", True))
            .add_cte(claimed).outerjoin(Classifier, Classifier.id == Job.classifier_id)
            .where(Job.id == sa.bindparam("the_job")))


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


def mark_failed(*, session: Session, errors: dict[int, str]) -> Counter[uuid.UUID]:
    """Record a final failure for items that are not already finished; how many failed now, per job.

    One UPDATE per distinct message (a batch's failures usually share one)."""
    failed: Counter[uuid.UUID] = Counter()
    by_message: dict[str, list[int]] = {}
    for item_id, message in errors.items():
        by_message.setdefault(message[:4000], []).append(item_id)
    for message, ids in by_message.items():
        moved = session.execute(
            sa.update(Item).where(Item.id.in_(ids), Item.status.in_(OPEN_ITEM_STATUSES))
            .values(status=ItemStatus.FAILED, error=message, updated_at=utcnow()).returning(Item.job_id),
            execution_options={"synchronize_session": False})
        failed.update(job_id for (job_id,) in moved)
    return failed


def store_predictions(*, session: Session, rows: Sequence[dict],
                      from_statuses: Sequence[str] = WAITING_FOR_AGGREGATOR) -> int:
    """Upsert final predictions (one per item, unique) and mark their items done; how many became done now.

    ``from_statuses``: where the items may come from (the embed stage finishes fast items straight
    from pending). Core statements on the session's connection: the hot path skips the ORM."""
    insert_ignoring_conflicts(session, Prediction, rows, keys=("item_id",))
    moved = session.connection().execute(_finish_statement(), {
        "the_ids": [r["item_id"] for r in rows], "from_statuses": [str(s) for s in from_statuses], "the_time": utcnow()})
    return len(moved.all())


@functools.cache
def _finish_statement():
    """:func:`store_predictions`' UPDATE of the items, built once (expanding lists suit both dialects)."""
    items = Item.__table__
    return (sa.update(items)
            .where(items.c.id.in_(sa.bindparam("the_ids", expanding=True)),
                   items.c.status.in_(sa.bindparam("from_statuses", expanding=True)))
            .values(status=ItemStatus.DONE.value, updated_at=sa.bindparam("the_time", type_=items.c.updated_at.type))
            .returning(items.c.id))


def job_result_rows(*, session: Session, job_id: uuid.UUID) -> list[tuple[Item, Prediction | None]]:
    """Every item of the job in submission order, with its prediction when it has one."""
    return list(session.execute(
        sa.select(Item, Prediction).outerjoin(Prediction, Prediction.item_id == Item.id)
        .where(Item.job_id == job_id).order_by(Item.position)
    ).tuples())
