"""End to end on real services: Redis broker, Postgres, separate `celery worker` processes."""

import re
import time

import pytest
import sqlalchemy as sa

from shared.client import FusionqClient
from shared.db.engine import session_for, upgrade
from shared.db.models import Item, Prediction
from shared.settings import Settings
from tests.conftest import make_topic_texts, train_topics
from workers.launch import start_worker, stop_worker

pytestmark = pytest.mark.e2e


@pytest.fixture
def production_settings(tmp_path, postgres_url, redis_url) -> Settings:
    settings = Settings(home=tmp_path / "home", database_url=postgres_url, broker_url=redis_url,
                        artifact_dir=tmp_path / "artifacts", embed_items_per_task=64)
    upgrade(settings.effective_database_url)
    return settings


@pytest.fixture
def workers(production_settings, tmp_path):
    env = {"FUSIONQ_DATABASE_URL": production_settings.database_url,
           "FUSIONQ_BROKER_URL": production_settings.broker_url,
           "FUSIONQ_ARTIFACT_DIR": str(production_settings.artifact_dir),
           "FUSIONQ_EMBED_ITEMS_PER_TASK": "64", "HF_HUB_OFFLINE": "1"}
    procs = []
    try:
        for queue in ("embed", "fusion"):
            procs.append(start_worker(queue, env=env, log_dir=tmp_path / "logs"))
        yield procs
    finally:
        for proc in procs:
            stop_worker(proc)


def test_a_few_hundred_texts_each_get_exactly_one_prediction(production_settings, workers):
    train_topics(production_settings, "sentence-transformers/all-MiniLM-L6-v2")
    texts, labels = make_topic_texts(100, seed=11)  # 300 texts
    texts[0] = ""
    with FusionqClient(production_settings) as client:
        job_id = client.submit(texts, "topics", idempotency_key="e2e-1")
        assert client.submit(texts, "topics", idempotency_key="e2e-1") == job_id
        progress = client.wait(job_id, timeout=240)
        results = client.results(job_id)
    assert (progress.status, progress.n_items, progress.n_done, progress.n_failed) == ("completed", 300, 299, 1)
    with session_for(production_settings.effective_database_url) as session:
        per_item = session.execute(
            sa.select(Item.id, sa.func.count(Prediction.id)).outerjoin(Prediction, Prediction.item_id == Item.id)
            .group_by(Item.id)).all()
    assert sorted(n for _, n in per_item) == [0] + [1] * 299  # the empty text failed, everything else has one
    accuracy = sum(r.labels == [label] for r, label in zip(results[1:], labels[1:])) / 299
    assert accuracy > 0.9  # the real MiniLM through the whole system
    for proc in workers:
        assert proc.poll() is None, f"worker died: {proc.log_path.read_text()[-2000:]}"


def test_the_http_api_on_postgres_answers_concurrent_classify_calls_told_not_polled(production_settings, workers):
    """`fusionq serve` over Postgres and real workers: every request thread waits through the API's
    notice hub (one LISTEN connection for all of them), and none is left subscribed afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from tests.test_api import Server

    train_topics(production_settings, "sentence-transformers/all-MiniLM-L6-v2")
    texts, labels = make_topic_texts(8, seed=5)  # 24 texts, one request each
    env = {"FUSIONQ_DATABASE_URL": production_settings.database_url, "FUSIONQ_BROKER_URL": production_settings.broker_url,
           "FUSIONQ_ARTIFACT_DIR": str(production_settings.artifact_dir), "HF_HUB_OFFLINE": "1"}
    with Server(env) as server, ThreadPoolExecutor(8) as pool:
        def classify(text):
            return httpx.post(server.url + "/v1/classify", json={"texts": [text], "classifier": "topics",
                                                                 "timeout_s": 60}, timeout=90)

        answers = list(pool.map(classify, texts))
        assert [a.status_code for a in answers] == [200] * len(texts), [a.text for a in answers if a.status_code != 200]
        predicted = [a.json()["results"][0]["labels"] for a in answers]
        assert sum(p == [label] for p, label in zip(predicted, labels)) >= 0.9 * len(texts)
        # every request's channel is dropped once it is answered: the server's last LISTEN/UNLISTEN command
        # (pg_stat_activity keeps each connection's last statement) subscribes to nothing any more
        deadline = time.monotonic() + 10
        while True:
            with session_for(production_settings.effective_database_url) as session:
                last = session.execute(sa.text(
                    "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                    "AND query ~ '(^|; )(UN)?LISTEN \"fusionq_job_'")).scalars().all()
            if (any(q.startswith("UNLISTEN") for q in last) and not any(re.search(r'(^|; )LISTEN "', q) for q in last)
                    or time.monotonic() > deadline):
                break
            time.sleep(0.2)
        assert any(q.startswith("UNLISTEN") for q in last), last  # the hub listened, then let go
        assert not any(re.search(r'(^|; )LISTEN "', q) for q in last), last  # nobody still subscribed


def test_a_solo_worker_over_its_memory_limit_finishes_the_task_then_stops_for_a_fresh_process(
        production_settings, tmp_path):
    """The solo pool runs tasks in the worker's own process (Celery still sends it worker_process_init,
    as prefork children get): past FUSIONQ_WORKER_MAX_MEMORY_MB after a task, it stops itself
    warmly, the task acknowledged and its job complete, for its supervisor to start a fresh one."""
    train_topics(production_settings, "sentence-transformers/all-MiniLM-L6-v2")
    env = {"FUSIONQ_DATABASE_URL": production_settings.database_url, "FUSIONQ_BROKER_URL": production_settings.broker_url,
           "FUSIONQ_ARTIFACT_DIR": str(production_settings.artifact_dir), "HF_HUB_OFFLINE": "1",
           "FUSIONQ_WORKER_MAX_MEMORY_MB": "64"}  # a worker with MiniLM loaded is far past this
    embed = start_worker("embed", env=env, log_dir=tmp_path / "logs")
    try:
        with FusionqClient(production_settings) as client:
            job_id = client.submit(["the striker scored twice"], "topics", mode="fast")
            assert client.wait(job_id, timeout=120).status == "completed"
        embed.wait(timeout=60)  # it exits by itself
    finally:
        stop_worker(embed)
    log = embed.log_path.read_text()
    assert "over FUSIONQ_WORKER_MAX_MEMORY_MB=64: warm shutdown for a fresh process" in log, log[-2000:]
