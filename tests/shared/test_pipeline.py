"""The two stages of the fast path, run directly (no Celery): idempotent and failure-isolating."""

import re

import pytest
import sqlalchemy as sa
import torch

from shared.db.engine import session_for
from shared.db.jobs import create_job
from shared.service.submit import new_items
from shared.db.models import Classifier, Item, Job, Prediction
from shared.service.aggregate import fusion_stage, torch_threads_beside_postgres
from shared.service.embed import embed_stage
from tests.conftest import make_topic_texts, train_topics


def _submit(settings, texts):
    with session_for(settings.effective_database_url) as session, session.begin():
        clf = session.scalars(sa.select(Classifier)).one()
        job, _, _ = create_job(session=session, classifier=clf, items=new_items(texts, max_chars=settings.max_text_chars),
                               mode="fast", idempotency_key=None)
    with session_for(settings.effective_database_url) as session:
        ids = session.scalars(sa.select(Item.id).where(Item.job_id == job.id).order_by(Item.position)).all()
    return str(job.id), list(ids)


def test_running_each_stage_twice_gives_exactly_one_prediction_per_item(db_settings, tiny_bert_path):
    train_topics(db_settings, tiny_bert_path)
    texts, _ = make_topic_texts(5, seed=9)
    job_id, ids = _submit(db_settings, texts)
    # When every stage runs twice, as after a redelivered message (fast items are finished by the
    # embed stage itself: nothing is left for the aggregator)
    assert embed_stage(db_settings, job_id=job_id, item_ids=ids) == []
    assert embed_stage(db_settings, job_id=job_id, item_ids=ids) == []
    assert fusion_stage(db_settings, job_id=job_id, item_ids=ids).written == 0
    # Then each item has one prediction and the job is complete
    with session_for(db_settings.effective_database_url) as session:
        counts = session.execute(sa.select(Prediction.item_id, sa.func.count()).group_by(Prediction.item_id)).all()
        assert sorted(c[0] for c in counts) == ids and {c[1] for c in counts} == {1}
        job = session.scalars(sa.select(Job)).one()
        assert (job.status, job.n_done, job.n_failed) == ("completed", len(ids), 0)
        attempts = session.scalars(sa.select(Item.attempts)).all()
        assert set(attempts) == {1}


def test_corrupt_artifact_fails_the_items_with_the_reason(sqlite_settings, tiny_bert_path):
    result = train_topics(sqlite_settings, tiny_bert_path)
    weights = result.artifact_dir / "model.safetensors"
    weights.write_bytes(b"garbage")
    job_id, ids = _submit(sqlite_settings, ["the striker and the coach"])
    embed_stage(sqlite_settings, job_id=job_id, item_ids=ids)
    fusion_stage(sqlite_settings, job_id=job_id, item_ids=ids)
    with session_for(sqlite_settings.effective_database_url) as session:
        item = session.scalars(sa.select(Item)).one()
        assert item.status == "failed" and "corrupt or was replaced" in item.error
        assert session.scalars(sa.select(Job)).one().status == "completed"


def test_an_encoder_that_cannot_load_fails_items_instead_of_looping(sqlite_settings, tiny_bert_path):
    train_topics(sqlite_settings, tiny_bert_path)
    with session_for(sqlite_settings.effective_database_url) as session, session.begin():
        session.execute(sa.update(Classifier).values(encoder_spec={"model": "/nowhere/encoder"}))
    job_id, ids = _submit(sqlite_settings, ["a text", "another"])
    assert embed_stage(sqlite_settings, job_id=job_id, item_ids=ids) == []
    with session_for(sqlite_settings.effective_database_url) as session:
        errors = session.scalars(sa.select(Item.error)).all()
        assert all("model '/nowhere/encoder': no such directory" in e for e in errors)
        assert session.scalars(sa.select(Job)).one().status == "completed"


def test_the_embed_stage_finishes_fast_items_as_the_classifier_would(db_settings, tiny_bert_path):
    from shared.db.models import ItemFeatures
    from shared.service.autofusion import AutoFusionClassifier

    train_topics(db_settings, tiny_bert_path)
    texts, _ = make_topic_texts(3, seed=5)
    job_id, ids = _submit(db_settings, texts)
    assert embed_stage(db_settings, job_id=job_id, item_ids=ids) == []
    with session_for(db_settings.effective_database_url) as session:
        stored = {p.item_id: p for p in session.scalars(sa.select(Prediction))}
        assert session.scalar(sa.select(sa.func.count()).select_from(ItemFeatures)) == 0  # a final answer needs none
        job = session.scalars(sa.select(Job)).one()
    assert (job.status, job.n_done) == ("completed", len(ids))
    expected = AutoFusionClassifier.from_registry("topics", settings=db_settings).predict_proba(texts)
    for row, item_id in enumerate(ids):
        assert stored[item_id].probabilities == pytest.approx(expected[row].tolist(), abs=2e-6)
        assert stored[item_id].signals == ["encoder"] and stored[item_id].latency_ms > 0


def test_each_embed_task_logs_where_its_time_went(db_settings, tiny_bert_path, caplog):
    train_topics(db_settings, tiny_bert_path)
    texts, _ = make_topic_texts(4, seed=3)
    job_id, ids = _submit(db_settings, texts)
    with caplog.at_level("INFO", logger="shared.service.embed"):
        embed_stage(db_settings, job_id=job_id, item_ids=ids)
        embed_stage(db_settings, job_id=job_id, item_ids=ids)  # nothing left to claim: no line
    lines = [r.getMessage() for r in caplog.records if r.name == "shared.service.embed"]
    assert len(lines) == 1, lines
    match = re.fullmatch(rf"job {job_id}: {len(ids)} items claimed in ([\d.]+) ms, encoded in ([\d.]+) ms \(the model\), "
                         rf"{len(ids)} written in ([\d.]+) ms \(0 failed\), 0 handed to the aggregator", lines[0])
    assert match and all(float(ms) > 0 for ms in match.groups()), lines[0]
    # the bench reads the model's time from this line (bench/pipeline_throughput.py)
    from bench.pipeline_throughput import WORKER_MODEL_LINE
    assert WORKER_MODEL_LINE.search(lines[0]).group(2) == match.group(2)


def test_the_fast_finish_leaves_postgres_a_core_and_sqlite_none(db_settings):
    """On Postgres the fusion network decides on one torch thread fewer while the server marks the
    items; torch's setting comes back however the block ends. On SQLite nothing runs beside it."""
    threads = torch.get_num_threads()
    postgres = db_settings.effective_database_url.startswith("postgresql")
    with session_for(db_settings.effective_database_url) as session:
        with torch_threads_beside_postgres(session):
            inside = torch.get_num_threads()
        with pytest.raises(RuntimeError), torch_threads_beside_postgres(session):
            raise RuntimeError("the decision failed")
    assert inside == (max(1, threads - 1) if postgres and threads > 1 else threads)
    assert torch.get_num_threads() == threads
