"""The embedded default: the client runs the real Celery tasks in-process on the in-memory broker."""

import pytest
import sqlalchemy as sa

from shared.client import FusionqClient
from shared.db.engine import session_for
from shared.db.models import Job
from shared.errors import ClassifierNotFound, InputError
from tests.conftest import make_topic_texts, train_topics


@pytest.fixture
def client(sqlite_settings, tiny_bert_path):
    train_topics(sqlite_settings, tiny_bert_path)
    with FusionqClient(sqlite_settings) as client:
        yield client


def test_job_completes_with_one_result_per_text_in_order(client):
    texts, _ = make_topic_texts(20, seed=5)
    texts[7] = "   "
    job_id = client.submit(texts, "topics")
    progress = client.wait(job_id, timeout=120)
    assert (progress.status, progress.n_done, progress.n_failed) == ("completed", 59, 1)
    results = client.results(job_id)
    assert [r.position for r in results] == list(range(60))
    assert results[7].status == "failed" and results[7].error == "empty or whitespace-only text"
    good = [r for r in results if r.status == "done"]
    assert all(len(r.labels) == 1 and abs(sum(r.probabilities.values()) - 1) < 1e-4 for r in good)
    assert all(r.signals == ["encoder"] and r.latency_ms >= 0 for r in good)


def test_resubmitting_with_the_same_key_returns_the_same_job(client):
    first = client.submit(["the coach and the league"], "topics", idempotency_key="order-17")
    assert client.submit(["the coach and the league"], "topics", idempotency_key="order-17") == first
    client.wait(first, timeout=60)
    with session_for(client.settings.effective_database_url) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == 1


def test_bad_submissions_leave_no_job_behind(client):
    with pytest.raises(ClassifierNotFound, match="known: topics"):
        client.submit(["text"], "no-such-classifier")
    with pytest.raises(InputError, match="not a single string"):
        client.submit("one text", "topics")
    with pytest.raises(InputError, match="at least one"):
        client.submit([], "topics")
    with pytest.raises(InputError, match="mode 'turbo'"):
        client.submit(["x"], "topics", mode="turbo")
    with session_for(client.settings.effective_database_url) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0
