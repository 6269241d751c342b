"""The ``jobs`` table: create a job with its items and LLM requests, find, lock, recount it.

Functions take the session keyword-only; the caller (a service function) owns the transaction.
Texts arrive already checked (``shared.service.submit``): the store validates nothing.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.common import json_rows, on_postgres
from shared.db.llm import request_row
from shared.db.notify import job_channel_of, notify_expression, notify_job_finished
from shared.db.models import Classifier, Item, Job, LlmRequest, Prediction, utcnow
from shared.dispatch import LLM_TASKS, TaskName
from shared.errors import IdempotencyConflict, JobNotFound
from shared.vocab import OPEN_ITEM_STATUSES, ItemStatus, JobStatus, Mode, RequestReason


@dataclass(frozen=True)
class NewItem:
    """One text of a new job as it will be stored: ``error`` set for a text refused at submit."""

    text: str
    mode: str | None = None  # the item's own mode; None keeps the job's
    error: str | None = None


class CreatedJob(NamedTuple):
    """What :func:`create_job` did: the job, whether this call created it, and the ids of the items
    each stage must now be sent, by task name: the encoder's shortest text first (so a run cut from
    them pads little), each LLM's in id order. Taken from what was just written, never read back."""

    job: Job
    created: bool
    waiting: dict[str, list[int]]


def create_job(
    *,
    session: Session,
    classifier: Classifier | None,
    items: Sequence[NewItem],
    mode: str,
    idempotency_key: str | None,
    labels: dict | None = None,
    multi_label: bool | None = None,
    llm_source: str | None = None,
    tiers: Sequence[dict] | None = None,
    budget_items: int | None = None,
    budget_usd: float | None = None,
    notify: dict | None = None,
) -> CreatedJob:
    """Insert a job, its items and the LLM requests its modes need, in the caller's transaction.

    Items with an ``error`` are stored already ``failed``, so one bad text never stops the others.
    Items in mode ``full`` get a request per tier and those in mode ``llm`` one for
    ``llm_source``, all queued now (the LLM runs beside the encoder). With an ``idempotency_key``
    seen before, the earlier job is returned (created False, nothing to encode: its messages went
    out with it).
    """
    if idempotency_key:
        existing = job_for_idempotency_key(session, idempotency_key, classifier, len(items))
        if existing is not None:
            return CreatedJob(existing, False, {})
    now = utcnow()
    job = Job(id=uuid.uuid4(), classifier_id=classifier.id if classifier else None, mode=mode, status=JobStatus.QUEUED,
              labels=labels, multi_label=multi_label, llm_source=llm_source, tiers=list(tiers or []) or None,
              budget_items=budget_items, budget_usd=budget_usd, n_escalated=0, notify=notify,
              idempotency_key=idempotency_key, n_items=len(items), n_done=0, n_failed=0,
              created_at=now, updated_at=now)
    rows = []
    for position, item in enumerate(items):
        effective = item.mode or mode
        status = ItemStatus.FAILED if item.error else (ItemStatus.SCORING if effective == Mode.LLM else ItemStatus.PENDING)
        rows.append({"job_id": job.id, "position": position, "text": item.text,
                     "mode": item.mode, "status": status, "attempts": 0, "resends": 0,
                     "updated_at": now, "error": item.error})
    job.n_failed = sum(1 for r in rows if r["status"] == ItemStatus.FAILED)
    if job.n_failed == len(rows):
        job.status, job.finished_at = JobStatus.COMPLETED, now
    # A concurrent submit with the same key makes this flush raise IntegrityError; the caller
    # rolls back and asks again, finding the winner's job.
    session.add(job)
    session.flush()
    if not rows:
        return CreatedJob(job, True, {})
    ids = _insert_items(session, rows)
    requests = []
    for row in rows:
        effective = row["mode"] or mode
        if row["status"] == ItemStatus.FAILED or effective not in (Mode.FULL, Mode.LLM):
            continue
        sources = [t["source"] for t in job.tiers or []] if effective == Mode.FULL else [llm_source]
        for tier, source in enumerate(sources):
            requests.append(request_row(job_id=job.id, item_id=ids[row["position"]], tier=tier, source=source,
                                        reason=RequestReason(effective), now=now))
    if requests:
        session.execute(sa.insert(LlmRequest), requests)
    length = {ids[r["position"]]: len(r["text"]) for r in rows if r["status"] == ItemStatus.PENDING}
    waiting = {TaskName.EMBED: sorted(length, key=lambda item_id: (length[item_id], item_id))} if length else {}
    for source in sorted({r["source"] for r in requests}):
        waiting[LLM_TASKS[source]] = sorted(r["item_id"] for r in requests if r["source"] == source)
    return CreatedJob(job, True, waiting)


# Postgres: the items arrive as one JSON document (json_rows), so the statement and its parsing stay
# the same size whatever the job's size, and the client adapts one parameter: a multi-row VALUES
# insert spent half of a 2,000-text submit converting its 22,000 parameters, and one array per
# column still ~20 ms (psycopg adapts list elements in Python).
_INSERT_ITEMS_FROM_JSON = sa.text("""
    INSERT INTO items (job_id, position, text, mode, status, attempts, resends, updated_at, error)
    SELECT :job_id, r.position, r.text, r.mode, r.status, 0, 0, :now, r.error
    FROM json_to_recordset(CAST(:the_rows AS json))
         AS r(position integer, text text, mode text, status text, error text)
    RETURNING position, id""")
_ROW_COLUMNS = ("position", "text", "mode", "status", "error")


def _insert_items(session: Session, rows: list[dict]) -> dict[int, int]:
    """Insert a new job's items (rows share job_id, attempts, resends and updated_at); {position: id}."""
    if not on_postgres(session):
        return dict(session.execute(sa.insert(Item).returning(Item.position, Item.id), rows).tuples().all())
    document = json_rows([{column: row[column] for column in _ROW_COLUMNS} for row in rows])
    params = {"the_rows": document, "job_id": rows[0]["job_id"], "now": rows[0]["updated_at"]}
    return dict(session.connection().execute(_INSERT_ITEMS_FROM_JSON, params).tuples().all())


def job_for_idempotency_key(session: Session, key: str, classifier: Classifier | None, n_items: int) -> Job | None:
    """The job an idempotency key already names, or None; a key reused for another request is refused."""
    job = session.scalars(sa.select(Job).where(Job.idempotency_key == key)).first()
    classifier_id = classifier.id if classifier else None
    if job is not None and (job.classifier_id != classifier_id or job.n_items != n_items):
        raise IdempotencyConflict(
            f"idempotency key {key!r} already names job {job.id} ({job.n_items} texts, classifier id "
            f"{job.classifier_id}); this request has {n_items} texts for classifier id {classifier_id}. Use a new key."
        )
    return job


def get_job(*, session: Session, job_id: uuid.UUID | str) -> Job:
    job = session.get(Job, as_job_id(job_id))
    if job is None:
        raise job_not_found(job_id)
    return job


def job_not_found(job_id) -> JobNotFound:
    """The one error every lookup of a missing job raises, with what to check."""
    return JobNotFound(f"no job {job_id}: check the id, or the database URL (FUSIONQ_DATABASE_URL)")


def as_job_id(job_id: uuid.UUID | str) -> uuid.UUID:
    """A job id from its string form; a string that is no UUID is a job nobody can have."""
    if isinstance(job_id, uuid.UUID):
        return job_id
    try:
        return uuid.UUID(str(job_id))
    except ValueError:
        raise JobNotFound(f"{job_id!r} is not a job id: job ids are UUIDs, as submit printed them") from None


def job_with_classifier(*, session: Session, job_id: uuid.UUID | str) -> tuple[Job, Classifier | None]:
    """The job and its classifier (None for an LLM-only job)."""
    row = session.execute(
        sa.select(Job, Classifier).outerjoin(Classifier, Classifier.id == Job.classifier_id)
        .where(Job.id == as_job_id(job_id))
    ).first()
    if row is None:
        raise job_not_found(job_id)
    return row[0], row[1]


def lock_job(*, session: Session, job_id: uuid.UUID) -> Job:
    """The job row, locked until the transaction ends: one aggregator of a job at a time."""
    job = session.scalars(sa.select(Job).where(Job.id == job_id).with_for_update()
                          .execution_options(populate_existing=True)).first()  # fresh values, read under the lock
    if job is None:
        raise job_not_found(job_id)
    return job


def count_finished(*, session: Session, job_id: uuid.UUID, done: int = 0, failed: int = 0) -> str | None:
    """Add items that just finished to the job's counters and complete the job when none is left;
    the job's status after that (None when there was nothing to add).

    O(batch), never a recount: callers pass only the items their transaction moved to done or
    failed (the moves are guarded by status, so a re-run moves and adds nothing). One atomic
    UPDATE, which also holds the job's row lock until commit; the transaction that completes the
    job notifies its waiters.
    """
    if not (done or failed):
        return None
    row = session.connection().execute(_count_statement(on_postgres(session)), {
        "the_job": job_id, "added_done": done, "added_failed": failed, "the_time": utcnow()}).one_or_none()
    if row is None:
        raise job_not_found(job_id)
    if row.status == JobStatus.COMPLETED and not on_postgres(session):
        notify_job_finished(session, job_id)  # Postgres' notice rides on the statement itself
    return row.status


@functools.cache
def _count_statement(postgres: bool):
    """:func:`count_finished`' UPDATE, built once per dialect (building it cost more than running it).
    Parameters are named apart from the columns, which would otherwise become SET clauses."""
    jobs = Job.__table__  # Core on the session's connection: the hot path skips the ORM
    added = sa.bindparam("added_done", type_=sa.Integer) + sa.bindparam("added_failed", type_=sa.Integer)
    now = sa.bindparam("the_time", type_=jobs.c.updated_at.type)
    finished = jobs.c.n_done + jobs.c.n_failed + added >= jobs.c.n_items  # SET reads the old values
    returned = [jobs.c.status, jobs.c.n_done, jobs.c.n_failed, jobs.c.n_items]
    if postgres:  # RETURNING sees the new values: this update is the one that completes the job
        completes = sa.and_(jobs.c.status == JobStatus.COMPLETED.value, jobs.c.n_done + jobs.c.n_failed - added < jobs.c.n_items)
        returned.append(sa.case((completes, notify_expression(job_channel_of(jobs.c.id), progress_payload(jobs))),
                                else_=None))  # the notice rides on this statement: no round trip of its own
    return (sa.update(jobs).where(jobs.c.id == sa.bindparam("the_job")).values(
        n_done=jobs.c.n_done + sa.bindparam("added_done", type_=sa.Integer),
        n_failed=jobs.c.n_failed + sa.bindparam("added_failed", type_=sa.Integer), updated_at=now,
        status=sa.case((finished, JobStatus.COMPLETED.value),
                       (jobs.c.status == JobStatus.QUEUED.value, JobStatus.RUNNING.value), else_=jobs.c.status),
        finished_at=sa.case((sa.and_(finished, jobs.c.finished_at.is_(None)), now), else_=jobs.c.finished_at))
        .returning(*returned))


def progress_payload(jobs: sa.Table):
    """The job's progress as JSON text, built by Postgres from the row an UPDATE ... RETURNING sees
    (:func:`shared.db.notify.notify_expression`'s payload; the client reads it as a JobProgress)."""
    classifier = (sa.select(Classifier.name + "@" + sa.cast(Classifier.version, sa.Text))
                  .where(Classifier.id == jobs.c.classifier_id).scalar_subquery())
    return sa.cast(sa.func.json_build_object(
        "job_id", jobs.c.id, "classifier", sa.func.coalesce(classifier, "llm:" + jobs.c.llm_source),
        "mode", jobs.c.mode, "status", jobs.c.status, "n_items", jobs.c.n_items, "n_done", jobs.c.n_done,
        "n_failed", jobs.c.n_failed, "created_at", jobs.c.created_at, "finished_at", jobs.c.finished_at), sa.Text)


def refresh_job(*, session: Session, job_id: uuid.UUID) -> Job:
    """Recount the job's items under its row lock and complete it when every item is finished.

    The sweeper's safety net (a job whose last aggregator never ran); the stages count with
    :func:`count_finished` instead.
    """
    job = lock_job(session=session, job_id=job_id)
    counts = dict(session.execute(
        sa.select(Item.status, sa.func.count()).where(Item.job_id == job_id).group_by(Item.status)
    ).all())
    job.n_done, job.n_failed = counts.get(ItemStatus.DONE, 0), counts.get(ItemStatus.FAILED, 0)
    _advance(session, job)
    return job


def _advance(session: Session, job: Job) -> None:
    now = utcnow()
    job.updated_at = now
    if job.n_done + job.n_failed >= job.n_items:
        if job.status != JobStatus.COMPLETED:
            job.status, job.finished_at = JobStatus.COMPLETED, now
            notify_job_finished(session, job.id)
    elif job.status == JobStatus.QUEUED:
        job.status = JobStatus.RUNNING


def flag_counts(*, session: Session, job_id: uuid.UUID) -> dict[str, int]:
    """How many of the job's predictions carry each flag."""
    counts: dict[str, int] = {}
    for item_flags in session.scalars(sa.select(Prediction.flags).join(Item, Item.id == Prediction.item_id)
                                      .where(Item.job_id == job_id)):
        for flag in item_flags or ():
            counts[flag] = counts.get(flag, 0) + 1
    return counts


def jobs_ready_to_complete(*, session: Session) -> list[uuid.UUID]:
    """Open jobs none of whose items is still open (their last aggregator never ran, or items were dead-lettered)."""
    open_items = sa.exists().where(Item.job_id == Job.id, Item.status.in_(OPEN_ITEM_STATUSES))
    return list(session.scalars(sa.select(Job.id).where(Job.status != JobStatus.COMPLETED, ~open_items)).all())



def take_completion_notices(*, session: Session, limit: int = 1000) -> list[tuple[dict, dict]]:
    """Completed jobs whose caller asked for a notice that was not sent yet: marked sent now (in the
    caller's transaction) and returned as (what to notify, the job's summary). Locked SKIP LOCKED,
    so two sweepers never send one notice twice."""
    rows = session.scalars(sa.select(Job).where(Job.status == JobStatus.COMPLETED, Job.notify.is_not(None),
                                                Job.notified_at.is_(None))
                           .order_by(Job.finished_at).limit(limit).with_for_update(skip_locked=True)).all()
    now = utcnow()
    notices = []
    for job in rows:
        job.notified_at = now
        if not job.notify:  # a JSON null written by an older version: nothing to send
            continue
        notices.append((dict(job.notify), {
            "job_id": str(job.id), "status": job.status, "n_items": job.n_items, "n_done": job.n_done,
            "n_failed": job.n_failed, "finished_at": job.finished_at.isoformat() if job.finished_at else None}))
    return notices
