"""Data access for jobs, items, features and predictions. Every write is bulk and idempotent.

Functions take the session keyword-only; the caller (client or task) owns the transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import Classifier, Item, ItemFeatures, Job, LlmRequest, Prediction, utcnow
from shared.errors import IdempotencyConflict, JobNotFound
from shared.textio import text_hash, text_problem

if TYPE_CHECKING:
    from shared.llm.result import TextScore


OPEN_STATUSES = ("pending", "embedded", "scoring")


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
    lease_seconds: int,
    labels: dict | None = None,
    multi_label: bool | None = None,
    llm_source: str | None = None,
    item_modes: Sequence[str | None] | None = None,
    tiers: Sequence[dict] | None = None,
    budget_items: int | None = None,
    budget_usd: float | None = None,
) -> tuple[Job, bool]:
    """Insert a job, its items and the LLM requests its modes need, in the caller's transaction.

    Unusable texts become items that are already ``failed`` with their reason, so one bad text
    never stops the others. Items in mode ``full`` get a request per tier and those in mode
    ``llm`` one for ``llm_source``, all queued now (the LLM runs beside the encoder). With an
    ``idempotency_key`` seen before, the earlier job is returned. Returns (job, created).
    """
    if idempotency_key:
        existing = job_for_idempotency_key(session, idempotency_key, classifier, texts)
        if existing is not None:
            return existing, False
    now = utcnow()
    lease = now + dt.timedelta(seconds=lease_seconds)
    job = Job(id=uuid.uuid4(), classifier_id=classifier.id if classifier else None, mode=mode, status="queued",
              labels=labels, multi_label=multi_label, llm_source=llm_source, tiers=list(tiers or []) or None,
              budget_items=budget_items, budget_usd=budget_usd, n_escalated=0,
              idempotency_key=idempotency_key, n_items=len(texts), n_done=0, n_failed=0,
              created_at=now, updated_at=now)
    rows = []
    for position, text in enumerate(texts):
        problem = text_problem(text, max_chars=max_text_chars)
        safe = text if isinstance(text, str) else ""
        if problem:  # keep what can be stored of a refused text, for the caller to see
            safe = safe.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
        own = item_modes[position] if item_modes is not None else None
        effective = own or mode
        status = "failed" if problem else ("scoring" if effective == "llm" else "pending")
        rows.append({"job_id": job.id, "position": position, "text": safe, "text_hash": text_hash(safe),
                     "mode": own, "status": status, "attempts": 0, "resends": 0, "lease_until": None if problem else lease,
                     "updated_at": now, "error": problem})
    job.n_failed = sum(1 for r in rows if r["status"] == "failed")
    if job.n_failed == len(rows):
        job.status, job.finished_at = "completed", now
    # A concurrent submit with the same key makes this flush raise IntegrityError; the client
    # rolls back and asks again, finding the winner's job.
    session.add(job)
    session.flush()
    if not rows:
        return job, True
    ids = dict(session.execute(sa.insert(Item).returning(Item.position, Item.id), rows).tuples().all())
    requests = []
    for row in rows:
        effective = row["mode"] or mode
        if row["status"] == "failed" or effective not in ("full", "llm"):
            continue
        sources = [t["source"] for t in job.tiers or []] if effective == "full" else [llm_source]
        for tier, source in enumerate(sources):
            requests.append(request_row(job_id=job.id, item_id=ids[row["position"]], tier=tier, source=source,
                                        reason=effective, lease_until=lease, now=now))
    if requests:
        session.execute(sa.insert(LlmRequest), requests)
    return job, True


def request_row(*, job_id: uuid.UUID, item_id: int, tier: int, source: str, reason: str, lease_until: dt.datetime | None,
                now: dt.datetime, status: str = "queued", error: str | None = None) -> dict:
    """One ``llm_requests`` row, queued with its lease (or skipped, for a tier that was down)."""
    return {"job_id": job_id, "item_id": item_id, "tier": tier, "source": source, "reason": reason, "status": status,
            "attempts": 0, "lease_until": lease_until, "scores": None, "method": None, "cost_usd": 0.0, "error": error,
            "created_at": now, "updated_at": now}


def add_requests(*, session: Session, rows: Sequence[dict]) -> set[int]:
    """Insert requests, skipping any (item, source) that exists; the item ids really added.

    The unique key is the guard that makes an escalation happen at most once per item and tier,
    however many aggregators or retries try.
    """
    if not rows:
        return set()
    insert = dialect_insert(session)
    added = session.execute(insert(LlmRequest).on_conflict_do_nothing(index_elements=["item_id", "source"])
                            .returning(LlmRequest.item_id, LlmRequest.status), list(rows)).all()
    return {item_id for item_id, status in added if status == "queued"}


def queued_request_batches(*, session: Session, job_id: uuid.UUID, items_per_batch: int) -> dict[str, list[list[int]]]:
    """Item ids with a queued LLM request, per source, in runs of ``items_per_batch``."""
    rows = session.execute(sa.select(LlmRequest.source, LlmRequest.item_id)
                           .where(LlmRequest.job_id == job_id, LlmRequest.status == "queued")
                           .order_by(LlmRequest.source, LlmRequest.item_id)).all()
    per_source: dict[str, list[int]] = {}
    for source, item_id in rows:
        per_source.setdefault(source, []).append(item_id)
    return {source: chunks(ids, items_per_batch) for source, ids in per_source.items()}


def chunks(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i:i + size]) for i in range(0, len(ids), size)]


def claim_requests(*, session: Session, item_ids: Sequence[int], source: str, lease_seconds: int) -> list[ClaimedItem]:
    """The items among ``item_ids`` with a queued ``source`` request, with an attempt counted."""
    rows = session.execute(
        sa.select(LlmRequest.id, Item.id, Item.text).join(Item, Item.id == LlmRequest.item_id)
        .where(LlmRequest.item_id.in_(list(item_ids)), LlmRequest.source == source, LlmRequest.status == "queued")
        .order_by(Item.id)
    ).all()
    if rows:
        now = utcnow()
        session.execute(sa.update(LlmRequest).where(LlmRequest.id.in_([r[0] for r in rows])).values(
            attempts=LlmRequest.attempts + 1, lease_until=now + dt.timedelta(seconds=lease_seconds), updated_at=now))
    return [ClaimedItem(id=r[1], text=r[2]) for r in rows]


def store_request_results(*, session: Session, source: str, results: dict[int, TextScore]) -> None:
    """Record each item's answer from ``source``: done with scores and cost, or failed with the reason.

    One executemany for the whole batch; only still-queued requests change, so a re-run is a no-op.
    """
    if not results:
        return
    now = utcnow()
    rows = [{"b_item": item_id, "b_status": "failed" if s.method == "failed" else "done",
             "b_scores": None if s.method == "failed" else [float(p) for p in s.probabilities],
             "b_method": None if s.method == "failed" else s.method,
             "b_error": (s.error or "LLM answer failed")[:4000] if s.method == "failed" else None,
             "b_cost": s.spent_usd} for item_id, s in results.items()]
    statement = (sa.update(LlmRequest)
                 .where(LlmRequest.item_id == sa.bindparam("b_item"), LlmRequest.source == source,
                        LlmRequest.status == "queued")
                 .values(status=sa.bindparam("b_status"), scores=sa.bindparam("b_scores", type_=sa.JSON),
                         method=sa.bindparam("b_method"), error=sa.bindparam("b_error"),
                         cost_usd=sa.bindparam("b_cost"), updated_at=now))
    session.connection().execute(statement, rows)


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
    return chunks(rows, items_per_batch)


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


def store_features(*, session: Session, encoder_key: str, vectors: dict[int, bytes], dim: int,
                   lease_seconds: int) -> None:
    """Upsert features and move their items from pending to embedded, leased to the aggregator."""
    now = utcnow()
    insert_ignoring_conflicts(session, ItemFeatures, [
        {"item_id": item_id, "encoder_key": encoder_key, "dim": dim, "vector": vector, "created_at": now}
        for item_id, vector in vectors.items()
    ], keys=("item_id", "encoder_key"))
    session.execute(sa.update(Item).where(Item.id.in_(list(vectors)), Item.status == "pending")
                    .values(status="embedded", updated_at=now, lease_until=now + dt.timedelta(seconds=lease_seconds)))


def mark_failed(*, session: Session, errors: dict[int, str]) -> None:
    """Record a final failure for items that are not already finished (one executemany)."""
    if not errors:
        return
    still_open = sa.or_(*(Item.status == status for status in OPEN_STATUSES))  # executemany cannot expand IN
    statement = (sa.update(Item).where(Item.id == sa.bindparam("b_id"), still_open)
                 .values(status="failed", error=sa.bindparam("b_error"), updated_at=utcnow()))
    session.connection().execute(statement, [{"b_id": i, "b_error": e[:4000]} for i, e in errors.items()])


@dataclass(frozen=True)
class RequestState:
    source: str
    tier: int
    reason: str
    status: str
    scores: list | None
    method: str | None
    error: str | None


@dataclass(frozen=True)
class AggregationInput:
    """An item the aggregator may finish: its own mode, features (if any) and LLM requests."""

    item_id: int
    mode: str | None
    vector: bytes | None
    dim: int | None
    job_created_at: dt.datetime
    requests: dict[str, RequestState]

    @property
    def waiting(self) -> bool:
        """True while an LLM answer is still to come."""
        return any(r.status == "queued" for r in self.requests.values())


def load_aggregation_inputs(*, session: Session, item_ids: Sequence[int], encoder_key: str | None) -> list[AggregationInput]:
    """Unfinished items among ``item_ids`` whose features are in (or that need none), with their requests."""
    feature_join = sa.and_(ItemFeatures.item_id == Item.id, ItemFeatures.encoder_key == (encoder_key or ""))
    rows = session.execute(
        sa.select(Item.id, Item.mode, ItemFeatures.vector, ItemFeatures.dim, Job.created_at)
        .outerjoin(ItemFeatures, feature_join).join(Job, Job.id == Item.job_id)
        .where(Item.id.in_(list(item_ids)), Item.status.in_(("embedded", "scoring")))
        .order_by(Item.id)
    ).all()
    requests: dict[int, dict[str, RequestState]] = {}
    if rows:
        for r in session.scalars(sa.select(LlmRequest).where(LlmRequest.item_id.in_([row[0] for row in rows]))):
            requests.setdefault(r.item_id, {})[r.source] = RequestState(
                source=r.source, tier=r.tier, reason=r.reason, status=r.status, scores=r.scores, method=r.method, error=r.error)
    return [AggregationInput(item_id=r[0], mode=r[1], vector=r[2], dim=r[3], job_created_at=r[4],
                             requests=requests.get(r[0], {})) for r in rows]


def llm_usage_by_source(*, session: Session, job_id: uuid.UUID) -> dict[str, dict[str, float]]:
    """Per source: requests done / failed / queued and what the done ones cost."""
    usage: dict[str, dict[str, float]] = {}
    for source, status, n, cost in session.execute(
            sa.select(LlmRequest.source, LlmRequest.status, sa.func.count(), sa.func.coalesce(sa.func.sum(LlmRequest.cost_usd), 0.0))
            .where(LlmRequest.job_id == job_id).group_by(LlmRequest.source, LlmRequest.status)).all():
        entry = usage.setdefault(source, {"done": 0, "failed": 0, "queued": 0, "skipped": 0, "cost_usd": 0.0})
        entry[status] = int(n)
        entry["cost_usd"] += float(cost)
    return usage


def lock_job(*, session: Session, job_id: uuid.UUID) -> Job:
    """The job row, locked until the transaction ends: one aggregator of a job at a time."""
    job = session.scalars(sa.select(Job).where(Job.id == job_id).with_for_update()
                          .execution_options(populate_existing=True)).first()  # fresh values, read under the lock
    if job is None:
        raise JobNotFound(f"no job {job_id}")
    return job


def store_predictions(*, session: Session, rows: Sequence[dict]) -> None:
    """Upsert final predictions (one per item, unique) and mark their items done."""
    insert_ignoring_conflicts(session, Prediction, rows, keys=("item_id",))
    session.execute(sa.update(Item).where(Item.id.in_([r["item_id"] for r in rows]), Item.status.in_(("embedded", "scoring")))
                    .values(status="done", updated_at=utcnow()))


def refresh_job(*, session: Session, job_id: uuid.UUID) -> Job:
    """Recount the job's items under a row lock and complete it when every item is finished.

    The lock serialises concurrent aggregators of one job, so the last one always sees every
    committed item and the job cannot stay open forever.
    """
    job = lock_job(session=session, job_id=job_id)
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
