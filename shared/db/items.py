"""The ``items``, ``item_features`` and ``predictions`` tables: claim, store features, fail, finish.

Every write is bulk and idempotent: a second run of the same call changes nothing.
"""

from __future__ import annotations

import functools
import uuid
from collections import Counter
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.common import ClaimedItem, claimable, insert_ignoring_conflicts, json_rows, lease_end, on_postgres
from shared.db.jobs import job_not_found, job_with_classifier
from shared.db.models import Classifier, Item, ItemFeatures, Job, Prediction, utcnow
from shared.threads import run_beside
from shared.vocab import OPEN_ITEM_STATUSES, WAITING_FOR_AGGREGATOR, ItemStatus


def refresh_item_statistics(*, session: Session) -> None:
    """``ANALYZE items`` on Postgres, right after a large job is stored.

    Statistics taken before the insert say almost no item is pending, so the planner reads the
    claims' ``status = 'pending'`` through the status index, every pending item of the job each
    time, instead of the 1,024 ids by primary key: a claim that costs O(job), a job that costs
    O(job^2). Autovacuum would notice only a minute later, or never where it is off. A role that
    does not own the table gets a warning from Postgres and nothing changes."""
    if on_postgres(session):
        session.execute(sa.text("ANALYZE items"))


def claim_pending(*, session: Session, item_ids: Sequence[int], lease_seconds: int, token: int) -> list[ClaimedItem]:
    """The pending items among ``item_ids`` that no live worker holds, now held under ``token`` (an
    attempt counted, leased); others are done or in other hands.

    One UPDATE ... RETURNING: the claim is a single round trip."""
    now = utcnow()
    items = Item.__table__
    rows = session.connection().execute(
        sa.update(items).where(items.c.id.in_(list(item_ids)), items.c.status == ItemStatus.PENDING,
                               claimable(items, now))
        .values(attempts=items.c.attempts + 1, lease_until=lease_end(now, lease_seconds), claim_token=token,
                updated_at=now)
        .returning(items.c.id, items.c.text, items.c.mode)).all()
    order = {item_id: n for n, item_id in enumerate(item_ids)}
    return sorted((ClaimedItem(id=r.id, text=r.text, mode=r.mode) for r in rows), key=lambda c: order.get(c.id, 0))


def claim_job_items(*, session: Session, job_id: uuid.UUID, item_ids: Sequence[int], lease_seconds: int, token: int
                    ) -> tuple[Job, Classifier | None, list[ClaimedItem]]:
    """The job, its classifier and the claimable pending items among ``item_ids``, claimed under
    ``token`` as :func:`claim_pending` does.

    On Postgres one statement does it all (the claim is a data-modifying CTE) and lets the commit
    return before its WAL is on disk: a claim lost with a crashed Postgres only forgets an attempt.
    The job and classifier come once, the claimed items as arrays, so their JSON is parsed once."""
    if not on_postgres(session):
        job, classifier = job_with_classifier(session=session, job_id=job_id)
        return job, classifier, claim_pending(session=session, item_ids=item_ids, lease_seconds=lease_seconds,
                                              token=token)
    now = utcnow()
    row = session.execute(_claim_with_job_statement(), {
        "the_job": job_id, "the_ids": list(item_ids), "the_time": now, "the_token": token,
        "the_lease": lease_end(now, lease_seconds),
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
    The ids travel as one array, so every batch size shares one statement text. (Parameters
    named after columns would become SET clauses of the UPDATE, hence ``the_``.)"""
    from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by

    items = Item.__table__
    the_time = sa.bindparam("the_time", type_=items.c.updated_at.type)
    claimed = (sa.update(items)
               .where(items.c.id == sa.any_(sa.bindparam("the_ids", type_=ARRAY(sa.BigInteger))),
                      items.c.job_id == sa.bindparam("the_job"), items.c.status == ItemStatus.PENDING.value,
                      claimable(items, the_time))
               .values(attempts=items.c.attempts + 1, lease_until=sa.bindparam("the_lease"),
                       claim_token=sa.bindparam("the_token", type_=sa.BigInteger), updated_at=the_time)
               .returning(items.c.id, items.c.text, items.c.mode).cte("claimed"))

    def claimed_column(column):  # one array per column, all in id order
        return sa.select(sa.func.array_agg(aggregate_order_by(column, claimed.c.id))).scalar_subquery()

    return (sa.select(Job, Classifier, claimed_column(claimed.c.id), claimed_column(claimed.c.text),
                      claimed_column(claimed.c.mode), sa.func.set_config("synchronous_commit", "off", True))
            .add_cte(claimed).outerjoin(Classifier, Classifier.id == Job.classifier_id)
            .where(Job.id == sa.bindparam("the_job")))


def store_features(*, session: Session, encoder_key: str, vectors: dict[int, bytes], dim: int, token: int) -> list[int]:
    """Store features of items this claim (``token``) still holds and queue them for the aggregator;
    the ids that moved. A writer whose claim was taken over (it was paused past its lease) writes nothing."""
    now = utcnow()
    moved = session.execute(
        sa.update(Item).where(Item.id.in_(list(vectors)), Item.status == ItemStatus.PENDING, Item.claim_token == token)
        .values(status=ItemStatus.EMBEDDED, updated_at=now, lease_until=None).returning(Item.id),
        execution_options={"synchronize_session": False}).scalars().all()
    insert_ignoring_conflicts(session, ItemFeatures, [
        {"item_id": item_id, "encoder_key": encoder_key, "dim": dim, "vector": vectors[item_id], "created_at": now}
        for item_id in moved
    ], keys=("item_id", "encoder_key"))
    return sorted(moved)


def mark_failed(*, session: Session, errors: dict[int, str], token: int | None = None) -> Counter[uuid.UUID]:
    """Record a final failure for items that are not already finished (and, with ``token``, that this
    claim still holds); how many failed now, per job.

    One UPDATE per distinct message (a batch's failures usually share one)."""
    failed: Counter[uuid.UUID] = Counter()
    by_message: dict[str, list[int]] = {}
    for item_id, message in errors.items():
        by_message.setdefault(message[:4000], []).append(item_id)
    for message, ids in by_message.items():
        fence = () if token is None else (Item.claim_token == token,)
        moved = session.execute(
            sa.update(Item).where(Item.id.in_(ids), Item.status.in_(OPEN_ITEM_STATUSES), *fence)
            .values(status=ItemStatus.FAILED, error=message, updated_at=utcnow()).returning(Item.job_id),
            execution_options={"synchronize_session": False})
        failed.update(job_id for (job_id,) in moved)
    return failed


def store_predictions(*, session: Session, item_ids: Sequence[int], make_rows: Callable[[], Sequence[dict]],
                      from_statuses: Sequence[str] = WAITING_FOR_AGGREGATOR, token: int | None = None) -> int:
    """Mark ``item_ids`` done and store their predictions, one row per id from ``make_rows()``; how
    many became done now.

    ``from_statuses``: where the items may come from (the embed stage finishes fast items straight
    from pending, under its claim ``token``). Only items that move now get a prediction, so a late
    or repeated writer adds none. Each prediction's ``created_at`` is this call's time, sent once,
    not per row. Core statements on the session's connection: the hot path skips the ORM. On
    Postgres the items' UPDATE runs on a helper thread while ``make_rows`` computes the rows here
    (``run_beside``): the server's core and this one work at once."""
    postgres = on_postgres(session)
    now = utcnow()
    params = {"the_ids": list(item_ids), "from_statuses": [str(s) for s in from_statuses],
              "the_time": now, **({} if token is None else {"the_token": token})}
    connection = session.connection()
    statement = _finish_statement(token is not None, postgres)

    def mark_done() -> set[int]:
        return set(connection.execute(statement, params).scalars())

    if not postgres:  # SQLite's connection stays on the thread that opened it
        moved = mark_done()
        finished = [r for r in make_rows() if r["item_id"] in moved]
        insert_ignoring_conflicts(session, Prediction, [{**r, "created_at": now} for r in finished], keys=("item_id",))
        return len(moved)

    def rows_as_document() -> tuple[Sequence[dict], str]:
        rows = make_rows()
        return rows, json_rows(rows)

    moved, (rows, document) = run_beside(mark_done, rows_as_document)
    finished = [r for r in rows if r["item_id"] in moved]
    if finished:  # usually every row: the document is already made
        document = document if len(finished) == len(rows) else json_rows(finished)
        connection.execute(_INSERT_PREDICTIONS_FROM_JSON, {"the_rows": document, "the_time": now})
    return len(moved)


# Postgres: a task's predictions travel as one JSON document (json_rows) that Postgres takes apart:
# a 1,024-row multi-VALUES insert spent ~20 ms of Python adapting its 8,000 parameters. The same
# rows and the same ON CONFLICT guard as insert_ignoring_conflicts; the time they share goes once
# (a timestamp per row cost ~2.5 ms of Python per 1,024 rows to format).
_INSERT_PREDICTIONS_FROM_JSON = sa.text("""
    INSERT INTO predictions (item_id, labels, probabilities, confidence, signals, flags, latency_ms, created_at)
    SELECT r.item_id, r.labels, r.probabilities, r.confidence, r.signals, r.flags, r.latency_ms, :the_time
    FROM json_to_recordset(CAST(:the_rows AS json))
         AS r(item_id bigint, labels json, probabilities json, confidence float8, signals json, flags json,
              latency_ms float8)
    ON CONFLICT (item_id) DO NOTHING""").bindparams(sa.bindparam("the_time", type_=sa.DateTime(timezone=True)))


@functools.cache
def _finish_statement(fenced: bool, postgres: bool):
    """:func:`store_predictions`' UPDATE of the items, built once. On Postgres the ids and statuses
    travel as arrays (one parameter each, one statement text for every batch size); SQLite expands lists."""
    items = Item.__table__
    fence = (items.c.claim_token == sa.bindparam("the_token", type_=sa.BigInteger),) if fenced else ()
    if postgres:
        from sqlalchemy.dialects.postgresql import ARRAY

        which = (items.c.id == sa.any_(sa.bindparam("the_ids", type_=ARRAY(sa.BigInteger))),
                 items.c.status == sa.any_(sa.bindparam("from_statuses", type_=ARRAY(sa.String))))
    else:
        which = (items.c.id.in_(sa.bindparam("the_ids", expanding=True)),
                 items.c.status.in_(sa.bindparam("from_statuses", expanding=True)))
    return (sa.update(items)
            .where(*which, *fence)
            .values(status=ItemStatus.DONE.value, lease_until=None,
                    updated_at=sa.bindparam("the_time", type_=items.c.updated_at.type))
            .returning(items.c.id))


def job_result_rows(*, session: Session, job_id: uuid.UUID, offset: int = 0,
                    limit: int | None = None) -> list[tuple[Item, Prediction | None]]:
    """The job's items in submission order from position ``offset`` (at most ``limit``), each with its
    prediction when it has one."""
    return list(session.execute(
        sa.select(Item, Prediction).outerjoin(Prediction, Prediction.item_id == Item.id)
        .where(Item.job_id == job_id, Item.position >= offset).order_by(Item.position).limit(limit)
    ).tuples())
