"""Modes, tiers, budgets and degraded operation, running the stages by hand (no Celery).

The classifier is trained with a loopback LLM as its ``local`` source, so escalation is fused by
the network; thresholds are set high so that which items escalate is decided by the budget.
"""

import datetime as dt

import pytest
import sqlalchemy as sa

from shared.client import FusionqClient
from shared.db.engine import session_for
from shared.db.jobs import create_job
from shared.service.submit import new_items
from shared.db.models import Classifier, Item, LlmRequest, Prediction
from shared.llm.sources import source_breaker
from shared.service.aggregate import fusion_stage
from shared.service.embed import embed_stage
from shared.service.llm import llm_stage
from shared.vocab import BUDGET_EXHAUSTED, missing_flag
from shared.service.sweeper import sweep
from tests.conftest import make_topic_texts, train_topics

TIERS = [{"source": "local", "threshold": 0.9999}]


@pytest.fixture
def settings(db_settings, topic_llm, tiny_bert_path):
    settings = db_settings.model_copy(update={"llm_local": f"openai:local-model@{topic_llm.base_url}",
                                              "llm_breaker_failures": 2, "llm_max_retries": 0})
    train_topics(settings, tiny_bert_path, llms=("local",))
    return settings


def _submit(settings, texts, *, mode="auto", **job):
    with session_for(settings.effective_database_url) as session, session.begin():
        clf = session.scalars(sa.select(Classifier)).one()
        items = new_items(texts, max_chars=settings.max_text_chars, item_modes=job.pop("item_modes", None))
        row, _, _ = create_job(session=session, classifier=clf, items=items, mode=mode, idempotency_key=None,
                               tiers=TIERS, llm_source="local", **job)
    with session_for(settings.effective_database_url) as session:
        ids = session.scalars(sa.select(Item.id).where(Item.job_id == row.id).order_by(Item.position)).all()
    return str(row.id), list(ids)


def _predictions(settings):
    with session_for(settings.effective_database_url) as session:
        return {p.item_id: p for p in session.scalars(sa.select(Prediction))}


def test_auto_escalates_within_the_item_budget_once_per_item_and_refuses_the_rest_flagged(settings):
    texts, _ = make_topic_texts(4, seed=5)
    job_id, ids = _submit(settings, texts, budget_items=2)
    assert embed_stage(settings, job_id=job_id, item_ids=ids) == ids
    first = fusion_stage(settings, job_id=job_id, item_ids=ids)
    escalated = first.escalate["local"]
    assert len(escalated) == 2 and first.written == len(ids) - 2
    again = fusion_stage(settings, job_id=job_id, item_ids=ids)  # a redelivered aggregator message
    assert again.escalate == {} and again.written == 0
    assert llm_stage(settings, job_id=job_id, item_ids=escalated, source="local") == escalated
    assert llm_stage(settings, job_id=job_id, item_ids=escalated, source="local") == []  # answered already
    assert fusion_stage(settings, job_id=job_id, item_ids=escalated).written == 2

    predictions = _predictions(settings)
    assert sorted(predictions) == ids  # one final prediction per item
    for item_id in escalated:
        assert predictions[item_id].signals == ["encoder", "llm:local:logprobs"] and predictions[item_id].flags == []
    refused = [p for i, p in predictions.items() if i not in escalated]
    assert all(p.signals == ["encoder"] for p in refused)
    assert all(p.flags == [BUDGET_EXHAUSTED] for p in refused if p.confidence < 0.9999)
    with FusionqClient(settings) as client:
        stats = client.stats(job_id)
    assert (stats.status, stats.n_escalated, stats.budget_items) == ("completed", 2, 2)
    assert [(t.source, t.done, t.queued) for t in stats.tiers] == [("local", 2, 0)]
    assert stats.flags.get(BUDGET_EXHAUSTED, 0) == sum(p.confidence < 0.9999 for p in refused)


def test_an_open_breaker_skips_the_tier_and_items_finish_flagged(settings):
    breaker = source_breaker(settings, "local")
    for _ in range(settings.llm_breaker_failures):
        breaker.record_failure()
    texts, _ = make_topic_texts(2, seed=6)
    job_id, ids = _submit(settings, texts)
    embed_stage(settings, job_id=job_id, item_ids=ids)
    outcome = fusion_stage(settings, job_id=job_id, item_ids=ids)
    assert outcome.escalate == {} and outcome.written == len(ids)
    low = [p for p in _predictions(settings).values() if p.confidence < 0.9999]
    assert low and all(p.flags == [missing_flag("local")] for p in low)
    with session_for(settings.effective_database_url) as session:
        statuses = session.scalars(sa.select(LlmRequest.status)).all()
    assert statuses == ["skipped"] * len(low)  # recorded, so the tier is never asked for these items


def test_full_mode_fuses_both_signals_whichever_arrives_first(settings):
    texts, _ = make_topic_texts(2, seed=7)
    job_id, ids = _submit(settings, texts, mode="full")
    assert llm_stage(settings, job_id=job_id, item_ids=ids, source="local") == ids  # the LLM answers first
    assert fusion_stage(settings, job_id=job_id, item_ids=ids).written == 0        # still waiting for features
    embed_stage(settings, job_id=job_id, item_ids=ids)
    assert fusion_stage(settings, job_id=job_id, item_ids=ids).written == len(ids)
    assert {tuple(p.signals) for p in _predictions(settings).values()} == {("encoder", "llm:local:logprobs")}


def test_per_item_modes_in_one_job(settings):
    texts, _ = make_topic_texts(1, seed=8)
    job_id, ids = _submit(settings, texts, mode="fast", item_modes=["llm", None, "fast"])
    embedded = embed_stage(settings, job_id=job_id, item_ids=ids)
    assert embedded == []  # the llm item needs no features; the fast ones are finished by the embed stage
    llm_stage(settings, job_id=job_id, item_ids=ids, source="local")
    fusion_stage(settings, job_id=job_id, item_ids=ids)
    predictions = _predictions(settings)
    assert predictions[ids[0]].signals == ["llm:local:logprobs"]
    assert predictions[ids[1]].signals == predictions[ids[2]].signals == ["encoder"]


def test_the_sweeper_resends_lost_work_and_dead_letters_after_max_attempts(settings):
    texts, _ = make_topic_texts(2, seed=9)
    job_id, ids = _submit(settings, texts, mode="full")
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=settings.item_lease_seconds + 1)
    no_messages = lambda: {}  # noqa: E731 - a broker view that carries nothing: every message was lost
    with session_for(settings.effective_database_url) as session, session.begin():
        result = sweep(session, settings, now=later, in_flight=no_messages)
    assert sorted(i for _, batch in result.embed for i in batch) == ids
    assert sorted(i for _, batch in result.llm["local"] for i in batch) == ids
    with session_for(settings.effective_database_url) as session, session.begin():
        assert sweep(session, settings, now=later, in_flight=no_messages).resent_items == 0  # queued again from now
        # every claim made since lapsed, the last of its attempts
        session.execute(sa.update(Item).values(attempts=settings.max_attempts, lease_until=later))
        session.execute(sa.update(LlmRequest).values(attempts=settings.max_attempts, lease_until=later))
    much_later = later + dt.timedelta(seconds=1)
    with session_for(settings.effective_database_url) as session, session.begin():
        result = sweep(session, settings, now=much_later)
    assert (result.dead_items, result.dead_requests, result.jobs_completed) == (len(ids), len(ids), 1)
    with session_for(settings.effective_database_url) as session:
        errors = session.scalars(sa.select(Item.error)).all()
    assert all("dead-lettered after 5 deliveries at the embed stage" in e for e in errors)
