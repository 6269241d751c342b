"""The sweeper (shared.service.sweeper) against a real Postgres database.

Claimed work: pending items and queued LLM requests whose claim's lease lapsed go back to their
queue (dead-lettered after ``max_attempts`` claims; a dead request's item then goes to the
aggregator to finish without that signal). Queued work: sent again only when the broker's view
(read before and after the database) shows no message carrying it and it has waited longer than
the grace; items waiting for the aggregator count their re-sends and are dead-lettered after
``max_attempts``. Without a view of the broker, queued work is left alone however long it waits.
Open jobs with no open item are completed; rows another transaction holds are skipped.

The last tests run the maintenance task on the embedded (memory://) broker: what it sends is read
as the messages the workers receive, and a message waiting there keeps its items from being re-sent.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import sqlalchemy as sa

from shared.db.engine import session_for, upgrade
from shared.db.items import claim_pending
from shared.db.jobs import create_job
from shared.db.llm import claim_requests
from shared.db.models import Classifier, Item, Job, LlmRequest
from shared.dispatch import TaskName
from shared.service.submit import new_items
from shared.service.sweeper import sweep
from shared.settings import Settings

LEASE = 60
MAX_ATTEMPTS = 3


@pytest.fixture
def settings(postgres_url, tmp_path) -> Settings:
    upgrade(postgres_url)
    with session_for(postgres_url) as session, session.begin():
        session.add(Classifier(name="c", version=1, labels=["a", "b"], multi_label=False, encoder_spec={"encoders": []},
                               artifact_uri="/nowhere", artifact_sha256="0" * 64, metrics={}))
    # small batches, so that batching shows with a handful of items
    return Settings(home=tmp_path / "home", database_url=postgres_url, item_lease_seconds=LEASE,
                    max_attempts=MAX_ATTEMPTS, embed_items_per_task=2, llm_batch_items=2)


def _job(settings: Settings, n: int, *, mode: str = "fast") -> tuple[str, list[int]]:
    """A job of ``n`` texts as submit stores it; (job id, item ids in position order)."""
    url = settings.effective_database_url
    with session_for(url) as session, session.begin():
        if mode == "llm":  # the LLM alone: no classifier, the job carries its labels
            options = dict(classifier=None, labels={"names": ["a", "b"], "descriptions": ["", ""]},
                           multi_label=False, llm_source="local")
        else:
            options = dict(classifier=session.scalars(sa.select(Classifier)).one(),
                           tiers=[{"source": "local", "threshold": None}] if mode == "full" else None)
        job, _, _ = create_job(session=session, items=new_items([f"text {i}" for i in range(n)], max_chars=1000),
                               mode=mode, idempotency_key=None, **options)
    with session_for(url) as session:
        ids = session.scalars(sa.select(Item.id).where(Item.job_id == job.id).order_by(Item.position)).all()
    return str(job.id), list(ids)


def _sweep(settings: Settings, now: dt.datetime, *views):
    """A sweep at ``now``; ``views`` are what successive reads of the broker return (none: no broker view)."""
    reads = iter(views)
    with session_for(settings.effective_database_url) as session, session.begin():
        return sweep(session, settings, now=now, in_flight=(lambda: next(reads)) if views else None)


def _claim(settings: Settings, ids: list[int], *, source: str | None = None, token: int = 7) -> None:
    """A worker claims ``ids`` now (leased for LEASE seconds from the real clock)."""
    with session_for(settings.effective_database_url) as session, session.begin():
        if source is None:
            claim_pending(session=session, item_ids=ids, lease_seconds=LEASE, token=token)
        else:
            claim_requests(session=session, item_ids=ids, source=source, lease_seconds=LEASE, token=token)


def _set(settings: Settings, table, ids: list[int], **values) -> None:
    with session_for(settings.effective_database_url) as session, session.begin():
        session.execute(sa.update(table).where(table.id.in_(ids)).values(**values))


def _items(settings: Settings) -> dict[int, Item]:
    with session_for(settings.effective_database_url) as session:
        return {i.id: i for i in session.scalars(sa.select(Item))}


def _requests(settings: Settings) -> dict[int, LlmRequest]:
    """Requests by item id (one source per job here)."""
    with session_for(settings.effective_database_url) as session:
        return {r.item_id: r for r in session.scalars(sa.select(LlmRequest))}


def _job_row(settings: Settings, job_id: str) -> Job:
    with session_for(settings.effective_database_url) as session:
        return session.get(Job, uuid.UUID(job_id))


def _after_leases() -> dt.datetime:
    """A moment after every claim made now lapsed, and after the grace of work queued now."""
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=LEASE + 5)


def _nothing_sent(result) -> bool:
    return (result.embed, result.fuse, result.llm, result.resent_items, result.dead_items,
            result.dead_requests) == ([], [], {}, 0, 0, 0)


NO_MESSAGES: dict = {}  # a broker view in which no message carries anything


def test_lapsed_claims_are_queued_again_and_resent_in_batches_live_claims_are_left_alone(settings):
    job_a, a = _job(settings, 5)
    job_b, b = _job(settings, 1)
    _claim(settings, a + b)
    later = _after_leases()
    live_until = later + dt.timedelta(hours=1)
    _set(settings, Item, [a[1]], lease_until=live_until)  # its encoder renewed this claim: still working

    result = _sweep(settings, later)  # no broker view needed for lapsed claims

    # Per job, by id, in messages of embed_items_per_task (2); the live claim is not among them
    assert result.embed == [(job_a, [a[0], a[2]]), (job_a, [a[3], a[4]]), (job_b, [b[0]])]
    assert (result.fuse, result.llm, result.resent_items, result.dead_items) == ([], {}, 5, 0)
    assert (result.lapsed_claims, result.lost_messages) == (5, 0)
    items = _items(settings)
    for item_id in [a[0], a[2], a[3], a[4], b[0]]:  # queued again from the sweep's now, unclaimed
        assert (items[item_id].lease_until, items[item_id].updated_at) == (None, later)
        assert (items[item_id].status, items[item_id].attempts, items[item_id].resends) == ("pending", 1, 0)
    assert items[a[1]].lease_until == live_until and items[a[1]].status == "pending"


def test_queued_work_is_never_judged_without_a_view_of_the_broker(settings):
    _job(settings, 3)
    _job(settings, 2, mode="llm")
    result = _sweep(settings, _after_leases() + dt.timedelta(days=1))
    assert _nothing_sent(result) and not result.broker_seen


def test_queued_work_a_message_carries_waits_as_long_as_the_queue_is_long(settings):
    job_id, ids = _job(settings, 3)
    _, llm_ids = _job(settings, 2, mode="llm")
    carried = {str(TaskName.EMBED): set(ids), str(TaskName.LLM_LOCAL): set(llm_ids)}
    result = _sweep(settings, _after_leases() + dt.timedelta(days=1), carried, carried)
    assert _nothing_sent(result) and result.broker_seen


def test_queued_work_no_message_carries_is_resent_after_the_grace_and_once(settings):
    job_id, ids = _job(settings, 3)
    llm_job, llm_ids = _job(settings, 1, mode="llm")
    now = dt.datetime.now(dt.timezone.utc)
    # just queued: the message may be on its way (sent right after the commit)
    assert _nothing_sent(_sweep(settings, now + dt.timedelta(seconds=LEASE - 5), NO_MESSAGES, NO_MESSAGES))

    later = _after_leases()
    result = _sweep(settings, later, NO_MESSAGES, NO_MESSAGES)
    assert result.embed == [(job_id, ids[:2]), (job_id, ids[2:])]
    assert result.llm == {"local": [(llm_job, llm_ids)]}
    assert (result.lost_messages, result.lapsed_claims, result.dead_items) == (4, 0, 0)
    items = _items(settings)
    assert [(items[i].resends, items[i].attempts, items[i].updated_at) for i in ids] == [(1, 0, later)] * 3
    assert _requests(settings)[llm_ids[0]].updated_at == later
    # queued again from ``later``: a second sweep (a second beat, say) at the same moment sends nothing
    assert _nothing_sent(_sweep(settings, later, NO_MESSAGES, NO_MESSAGES))


def test_the_broker_is_read_before_and_after_the_database(settings):
    """A message that moved from a queue to a worker between two reads is seen by one of them."""
    job_id, ids = _job(settings, 3)
    first = {str(TaskName.EMBED): {ids[0]}}
    second = {str(TaskName.EMBED): {ids[1]}}
    result = _sweep(settings, _after_leases(), first, second)
    assert result.embed == [(job_id, [ids[2]])]


def test_an_llm_claim_that_lapsed_goes_back_to_its_queue(settings):
    job_id, ids = _job(settings, 3, mode="llm")
    assert {i.status for i in _items(settings).values()} == {"scoring"}
    _claim(settings, ids, source="local")
    later = _after_leases()

    result = _sweep(settings, later)
    # Re-sent to the llm_local queue in llm_batch_items (2); the items wait for those answers, so the
    # aggregator is not sent them
    assert result.llm == {"local": [(job_id, ids[:2]), (job_id, ids[2:])]}
    assert (result.embed, result.fuse, result.dead_requests, result.lapsed_claims) == ([], [], 0, 3)
    requests = _requests(settings)
    assert all((requests[i].lease_until, requests[i].status, requests[i].attempts) == (None, "queued", 1) for i in ids)


def test_answered_items_whose_aggregator_message_was_lost_go_to_the_aggregator(settings):
    job_id, ids = _job(settings, 2, mode="llm")
    requests = _requests(settings)
    _set(settings, LlmRequest, [requests[ids[0]].id], status="done", scores=[0.9, 0.1], method="logprobs")

    result = _sweep(settings, _after_leases(), {str(TaskName.LLM_LOCAL): {ids[1]}}, NO_MESSAGES)

    assert result.fuse == [(job_id, [ids[0]])] and result.llm == {}
    items = _items(settings)
    assert (items[ids[0]].resends, items[ids[0]].status) == (1, "scoring")  # the aggregator, not the sweeper, finishes it
    assert items[ids[1]].resends == 0


def test_claims_out_of_attempts_are_dead_lettered_the_rest_resent(settings):
    job_id, ids = _job(settings, 3)
    _claim(settings, ids)
    _set(settings, Item, [ids[0], ids[2]], attempts=MAX_ATTEMPTS)

    result = _sweep(settings, _after_leases())

    assert result.embed == [(job_id, [ids[1]])] and result.dead_items == 2
    items = _items(settings)
    for item_id in (ids[0], ids[2]):
        assert items[item_id].status == "failed"
        assert items[item_id].error.startswith(
            f"dead-lettered after {MAX_ATTEMPTS} deliveries at the embed stage: each time the lease ran out")
    assert (items[ids[1]].status, items[ids[1]].error) == ("pending", None)
    assert _job_row(settings, job_id).status != "completed"  # one item is still open


def test_llm_requests_out_of_attempts_fail_and_their_items_go_to_the_aggregator_once(settings):
    job_id, ids = _job(settings, 2, mode="llm")
    _claim(settings, ids, source="local")
    requests = _requests(settings)
    _set(settings, LlmRequest, [requests[ids[0]].id], attempts=MAX_ATTEMPTS)
    later = _after_leases()

    result = _sweep(settings, later, NO_MESSAGES, NO_MESSAGES)

    assert result.dead_requests == 1 and result.dead_items == 0
    assert result.fuse == [(job_id, [ids[0]])]  # one message, not one from each of two rules
    assert result.llm == {"local": [(job_id, [ids[1]])]}
    requests = _requests(settings)
    assert requests[ids[0]].status == "failed"
    assert requests[ids[0]].error.startswith(f"dead-lettered after {MAX_ATTEMPTS} deliveries at the llm_local stage")
    assert (requests[ids[1]].status, requests[ids[1]].error) == ("queued", None)
    items = _items(settings)
    assert {i.status for i in items.values()} == {"scoring"} and items[ids[0]].updated_at == later
    assert items[ids[0]].resends == 0  # its aggregator message was not lost, it was sent for the first time


def test_items_the_aggregator_never_finished_are_resent_until_resends_run_out(settings):
    job_id, ids = _job(settings, 3)
    _set(settings, Item, ids, status="embedded")  # features stored; the aggregator's message was lost
    _set(settings, Item, [ids[2]], resends=MAX_ATTEMPTS)
    later = _after_leases()

    result = _sweep(settings, later, NO_MESSAGES, NO_MESSAGES)

    assert result.fuse == [(job_id, ids[:2])] and result.embed == [] and result.dead_items == 1
    items = _items(settings)
    assert [items[i].resends for i in ids[:2]] == [1, 1]
    assert items[ids[2]].status == "failed"
    assert items[ids[2]].error.startswith(f"dead-lettered after {MAX_ATTEMPTS} deliveries at the fusion stage")

    # each loss is counted, until the last one dead-letters the item
    now = later
    for resends in range(2, MAX_ATTEMPTS + 1):
        now += dt.timedelta(seconds=LEASE + 1)
        assert _sweep(settings, now, NO_MESSAGES, NO_MESSAGES).fuse == [(job_id, ids[:2])]
        assert [r.resends for i, r in _items(settings).items() if i in ids[:2]] == [resends, resends]
    final = _sweep(settings, now + dt.timedelta(seconds=LEASE + 1), NO_MESSAGES, NO_MESSAGES)
    assert (final.fuse, final.dead_items, final.jobs_completed) == ([], 2, 1)
    job = _job_row(settings, job_id)
    assert (job.status, job.n_done, job.n_failed) == ("completed", 0, 3)


def test_a_job_whose_items_are_all_finished_is_completed_once(settings):
    finished, ids = _job(settings, 3)
    still_open, open_ids = _job(settings, 1)
    _set(settings, Item, ids[:2], status="done", lease_until=None)
    _set(settings, Item, ids[2:], status="failed", error="boom", lease_until=None)
    with session_for(settings.effective_database_url) as session, session.begin():
        session.execute(sa.update(Job).where(Job.id == uuid.UUID(finished)).values(status="running"))

    now = dt.datetime.now(dt.timezone.utc)  # nothing lapsed, nothing lost: only the completion step acts
    result = _sweep(settings, now, NO_MESSAGES, NO_MESSAGES)

    assert result.jobs_completed == 1 and _nothing_sent(result)
    job = _job_row(settings, finished)
    assert (job.status, job.n_done, job.n_failed) == ("completed", 2, 1) and job.finished_at is not None
    assert _job_row(settings, still_open).status == "queued" and _items(settings)[open_ids[0]].status == "pending"

    again = _sweep(settings, now)
    assert again.jobs_completed == 0 and _nothing_sent(again)
    assert _job_row(settings, finished).finished_at == job.finished_at


def test_a_job_whose_last_items_are_dead_lettered_is_completed(settings):
    job_id, ids = _job(settings, 2)
    _claim(settings, ids)
    _set(settings, Item, ids, attempts=MAX_ATTEMPTS)

    result = _sweep(settings, _after_leases())

    assert (result.dead_items, result.jobs_completed, result.embed) == (2, 1, [])
    job = _job_row(settings, job_id)
    assert (job.status, job.n_done, job.n_failed) == ("completed", 0, 2) and job.finished_at is not None
    assert _sweep(settings, _after_leases()).jobs_completed == 0


def test_an_item_another_transaction_holds_is_skipped_not_waited_for(settings):
    job_id, ids = _job(settings, 3)
    _claim(settings, ids)
    later = _after_leases()
    with session_for(settings.effective_database_url) as holder, holder.begin():
        # a worker (or a second sweeper) holds the middle item's row right now
        holder.execute(sa.select(Item.id).where(Item.id == ids[1]).with_for_update())
        with session_for(settings.effective_database_url) as session, session.begin():
            session.execute(sa.text("SET LOCAL lock_timeout = '5s'"))  # waiting on the row would fail, not hang
            result = sweep(session, settings, now=later)
        assert result.embed == [(job_id, [ids[0], ids[2]])]
    # released: the next sweep takes it
    assert _sweep(settings, later).embed == [(job_id, [ids[1]])]


def _memory_queues():
    from kombu import Connection

    return Connection("memory://"), ("embed", "fusion", "llm_local", "llm_api")


def _drain(conn, queues) -> dict:
    sent = {}
    for name in queues:
        queue = conn.SimpleQueue(name)
        messages = []
        while queue.qsize():
            message = queue.get(timeout=1)
            messages.append((message.headers["task"], message.payload[0]))
            message.ack()
        sent[name] = messages
    return sent


def test_the_maintenance_task_sends_what_the_sweep_found(settings):
    """The sweep task on the embedded broker: one message per batch, on the stage's queue, by task name."""
    from workers.celery_app import create_app

    embed_job, embed_ids = _job(settings, 3)
    llm_job, llm_ids = _job(settings, 1, mode="llm")
    _claim(settings, embed_ids)
    _claim(settings, llm_ids, source="local")
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    _set(settings, Item, embed_ids, lease_until=past)
    _set(settings, LlmRequest, [r.id for r in _requests(settings).values()], lease_until=past)
    app = create_app(settings)
    conn, queues = _memory_queues()
    with conn:
        _drain(conn, queues)  # nothing left over from another test in this process
        summary = app.tasks[str(TaskName.SWEEP)].apply().get()
        sent = _drain(conn, queues)
    app.close()
    assert summary == {"resent_items": 4, "lapsed_claims": 4, "lost_messages": 0, "dead_items": 0,
                       "dead_requests": 0, "jobs_completed": 0, "notices": 0}
    assert sent == {
        "embed": [(str(TaskName.EMBED), [embed_job, embed_ids[:2]]), (str(TaskName.EMBED), [embed_job, embed_ids[2:]])],
        "fusion": [],
        "llm_local": [(str(TaskName.LLM_LOCAL), [llm_job, llm_ids])],
        "llm_api": [],
    }


def test_a_message_waiting_in_the_embedded_broker_keeps_its_items_from_being_resent(settings):
    """The maintenance task reads the in-memory broker: only the item no message carries is re-sent."""
    from workers.celery_app import create_app

    job_id, ids = _job(settings, 3)
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=LEASE + 5)
    _set(settings, Item, ids, updated_at=long_ago)  # queued long ago: only evidence can save them
    app = create_app(settings)
    conn, queues = _memory_queues()
    with conn:
        _drain(conn, queues)
        app.send_task(str(TaskName.EMBED), args=[job_id, ids[:2]])  # still waiting for a worker
        summary = app.tasks[str(TaskName.SWEEP)].apply().get()
        sent = _drain(conn, queues)
    app.close()
    assert (summary["lost_messages"], summary["resent_items"]) == (1, 1)
    assert sent["embed"] == [(str(TaskName.EMBED), [job_id, ids[:2]]), (str(TaskName.EMBED), [job_id, [ids[2]]])]


def test_a_finished_job_sends_its_completion_notice_once_and_a_job_without_one_sends_none(settings):
    plain, plain_ids = _job(settings, 1)
    noticed, noticed_ids = _job(settings, 1)
    notify = {"task": "caller.done", "queue": "caller", "webhook": "https://caller.example/hook"}
    with session_for(settings.effective_database_url) as session, session.begin():
        session.execute(sa.update(Job).where(Job.id == uuid.UUID(noticed)).values(notify=notify))
    _set(settings, Item, plain_ids + noticed_ids, status="failed", error="boom")
    now = dt.datetime.now(dt.timezone.utc)

    result = _sweep(settings, now)

    assert result.jobs_completed == 2
    assert [(n, summary["job_id"], summary["status"], summary["n_failed"]) for n, summary in result.notices] == [
        (notify, noticed, "completed", 1)]
    assert _sweep(settings, now).notices == []  # sent once
    with session_for(settings.effective_database_url) as session:
        assert session.scalar(sa.select(Job.notify).where(Job.id == uuid.UUID(plain))) is None
        sent = session.scalar(sa.select(Job.notified_at).where(Job.id == uuid.UUID(noticed)))
    assert sent is not None
