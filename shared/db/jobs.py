"""Data access for jobs, items, features and predictions. Every write is bulk and idempotent.

Functions take the session keyword-only; the caller (client or task) owns the transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import Classifier, Item, ItemFeatures, Job, Prediction, utcnow
from shared.errors import IdempotencyConflict, JobNotFound
from shared.textio import text_hash, text_problem


def insert_ignoring_conflicts(session: Session, model: type, rows: Sequence[dict], keys: Sequence[str]) -> None:
    """Bulk INSERT ... ON CONFLICT (keys) DO NOTHING: a second run of the same write is a no-op."""
    if not rows:
        return
    insert = dialect_insert(session)
    session.execute(insert(model).on_conflict_do_nothing(index_elements=list(keys)), list(rows))


def dialect_insert(session: Session):
    """The INSERT construct of the session's dialect, which knows ON CONFLICT (Postgres, SQLite)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only Postgres and SQLite are supported
        raise NotImplementedError(f"no idempotent insert for the {dialect} dialect")
    return insert


def create_job(
    *,
    session: Session,
    classifier: Classifier | None,
    texts: Sequence[str],
    mode: str,
    idempotency_key: str | None,
    max_text_chars: int,
    labels: dict | None = None,
    multi_label: bool | None = None,
    llm_source: str | None = None,
) -> tuple[Job, bool]:
    """Insert a job and all its items in the caller's transaction; (job, created).

    Unusable texts become items that are already ``failed`` with their reason, so one bad text
    never stops the others. With an ``idempotency_key`` seen before, the earlier job is returned.
    """
    if idempotency_key:
        existing = job_for_idempotency_key(session, idempotency_key, classifier, texts)
        if existing is not None:
            return existing, False
    now = utcnow()
    job = Job(id=uuid.uuid4(), classifier_id=classifier.id if classifier else None, mode=mode, status="queued",
              labels=labels, multi_label=multi_label, llm_source=llm_source,
              idempotency_key=idempotency_key, n_items=len(texts), n_done=0, n_failed=0,
              created_at=now, updated_at=now)
    rows = []
    for position, text in enumerate(texts):
        problem = text_problem(text, max_chars=max_text_chars)
        safe = text if isinstance(text, str) else ""
        rows.append({"job_id": job.id, "position": position, "text": safe, "text_hash": text_hash(safe),
                     "status": "failed" if problem else "pending", "attempts": 0, "lease_until": None,
                     "updated_at": now, "error": problem})
    job.n_failed = sum(1 for r in rows if r["status"] == "failed")
    if job.n_failed == len(rows):
        job.status, job.finished_at = "completed", now
    # A concurrent submit with the same key makes this flush raise IntegrityError; the client
    # rolls back and asks again, finding the winner's job.
    session.add(job)
    session.flush()
    session.execute(sa.insert(Item), rows)
    return job, True


def job_for_idempotency_key(session: Session, key: str, classifier: Classifier | None,
                            texts: Sequence[str]) -> Job | None:
    job = session.scalars(sa.select(Job).where(Job.idempotency_key == key)).first()
    classifier_id = classifier.id if classifier else None
    if job is not None and (job.classifier_id != classifier_id or job.n_items != len(texts)):
        raise IdempotencyConflict(
            f"idempotency key {key!r} already names job {job.id} ({job.n_items} texts, classifier id "
            f"{job.classifier_id}); this request has {len(texts)} texts for classifier id {classifier_id}. Use a new key."
        )
    return job


def pending_item_batches(*, session: Session, job_id: uuid.UUID, items_per_batch: int) -> list[list[int]]:
    """Ids of the job's pending items, in runs of ``items_per_batch``, grouped by similar length.

    Sorting by length before cutting lets each embed task pad little.
    """
    rows = session.execute(
        sa.select(Item.id).where(Item.job_id == job_id, Item.status == "pending").order_by(sa.func.length(Item.text), Item.id)
    ).scalars().all()
    return [list(rows[i:i + items_per_batch]) for i in range(0, len(rows), items_per_batch)]


def lease_items(*, session: Session, item_ids: Sequence[int], lease_seconds: int) -> None:
    """Mark items as handed to the broker until now + lease; the sweeper re-enqueues expired ones."""
    session.execute(sa.update(Item).where(Item.id.in_(item_ids))
                    .values(lease_until=utcnow() + dt.timedelta(seconds=lease_seconds)))


@dataclass(frozen=True)
class ClaimedItem:
    id: int
    text: str


def claim_pending(*, session: Session, item_ids: Sequence[int], lease_seconds: int) -> list[ClaimedItem]:
    """The still-pending items among ``item_ids``, with an attempt counted; others are already done."""
    rows = session.execute(
        sa.select(Item.id, Item.text).where(Item.id.in_(item_ids), Item.status == "pending")
    ).all()
    if rows:
        session.execute(sa.update(Item).where(Item.id.in_([r.id for r in rows])).values(
            attempts=Item.attempts + 1, lease_until=utcnow() + dt.timedelta(seconds=lease_seconds), updated_at=utcnow()))
    return [ClaimedItem(id=r.id, text=r.text) for r in rows]


def mark_scored(*, session: Session, item_ids: Sequence[int]) -> None:
    """Move pending items of an LLM-only job to ``scored``: their answer is in the cache."""
    session.execute(sa.update(Item).where(Item.id.in_(list(item_ids)), Item.status == "pending")
                    .values(status="scored", updated_at=utcnow()))


def scored_items(*, session: Session, item_ids: Sequence[int]) -> list[tuple[int, str, dt.datetime]]:
    """(id, text hash, job created) of the scored items among ``item_ids``."""
    return [tuple(r) for r in session.execute(
        sa.select(Item.id, Item.text_hash, Job.created_at).join(Job, Job.id == Item.job_id)
        .where(Item.id.in_(list(item_ids)), Item.status == "scored").order_by(Item.id)).all()]


def store_features(*, session: Session, encoder_key: str, vectors: dict[int, bytes], dim: int) -> None:
    """Upsert features and move their items from pending to embedded."""
    now = utcnow()
    insert_ignoring_conflicts(session, ItemFeatures, [
        {"item_id": item_id, "encoder_key": encoder_key, "dim": dim, "vector": vector, "created_at": now}
        for item_id, vector in vectors.items()
    ], keys=("item_id", "encoder_key"))
    session.execute(sa.update(Item).where(Item.id.in_(list(vectors)), Item.status == "pending")
                    .values(status="embedded", updated_at=now))


def mark_failed(*, session: Session, errors: dict[int, str]) -> None:
    """Record a final failure for items that are not already finished."""
    now = utcnow()
    for item_id, error in errors.items():
        session.execute(sa.update(Item).where(Item.id == item_id, Item.status.in_(("pending", "embedded", "scored")))
                        .values(status="failed", error=error[:4000], updated_at=now))


@dataclass(frozen=True)
class FusionInput:
    item_id: int
    vector: bytes
    dim: int
    job_created_at: dt.datetime


def load_fusion_inputs(*, session: Session, item_ids: Sequence[int], encoder_key: str) -> list[FusionInput]:
    """Embedded items among ``item_ids`` with their features, ready for the fusion model."""
    rows = session.execute(
        sa.select(Item.id, ItemFeatures.vector, ItemFeatures.dim, Job.created_at)
        .join(ItemFeatures, sa.and_(ItemFeatures.item_id == Item.id, ItemFeatures.encoder_key == encoder_key))
        .join(Job, Job.id == Item.job_id)
        .where(Item.id.in_(item_ids), Item.status == "embedded")
        .order_by(Item.id)
    ).all()
    return [FusionInput(item_id=r[0], vector=r[1], dim=r[2], job_created_at=r[3]) for r in rows]


def store_predictions(*, session: Session, rows: Sequence[dict]) -> None:
    """Upsert final predictions (one per item, unique) and mark their items done."""
    insert_ignoring_conflicts(session, Prediction, rows, keys=("item_id",))
    session.execute(sa.update(Item).where(Item.id.in_([r["item_id"] for r in rows]), Item.status.in_(("embedded", "scored")))
                    .values(status="done", updated_at=utcnow()))


def refresh_job(*, session: Session, job_id: uuid.UUID) -> Job:
    """Recount the job's items under a row lock and complete it when every item is finished.

    The lock serialises concurrent aggregators of one job, so the last one always sees every
    committed item and the job cannot stay open forever.
    """
    job = session.scalars(sa.select(Job).where(Job.id == job_id).with_for_update()).first()
    if job is None:
        raise JobNotFound(f"no job {job_id}")
    counts = dict(session.execute(
        sa.select(Item.status, sa.func.count()).where(Item.job_id == job_id).group_by(Item.status)
    ).all())
    job.n_done, job.n_failed = counts.get("done", 0), counts.get("failed", 0)
    now = utcnow()
    job.updated_at = now
    if job.n_done + job.n_failed == job.n_items:
        if job.status != "completed":
            job.status, job.finished_at = "completed", now
    elif job.status == "queued":
        job.status = "running"
    return job


def get_job(*, session: Session, job_id: uuid.UUID | str) -> Job:
    job = session.get(Job, uuid.UUID(str(job_id)))
    if job is None:
        raise JobNotFound(f"no job {job_id}: check the id, or the database URL (FUSIONQ_DATABASE_URL)")
    return job


def job_result_rows(*, session: Session, job_id: uuid.UUID) -> list[tuple[Item, Prediction | None]]:
    """Every item of the job in submission order, with its prediction when it has one."""
    return list(session.execute(
        sa.select(Item, Prediction).outerjoin(Prediction, Prediction.item_id == Item.id)
        .where(Item.job_id == job_id).order_by(Item.position)
    ).tuples())
