"""End to end on real services: Redis broker, Postgres, separate `celery worker` processes."""

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
