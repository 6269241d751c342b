"""The sweeper: Postgres says what is unfinished; work whose holder died or whose message is gone is sent again.

Two kinds of outstanding work, judged differently:

* **Claimed** (an item being encoded, an LLM request being answered): its worker holds a short
  lease (FUSIONQ_ITEM_LEASE_SECONDS) and renews it while it works. A lapsed lease means the worker
  died, hangs or was paused: the work is sent again, and after ``max_attempts`` claims it is
  dead-lettered with its error. The paused worker's late writes are fenced by its claim token.
* **Queued** (unclaimed since its message was sent): it may wait as long as the queue is long. It
  is sent again only on evidence that its message is lost: no message in the broker carries it
  (neither waiting in a queue nor delivered to a worker within the grace), read before and after
  the database, and it has waited longer than the grace. Without a view of the broker, queued
  work is left alone.

Every stage is idempotent and every write fenced, so a re-send that races a live worker changes nothing.

The sweep also takes the completion notices of finished jobs (a task to call, a webhook), each
marked sent in the same transaction: a notice goes out once, within a sweep interval of the end.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from shared.db.items import mark_failed
from shared.db.jobs import count_finished, jobs_ready_to_complete, refresh_job, take_completion_notices
from shared.db.leases import (
    fail_requests,
    lapsed_item_claims,
    lapsed_request_claims,
    queued_item_ids,
    queued_requests,
    requeue_items,
    requeue_lost_items,
    requeue_lost_requests,
    requeue_requests,
)
from shared.db.models import utcnow
from shared.dispatch import LLM_TASKS, TaskName, chunks
from shared.settings import Settings
from shared.vocab import WAITING_FOR_AGGREGATOR, ItemStatus, JobStatus

FUSE_ITEMS_PER_TASK = 256

# Task name -> ids of the items that messages of that task carry, waiting in the broker or
# delivered within the grace; None when the broker cannot be read.
InFlight = dict[str, set[int]]
InFlightView = Callable[[], "InFlight | None"]


@dataclass
class SweepResult:
    """Messages to send (task kind -> [(job id, item ids)]), what was dead-lettered, and why work was re-sent."""

    embed: list[tuple[str, list[int]]] = field(default_factory=list)
    fuse: list[tuple[str, list[int]]] = field(default_factory=list)
    llm: dict[str, list[tuple[str, list[int]]]] = field(default_factory=dict)
    dead_items: int = 0
    dead_requests: int = 0
    jobs_completed: int = 0
    lapsed_claims: int = 0  # items and requests whose worker stopped renewing
    lost_messages: int = 0  # queued items and requests no broker message carried
    broker_seen: bool = False  # whether the broker could be read (else queued work was not judged)
    notices: list[tuple[dict, dict]] = field(default_factory=list)  # (what to notify, job summary) of finished jobs

    @property
    def resent_items(self) -> int:
        batches = self.embed + self.fuse + [b for per in self.llm.values() for b in per]
        return sum(len(ids) for _, ids in batches)

    def summary(self) -> dict:
        return {"resent_items": self.resent_items, "lapsed_claims": self.lapsed_claims,
                "lost_messages": self.lost_messages, "dead_items": self.dead_items,
                "dead_requests": self.dead_requests, "jobs_completed": self.jobs_completed,
                "notices": len(self.notices)}


def sweep(session: Session, settings: Settings, *, in_flight: InFlightView | None = None,
          now: dt.datetime | None = None, limit: int = 50_000) -> SweepResult:
    """Find lapsed claims and lost messages in the caller's transaction; queue them again or dead-letter them.

    ``in_flight`` reads the broker; it is called before and after the database is read, so a
    message moving from a queue to a worker in between is still seen."""
    now = now or utcnow()
    result = SweepResult()
    before = in_flight() if in_flight else None
    _sweep_lapsed_item_claims(session, settings, now, limit, result)
    _sweep_lapsed_request_claims(session, settings, now, limit, result)
    if before is not None:
        queued_before = now - dt.timedelta(seconds=settings.item_lease_seconds)
        # every queued row, however long the backlog (ids only, unlocked): a lost message at its
        # tail must not wait for the head to drain
        pending = queued_item_ids(session=session, statuses=(ItemStatus.PENDING,), queued_before=queued_before)
        requests = queued_requests(session=session, queued_before=queued_before)
        unfused = queued_item_ids(session=session, statuses=WAITING_FOR_AGGREGATOR, queued_before=queued_before,
                                  without_queued_request=True)
        after = in_flight()
        if after is not None:
            seen = {task: before.get(task, set()) | after.get(task, set()) for task in {*before, *after}}
            result.broker_seen = True
            _resend_lost(session, settings, now, queued_before, seen, pending, requests, unfused, result)
    _complete_finished_jobs(session, result)
    result.notices = take_completion_notices(session=session)
    return result


def _sweep_lapsed_item_claims(session, settings, now, limit, result: SweepResult) -> None:
    """Items whose encoder stopped renewing its claim."""
    rows = lapsed_item_claims(session=session, now=now, limit=limit)
    result.lapsed_claims += len(rows)
    dead = {r.id: _dead_letter_error(r.attempts, "embed") for r in rows if r.attempts >= settings.max_attempts}
    if dead:
        _dead_letter(session, dead, result)
        result.dead_items += len(dead)
    again = [r for r in rows if r.id not in dead]
    requeue_items(session=session, item_ids=[r.id for r in again], now=now)
    result.embed += _batches(again, settings.embed_items_per_task)


def _sweep_lapsed_request_claims(session, settings, now, limit, result: SweepResult) -> None:
    """LLM requests whose worker stopped renewing its claim."""
    rows = lapsed_request_claims(session=session, now=now, limit=limit)
    result.lapsed_claims += len(rows)
    dead = [r for r in rows if r.attempts >= settings.max_attempts]
    # the signal is missing now: the aggregator finishes the item without it
    fail_requests(session=session, errors={r.id: _dead_letter_error(r.attempts, f"llm_{r.source}") for r in dead},
                  now=now)
    result.dead_requests += len(dead)
    requeue_items(session=session, item_ids=[r.item_id for r in dead], now=now)  # queued for the aggregator now
    result.fuse += _batches([_Row(r.item_id, r.job_id) for r in dead], FUSE_ITEMS_PER_TASK)
    again = [r for r in rows if r.attempts < settings.max_attempts]
    requeue_requests(session=session, request_ids=[r.id for r in again], now=now)
    _add_llm_batches(result, again, settings)


def _resend_lost(session, settings, now, queued_before, seen: InFlight, pending, requests, unfused,
                 result: SweepResult) -> None:
    """Queued work that no broker message carries: its message was lost (a flushed or restarted
    broker, a worker killed between taking a message and claiming its items)."""
    lost_pending = requeue_lost_items(
        session=session, item_ids=[i for i in pending if i not in seen.get(str(TaskName.EMBED), ())],
        statuses=(ItemStatus.PENDING,), queued_before=queued_before, now=now)
    result.embed += _batches(lost_pending, settings.embed_items_per_task)

    lost_requests = requeue_lost_requests(
        session=session, request_ids=[r.id for r in requests if r.item_id not in seen.get(str(LLM_TASKS[r.source]), ())],
        queued_before=queued_before, now=now)
    _add_llm_batches(result, lost_requests, settings)

    lost_unfused = requeue_lost_items(
        session=session, item_ids=[i for i in unfused if i not in seen.get(str(TaskName.FUSE), ())],
        statuses=WAITING_FOR_AGGREGATOR, queued_before=queued_before, now=now, without_queued_request=True)
    # an aggregator that dies on the same items every time must not loop forever
    dead = {r.id: _dead_letter_error(r.resends - 1, "fusion") for r in lost_unfused if r.resends > settings.max_attempts}
    if dead:
        _dead_letter(session, dead, result)
        result.dead_items += len(dead)
    result.fuse += _batches([r for r in lost_unfused if r.id not in dead], FUSE_ITEMS_PER_TASK)
    result.lost_messages += len(lost_pending) + len(lost_requests) + len(lost_unfused)


def _add_llm_batches(result: SweepResult, rows, settings: Settings) -> None:
    for source in sorted({r.source for r in rows}):
        result.llm.setdefault(source, []).extend(
            _batches([_Row(r.item_id, r.job_id) for r in rows if r.source == source], settings.llm_batch_items))


def _dead_letter(session, errors: dict[int, str], result: SweepResult) -> None:
    """Fail the items for good and count them on their jobs (completing those that had nothing else left)."""
    for job_id, failed in mark_failed(session=session, errors=errors).items():
        if count_finished(session=session, job_id=job_id, failed=failed) == JobStatus.COMPLETED:
            result.jobs_completed += 1


def _complete_finished_jobs(session, result: SweepResult) -> None:
    """Jobs whose last aggregator never ran (or whose items were dead-lettered just now)."""
    for job_id in jobs_ready_to_complete(session=session):
        if refresh_job(session=session, job_id=job_id).status == JobStatus.COMPLETED:
            result.jobs_completed += 1


@dataclass(frozen=True)
class _Row:
    id: int
    job_id: uuid.UUID


def _batches(rows, size: int) -> list[tuple[str, list[int]]]:
    per_job: dict[str, list[int]] = {}
    for r in rows:
        per_job.setdefault(str(r.job_id), []).append(r.id)
    return [(job_id, batch) for job_id, ids in per_job.items() for batch in chunks(ids, size)]


def _dead_letter_error(attempts: int, stage: str) -> str:
    return (f"dead-lettered after {attempts} deliveries at the {stage} stage: each time the lease ran out before the "
            "work finished (worker killed or stuck, message lost, or the stage kept failing; see the worker logs)")
