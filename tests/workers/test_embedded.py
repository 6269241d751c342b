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


def test_work_left_by_an_embedded_process_that_died_is_finished_by_the_next_one(tmp_path, tiny_bert_path):
    """Process A submits and is SIGKILLed at once, its queue in its own memory; process B (this one)
    opens the same home and waits: its worker's sweeps find the work that no message carries and
    finish it, one prediction per item, with the shipped lease and sweep interval."""
    import os
    import subprocess
    import sys
    import time

    from shared.db.models import Item, Prediction
    from shared.settings import Settings

    home = tmp_path / "home"
    train_topics(Settings(home=home), tiny_bert_path)
    texts, _ = make_topic_texts(400, seed=12)
    script = (
        "import os, signal, sys\n"
        "from shared.client import FusionqClient\n"
        "from shared.settings import Settings\n"
        "client = FusionqClient(Settings(home=sys.argv[1]))\n"
        "texts = [line.rstrip('\\n') for line in sys.stdin]\n"
        "print(client.submit(texts, 'topics'), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSIONQ_")}
    died = subprocess.run([sys.executable, "-c", script, str(home)], input="\n".join(texts) + "\n", text=True,
                          capture_output=True, env=env, timeout=120, cwd=os.getcwd())
    assert died.returncode == -9, died.stderr
    job_id = died.stdout.strip()
    started = time.monotonic()
    with FusionqClient(Settings(home=home)) as client:
        progress = client.wait(job_id, timeout=120)
        took = time.monotonic() - started
    assert (progress.status, progress.n_done, progress.n_failed) == ("completed", 1200, 0)
    with session_for(Settings(home=home).effective_database_url) as session:
        per_item = session.execute(sa.select(Item.id, sa.func.count(Prediction.id)).outerjoin(
            Prediction, Prediction.item_id == Item.id).group_by(Item.id)).all()
    assert len(per_item) == 1200 and {n for _, n in per_item} == {1}
    print(f"\nembedded recovery: job finished {took:.1f}s after the next process opened the database")
