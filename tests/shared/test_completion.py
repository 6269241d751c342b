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
        job, _ = create_job(session=session, classifier=clf, items=new_items(texts, max_chars=settings.max_text_chars),
                            mode="fast", idempotency_key=None, lease_seconds=settings.item_lease_seconds)
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
