"""The sweeper (shared.service.sweeper) against a real Postgres database.

What ``sweep`` does, stage by stage: pending items whose lease ran out are re-sent to the encoder
(or dead-lettered after ``max_attempts`` claims); queued LLM requests whose lease ran out are
re-sent to their LLM queue (or failed after ``max_attempts``, their items then sent to the
aggregator to finish without that signal); items whose signals are all in but whose aggregator
never finished are re-sent to it (counting ``resends``, dead-lettered after ``max_attempts``);
open jobs with no open item are completed. Live leases and rows another transaction holds are
left alone, and leases are renewed, so a second sweep sends nothing.

The last test runs the maintenance task on the embedded (memory://) broker and reads what it
sent, so the re-sends are checked as the messages the workers receive.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import sqlalchemy as sa

from shared.db.engine import session_for, upgrade
from shared.db.jobs import create_job
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
        job, _ = create_job(session=session, items=new_items([f"text {i}" for i in range(n)], max_chars=1000),
                            mode=mode, idempotency_key=None, lease_seconds=settings.item_lease_seconds, **options)
    with session_for(url) as session:
        ids = session.scalars(sa.select(Item.id).where(Item.job_id == job.id).order_by(Item.position)).all()
    return str(job.id), list(ids)


def _sweep(settings: Settings, now: dt.datetime):
    with session_for(settings.effective_database_url) as session, session.begin():
        return sweep(session, settings, now=now)


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
    """A moment after every lease that a job created now was given."""
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=LEASE + 5)


def _nothing_sent(result) -> bool:
    return (result.embed, result.fuse, result.llm, result.resent_items, result.dead_items,
            result.dead_requests) == ([], [], {}, 0, 0, 0)


def test_expired_pending_items_are_resent_in_batches_and_live_leases_are_left_alone(settings):
    job_a, a = _job(settings, 5)
    job_b, b = _job(settings, 1)
    later = _after_leases()
    live_until = later + dt.timedelta(hours=1)
    _set(settings, Item, [a[1]], lease_until=live_until)  # an encoder holds this one's lease for an hour yet

    result = _sweep(settings, later)

    # Per job, by id, in messages of embed_items_per_task (2); the live item is not among them
    assert result.embed == [(job_a, [a[0], a[2]]), (job_a, [a[3], a[4]]), (job_b, [b[0]])]
    assert (result.fuse, result.llm, result.resent_items, result.dead_items) == ([], {}, 5, 0)
    items = _items(settings)
    for item_id in [a[0], a[2], a[3], a[4], b[0]]:  # leased again from the sweep's now, still pending
        assert items[item_id].lease_until == later + dt.timedelta(seconds=LEASE)
        assert (items[item_id].status, items[item_id].attempts, items[item_id].resends) == ("pending", 0, 0)
    assert items[a[1]].lease_until == live_until and items[a[1]].status == "pending"


def test_a_second_sweep_sends_nothing_and_the_renewed_leases_expire_again(settings):
    job_id, ids = _job(settings, 3)
    later = _after_leases()
    assert _sweep(settings, later).resent_items == 3
    before = {i: (r.status, r.lease_until, r.attempts, r.resends) for i, r in _items(settings).items()}
    job_before = _job_row(settings, job_id)

    again = _sweep(settings, later)
    assert _nothing_sent(again) and again.jobs_completed == 0
    assert {i: (r.status, r.lease_until, r.attempts, r.resends) for i, r in _items(settings).items()} == before
    job_after = _job_row(settings, job_id)
    assert (job_after.status, job_after.n_done, job_after.n_failed) == (job_before.status, 0, 0)

    # once the renewed lease runs out in turn, the same items are sent once more
    assert _sweep(settings, later + dt.timedelta(seconds=LEASE + 1)).embed == [(job_id, ids[:2]), (job_id, ids[2:])]


def test_expired_llm_requests_go_back_to_their_queue_and_answered_items_to_the_aggregator(settings):
    job_id, ids = _job(settings, 3, mode="llm")
    assert {i.status for i in _items(settings).values()} == {"scoring"}
    later = _after_leases()

    first = _sweep(settings, later)
    # Re-sent to the llm_local queue in llm_batch_items (2); the items wait for those answers, so the
    # aggregator is not sent them
    assert first.llm == {"local": [(job_id, ids[:2]), (job_id, ids[2:])]}
    assert (first.embed, first.fuse, first.dead_requests) == ([], [], 0)
    requests = _requests(settings)
    assert all(requests[i].lease_until == later + dt.timedelta(seconds=LEASE) and requests[i].status == "queued"
               for i in ids)

    # The first item's answer arrives, but its aggregator message is lost
    _set(settings, LlmRequest, [requests[ids[0]].id], status="done", scores=[0.9, 0.1], method="logprobs")
    much_later = later + dt.timedelta(seconds=LEASE + 1)
    second = _sweep(settings, much_later)
    assert second.fuse == [(job_id, [ids[0]])]
    assert second.llm == {"local": [(job_id, ids[1:])]}
    items = _items(settings)
    assert items[ids[0]].resends == 1 and items[ids[0]].lease_until == much_later + dt.timedelta(seconds=LEASE)
    assert items[ids[0]].status == "scoring"  # the aggregator, not the sweeper, finishes it
    assert [items[i].resends for i in ids[1:]] == [0, 0]


def test_pending_items_out_of_attempts_are_dead_lettered_the_rest_resent(settings):
    job_id, ids = _job(settings, 3)
    _set(settings, Item, [ids[0], ids[2]], attempts=MAX_ATTEMPTS)
    _set(settings, Item, [ids[1]], attempts=MAX_ATTEMPTS - 1)

    result = _sweep(settings, _after_leases())

    assert result.embed == [(job_id, [ids[1]])] and result.dead_items == 2
    items = _items(settings)
    for item_id in (ids[0], ids[2]):
        assert items[item_id].status == "failed"
        assert items[item_id].error.startswith(
            f"dead-lettered after {MAX_ATTEMPTS} deliveries at the embed stage: each time the lease ran out")
    assert (items[ids[1]].status, items[ids[1]].error) == ("pending", None)
    assert _job_row(settings, job_id).status != "completed"  # one item is still open


def test_llm_requests_out_of_attempts_fail_and_their_items_go_to_the_aggregator(settings):
    job_id, ids = _job(settings, 2, mode="llm")
    requests = _requests(settings)
    _set(settings, LlmRequest, [requests[ids[0]].id], attempts=MAX_ATTEMPTS)

    result = _sweep(settings, _after_leases())

    assert result.dead_requests == 1 and result.dead_items == 0
    assert {i for _, batch in result.fuse for i in batch} == {ids[0]}  # finished without the signal, by the aggregator
    assert result.llm == {"local": [(job_id, [ids[1]])]}
    requests = _requests(settings)
    assert requests[ids[0]].status == "failed"
    assert requests[ids[0]].error.startswith(f"dead-lettered after {MAX_ATTEMPTS} deliveries at the llm_local stage")
    assert (requests[ids[1]].status, requests[ids[1]].error) == ("queued", None)
    assert {i.status for i in _items(settings).values()} == {"scoring"}


def test_an_item_whose_request_is_dead_lettered_is_sent_to_the_aggregator_once(settings):
    job_id, ids = _job(settings, 1, mode="llm")
    _set(settings, LlmRequest, [r.id for r in _requests(settings).values()], attempts=MAX_ATTEMPTS)

    result = _sweep(settings, _after_leases())

    assert result.fuse == [(job_id, ids)]  # one message, not one from each of two stages
    assert _items(settings)[ids[0]].resends == 0  # no lost aggregator message was re-sent


def test_embedded_items_the_aggregator_never_finished_are_resent_until_resends_run_out(settings):
    job_id, ids = _job(settings, 3)
    _set(settings, Item, ids, status="embedded")  # features stored; the aggregator's message was lost
    _set(settings, Item, [ids[2]], resends=MAX_ATTEMPTS)
    later = _after_leases()

    result = _sweep(settings, later)

    assert result.fuse == [(job_id, ids[:2])] and result.embed == [] and result.dead_items == 1
    items = _items(settings)
    assert [items[i].resends for i in ids[:2]] == [1, 1]
    assert items[ids[2]].status == "failed"
    assert items[ids[2]].error.startswith(f"dead-lettered after {MAX_ATTEMPTS} deliveries at the fusion stage")

    # each re-send is counted, until the last one dead-letters the item
    now = later
    for resends in range(2, MAX_ATTEMPTS + 1):
        now += dt.timedelta(seconds=LEASE + 1)
        assert _sweep(settings, now).fuse == [(job_id, ids[:2])]
        assert [r.resends for i, r in _items(settings).items() if i in ids[:2]] == [resends, resends]
    final = _sweep(settings, now + dt.timedelta(seconds=LEASE + 1))
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

    now = dt.datetime.now(dt.timezone.utc)  # no lease has run out: only the completion step acts
    result = _sweep(settings, now)

    assert result.jobs_completed == 1 and _nothing_sent(result)
    job = _job_row(settings, finished)
    assert (job.status, job.n_done, job.n_failed) == ("completed", 2, 1) and job.finished_at is not None
    assert _job_row(settings, still_open).status == "queued" and _items(settings)[open_ids[0]].status == "pending"

    again = _sweep(settings, now)
    assert again.jobs_completed == 0 and _nothing_sent(again)
    assert _job_row(settings, finished).finished_at == job.finished_at


def test_a_job_whose_last_items_are_dead_lettered_is_completed(settings):
    job_id, ids = _job(settings, 2)
    _set(settings, Item, ids, attempts=MAX_ATTEMPTS)

    result = _sweep(settings, _after_leases())

    assert (result.dead_items, result.jobs_completed, result.embed) == (2, 1, [])
    job = _job_row(settings, job_id)
    assert (job.status, job.n_done, job.n_failed) == ("completed", 0, 2) and job.finished_at is not None
    assert _sweep(settings, _after_leases()).jobs_completed == 0


def test_an_item_another_transaction_holds_is_skipped_not_waited_for(settings):
    job_id, ids = _job(settings, 3)
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


def test_the_maintenance_task_sends_what_the_sweep_found(settings):
    """The sweep task on the embedded broker: one message per batch, on the stage's queue, by task name."""
    from kombu import Connection

    from workers.celery_app import create_app

    embed_job, embed_ids = _job(settings, 3)
    llm_job, llm_ids = _job(settings, 1, mode="llm")
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    _set(settings, Item, embed_ids + llm_ids, lease_until=past)
    _set(settings, LlmRequest, [r.id for r in _requests(settings).values()], lease_until=past)
    app = create_app(settings)
    queues = ("embed", "fusion", "llm_local", "llm_api")
    with Connection("memory://") as conn:
        for name in queues:  # nothing left over from another test in this process
            conn.SimpleQueue(name).clear()
        summary = app.tasks[str(TaskName.SWEEP)].apply().get()
        sent = {}
        for name in queues:
            queue = conn.SimpleQueue(name)
            messages = []
            while queue.qsize():
                message = queue.get(timeout=1)
                messages.append((message.headers["task"], message.payload[0]))
                message.ack()
            sent[name] = messages
    app.close()
    assert summary == {"resent_items": 4, "dead_items": 0, "dead_requests": 0, "jobs_completed": 0}
    assert sent == {
        "embed": [(str(TaskName.EMBED), [embed_job, embed_ids[:2]]), (str(TaskName.EMBED), [embed_job, embed_ids[2:]])],
        "fusion": [],
        "llm_local": [(str(TaskName.LLM_LOCAL), [llm_job, llm_ids])],
        "llm_api": [],
    }
