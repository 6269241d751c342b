"""Job completion: counters kept per batch equal a recount, and the completing commit notifies a waiting caller."""

import uuid

import pytest
import sqlalchemy as sa

from shared.db.engine import session_for, upgrade
from shared.db.jobs import count_finished, create_job, refresh_job
from shared.db.models import Classifier, Item, Job
from shared.db.notify import JobListener
from shared.service.aggregate import fusion_stage
from shared.service.embed import embed_stage
from shared.service.submit import new_items
from shared.settings import Settings
from tests.conftest import make_topic_texts, train_topics


def _submit(settings, texts, *, classifier=True):
    with session_for(settings.effective_database_url) as session, session.begin():
        clf = session.scalars(sa.select(Classifier)).one() if classifier else None
        job, _, _ = create_job(session=session, classifier=clf, items=new_items(texts, max_chars=settings.max_text_chars),
                               mode="fast", idempotency_key=None)
    with session_for(settings.effective_database_url) as session:
        ids = session.scalars(sa.select(Item.id).where(Item.job_id == job.id).order_by(Item.position)).all()
    return job.id, list(ids)


def _counters(settings, job_id):
    with session_for(settings.effective_database_url) as session:
        job = session.get(Job, job_id)
        return job.status, job.n_done, job.n_failed


def test_counters_kept_per_batch_equal_a_recount(db_settings, tiny_bert_path):
    train_topics(db_settings, tiny_bert_path)
    texts, _ = make_topic_texts(4, seed=3)
    job_id, ids = _submit(db_settings, texts + ["", "  "])  # two refused at submit
    good = ids[:-2]
    half = good[: len(good) // 2]
    for batch in (half, good[len(half):]):
        embed_stage(db_settings, job_id=str(job_id), item_ids=batch)
        fusion_stage(db_settings, job_id=str(job_id), item_ids=batch)
        fusion_stage(db_settings, job_id=str(job_id), item_ids=batch)  # a redelivery adds nothing
        if batch is half:
            assert _counters(db_settings, job_id) == ("running", len(half), 2)
    kept = _counters(db_settings, job_id)
    with session_for(db_settings.effective_database_url) as session, session.begin():
        refresh_job(session=session, job_id=job_id)
    assert kept == _counters(db_settings, job_id) == ("completed", len(good), 2)


@pytest.fixture
def pg_settings(postgres_url, tmp_path):
    settings = Settings(home=tmp_path / "home", database_url=postgres_url)
    upgrade(settings.effective_database_url)
    return settings


def test_the_completing_commit_notifies_only_that_jobs_listener(pg_settings):
    url = pg_settings.effective_database_url
    job_id, (item_id,) = _submit(pg_settings, ["a text"], classifier=False)
    other_id, _ = _submit(pg_settings, ["another"], classifier=False)
    with JobListener(url) as mine, JobListener(url) as other:
        mine.listen(job_id)
        other.listen(other_id)
        with session_for(url) as session, session.begin():
            session.execute(sa.update(Item).where(Item.id == item_id).values(status="done"))
            assert count_finished(session=session, job_id=job_id, done=1) == "completed"
            assert not mine.wait(0.3)  # NOTIFY is transactional: nothing before the commit
        assert mine.wait(10)
        assert not other.wait(0.3)
        assert not mine.wait(0.3)  # one notification per completion


def test_a_job_completed_twice_notifies_once(pg_settings):
    url = pg_settings.effective_database_url
    job_id, (item_id,) = _submit(pg_settings, ["a text"], classifier=False)
    with JobListener(url) as listener:
        listener.listen(job_id)
        for _ in range(2):
            with session_for(url) as session, session.begin():
                session.execute(sa.update(Item).where(Item.id == item_id).values(status="done"))
                refresh_job(session=session, job_id=job_id)
        assert listener.wait(10) and not listener.wait(0.3)


def test_on_sqlite_a_commit_that_completes_a_job_wakes_this_process_waiters(sqlite_settings):
    """The embedded default has no NOTIFY: its workers are threads of the caller's process, and the
    completing commit wakes that process's waiters (a completion after the waiter's last look
    counts even if it came before the wait began); otherwise a wait sleeps its poll."""
    upgrade(sqlite_settings.effective_database_url)
    url = sqlite_settings.effective_database_url
    (first, (first_item,)), (second, (second_item,)) = (_submit(sqlite_settings, [t], classifier=False) for t in "ab")
    with JobListener(url) as listener:
        listener.listen(first)
        assert listener.wait(0.05) is False  # nothing completed: the wait sleeps its timeout
        with session_for(url) as session, session.begin():
            session.execute(sa.update(Item).where(Item.id == first_item).values(status="done"))
            assert count_finished(session=session, job_id=first, done=1) == "completed"
            assert listener.wait(0.2) is False  # not before the commit
        assert listener.wait(10)  # the commit happened before this wait: it is not missed
        listener.listen(first)  # the caller's next look
        assert listener.wait(0.2) is False  # one wake per completion
        with session_for(url) as session, session.begin():  # a sweeper's recount completes the other job
            session.execute(sa.update(Item).where(Item.id == second_item).values(status="done"))
            refresh_job(session=session, job_id=second)
        assert listener.wait(10)


def test_the_listener_without_postgres_sleeps_and_a_dead_one_degrades(sqlite_settings, pg_settings):
    with JobListener(sqlite_settings.effective_database_url) as sleeper:
        sleeper.listen(uuid.uuid4())
        assert sleeper.wait(0.05) is False
    url = pg_settings.effective_database_url
    job_id, (item_id,) = _submit(pg_settings, ["a text"], classifier=False)
    listener = JobListener(url)
    listener.listen(job_id)
    listener._connection.close()  # as a database restart would
    assert listener.wait(0.05) is False and listener.wait(0.05) is False
    listener.listen(job_id)  # the next look subscribes again, on a new connection
    with session_for(url) as session, session.begin():
        session.execute(sa.update(Item).where(Item.id == item_id).values(status="done"))
        count_finished(session=session, job_id=job_id, done=1)
    assert listener.wait(10)
    listener.unlisten(job_id)
    listener.close()


def _finish(url, job_id, item_id):
    with session_for(url) as session, session.begin():
        session.execute(sa.update(Item).where(Item.id == item_id).values(status="done"))
        count_finished(session=session, job_id=job_id, done=1)


def test_a_wait_for_one_job_keeps_another_jobs_notification_for_its_own_wait(pg_settings):
    url = pg_settings.effective_database_url
    (first, (first_item,)), (second, (second_item,)) = (_submit(pg_settings, [t], classifier=False) for t in "ab")
    with JobListener(url) as listener:
        listener.listen(first)
        listener.listen(second)
        _finish(url, second, second_item)
        assert not listener.wait(0.5, first)  # the second job's notification does not wake the first's waiter
        assert listener.wait(0.01, second)  # ... it was kept for the second's
        _finish(url, first, first_item)
        assert listener.wait(10, first)


def test_unlisten_is_sent_with_the_next_listen_and_channels_are_capped(pg_settings, monkeypatch):
    import shared.db.notify as notify

    monkeypatch.setattr(notify, "MAX_CHANNELS", 2)
    url = pg_settings.effective_database_url
    jobs = [_submit(pg_settings, [t], classifier=False) for t in "abc"]
    with JobListener(url) as listener:
        listener.listen(jobs[0][0])
        listener.unlisten(jobs[0][0])
        assert not listener.subscribed(jobs[0][0])
        listener.listen(jobs[1][0])  # sends the first job's UNLISTEN too
        listener.listen(jobs[2][0])
        listener.listen(uuid.uuid4())  # a third channel: the oldest (job 1) is dropped
        assert not listener.subscribed(jobs[1][0]) and listener.subscribed(jobs[2][0])
        listened = {row[0] for row in listener._connection.execute("SELECT pg_listening_channels()")}
        assert listened == set(listener._channels)
        for job_id, (item_id,) in jobs:
            _finish(url, job_id, item_id)
        assert listener.wait(10, jobs[2][0])
        assert not listener.wait(0.5)  # nothing from the unsubscribed jobs


def test_a_client_subscribes_at_submit_and_its_wait_reads_the_notice_not_the_job(pg_settings, tiny_bert_path, monkeypatch):
    from shared.client import FusionqClient
    from workers.dispatch import dispatcher_for

    train_topics(pg_settings, tiny_bert_path)
    looks = []
    with FusionqClient(pg_settings, dispatcher_factory=dispatcher_for) as client:
        job_id = client.submit(["a text about markets"], "topics")
        assert client._listener.subscribed(job_id)
        progress = FusionqClient.progress
        monkeypatch.setattr(FusionqClient, "progress", lambda self, j: looks.append(j) or progress(self, j))
        told = client.wait(job_id, timeout=60)
        assert looks == []  # woken by the completing commit, whose notice carries the job's progress
        assert told.finished and told == progress(client, job_id)  # ... the same as a look would give


def test_a_notice_hub_tells_each_of_many_threads_its_own_job(pg_settings):
    import threading

    from shared.db.notify import NoticeHub

    url = pg_settings.effective_database_url
    jobs = [_submit(pg_settings, [f"text {i}"], classifier=False) for i in range(12)]
    hub = NoticeHub(url)
    told, ready = {}, threading.Barrier(len(jobs) + 1)

    def waiter(job_id):
        with hub.watch(job_id) as watch:
            assert watch.listening.is_set()  # LISTEN is in force before the caller's first look
            ready.wait(10)
            told[job_id] = watch.wait(10)

    threads = [threading.Thread(target=waiter, args=(job_id,)) for job_id, _ in jobs]
    try:
        for thread in threads:
            thread.start()
        ready.wait(10)
        assert len(hub._listened) == len(jobs)
        for job_id, (item_id,) in reversed(jobs):
            _finish(url, job_id, item_id)
        for thread in threads:
            thread.join(15)
        # each thread got its own job's notice, which carries that job's finished progress
        assert set(told) == {job_id for job_id, _ in jobs}
        assert all(str(job_id) in told[job_id] and "completed" in told[job_id] for job_id in told), told
        # the channels of finished watches are dropped with the hub thread's next commands
        with hub.watch(uuid.uuid4()) as watch:
            assert watch.listening.is_set() and len(hub._listened) == 1
            assert watch.wait(0.2) is None  # nobody finished that job
    finally:
        hub.close()
    assert not hub._thread.is_alive()


def test_a_notice_hub_without_postgres_or_with_a_dead_one_leaves_the_caller_polling(sqlite_settings, pg_settings):
    from shared.db.notify import NoticeHub

    hub = NoticeHub(sqlite_settings.effective_database_url)
    for _ in range(70_000):  # more watches than a pipe holds bytes: none may block on a wake nobody reads
        with hub.watch(uuid.uuid4()) as watch:
            assert not watch.listening.is_set()
    assert hub._thread is None
    hub.close()
    dead = sa.make_url(pg_settings.effective_database_url).set(port=1)  # nothing listens on port 1
    hub = NoticeHub(dead.render_as_string(hide_password=False))
    hub.LISTEN_TIMEOUT = 0.5
    try:
        with hub.watch(uuid.uuid4()) as watch:
            assert not watch.listening.is_set()  # the caller then polls the job row
    finally:
        hub.close()


def test_a_server_client_does_not_subscribe_at_submit(pg_settings, tiny_bert_path):
    from shared.client import FusionqClient
    from workers.dispatch import dispatcher_for

    train_topics(pg_settings, tiny_bert_path)
    with FusionqClient(pg_settings, dispatcher_factory=dispatcher_for, listen_on_submit=False) as client:
        job_id = client.submit(["a text about markets"], "topics")
        assert not client._listener.subscribed(job_id) and client._listener._connection is None
        assert client.wait(job_id, timeout=60).finished  # wait still works: it subscribes before its look


def _claim_plan(settings, job_id) -> str:
    """The plan Postgres picks for a claim's predicate (as ``claim_job_items`` writes it) on this job's first ids."""
    with session_for(settings.effective_database_url) as session:
        ids = session.scalars(sa.select(Item.id).where(Item.job_id == job_id).order_by(Item.id).limit(1024)).all()
        rows = session.execute(sa.text(
            "EXPLAIN UPDATE items SET attempts = attempts + 1 WHERE id = ANY(:ids) AND job_id = :job "
            "AND status = 'pending' AND (lease_until IS NULL OR lease_until < now())"), {"ids": list(ids), "job": job_id})
        return "\n".join(r[0] for r in rows)


def test_a_large_job_refreshes_the_statistics_so_its_claims_read_their_ids_by_key(pg_settings, tiny_bert_path,
                                                                                   monkeypatch):
    from shared.client import FusionqClient
    from shared.service import submit
    from workers.dispatch import dispatcher_for

    train_topics(pg_settings, tiny_bert_path)
    texts = [f"text {i} about markets" for i in range(3000)]
    # Given statistics taken when every item was finished (an earlier job, analysed once done)
    done_job, _ = _submit(pg_settings, texts)
    with session_for(pg_settings.effective_database_url) as session, session.begin():
        session.execute(sa.update(Item).values(status="done"))
        session.execute(sa.text("ANALYZE items"))
    # a large job stored without fresh statistics has its claims read every pending item by status
    stale_job, _ = _submit(pg_settings, texts)
    assert "ix_items_open" in _claim_plan(pg_settings, stale_job)
    with session_for(pg_settings.effective_database_url) as session, session.begin():
        session.execute(sa.update(Item).values(status="done"))
        session.execute(sa.text("ANALYZE items"))
    # When a job at least ANALYZE_AFTER_ITEMS large is submitted
    monkeypatch.setattr(submit, "ANALYZE_AFTER_ITEMS", 3000)
    with FusionqClient(pg_settings, dispatcher_factory=dispatcher_for) as client:
        job_id = client.submit(texts, "topics")
    # Then its claims go by primary key, 1,024 ids at a time, whatever the size of the job
    plan = _claim_plan(pg_settings, job_id)
    assert "pk_items" in plan and "ix_items_open" not in plan, plan
