"""`fusionq score` through the queue (score_texts with a client): real fusion and llm_api workers,
Redis, Postgres and an OpenAI-compatible server on loopback. Each text's tokens, latency and cost
are the ones its answer recorded, not zeros."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from shared.client import FusionqClient
from shared.db.engine import session_for, upgrade
from shared.db.models import LlmScore
from shared.llm.cache import question_keys
from shared.llm.prompts import LabelSet, single_label_messages
from shared.scoring import score_texts
from shared.settings import Settings
from tests.support.fake_openai import FakeOpenAIServer
from workers.launch import start_worker, stop_worker

pytestmark = pytest.mark.e2e
LABELS = LabelSet(("sports", "business", "science"))
PRICE_IN, PRICE_OUT = 3.0, 5.0  # USD per million tokens


def fake_prompt_tokens(text: str) -> int:
    """What the fake server reports as prompt_tokens: the words of the messages it was sent."""
    return sum(len(m["content"].split()) for m in single_label_messages(LABELS, text))


def test_score_through_the_queue_reports_each_answers_recorded_tokens_latency_and_cost(
        tmp_path, postgres_url, redis_url):
    texts = ["the sports final tonight", "", "business as usual", "the science of stars"]
    upgrade(postgres_url)
    with FakeOpenAIServer() as llm:
        spec = f"openai:api-model@{llm.base_url}"
        env = {"FUSIONQ_DATABASE_URL": postgres_url, "FUSIONQ_BROKER_URL": redis_url, "HF_HUB_OFFLINE": "1",
               "FUSIONQ_LLM_API": spec, "FUSIONQ_LLM_PRICE_IN_PER_MTOK": str(PRICE_IN),
               "FUSIONQ_LLM_PRICE_OUT_PER_MTOK": str(PRICE_OUT)}
        settings = Settings(home=tmp_path / "home", database_url=postgres_url, broker_url=redis_url, llm_api=spec,
                            llm_price_in_per_mtok=PRICE_IN, llm_price_out_per_mtok=PRICE_OUT)
        workers = [start_worker(q, env=env, log_dir=tmp_path / "logs") for q in ("llm_api", "fusion")]
        try:
            with FusionqClient(settings) as client:
                first = score_texts(settings, llm="api", labels=LABELS, multi_label=False, texts=texts,
                                    show_progress=False, timeout=120, client=client)
                second = score_texts(settings, llm="api", labels=LABELS, multi_label=False, texts=texts,
                                     show_progress=False, timeout=120, client=client)
        finally:
            for worker in workers:
                stop_worker(worker)
        calls = sum(1 for r in llm.requests if r["path"].endswith("/chat/completions"))

    assert [s.method for s in first] == ["logprobs", "failed", "logprobs", "logprobs"], [s.error for s in first]
    assert first[1].error == "empty or whitespace-only text" and first[1].tokens_in == 0
    assert calls == 3  # the second run is answered from the cache
    usable = [0, 2, 3]
    keys = question_keys("openai", "api-model", LABELS, False, [texts[i] for i in usable])
    with session_for(postgres_url) as session:
        recorded = {row.cache_key: row for row in session.scalars(sa.select(LlmScore)).all()}
    for i, key in zip(usable, keys):
        row, score, again = recorded[key], first[i], second[i]
        # what the database recorded, known from the fake server's usage numbers, and non-zero
        assert (row.tokens_in, row.tokens_out) == (fake_prompt_tokens(texts[i]), 1)
        assert row.latency_ms > 0
        assert (score.tokens_in, score.tokens_out, score.latency_ms) == (row.tokens_in, row.tokens_out, row.latency_ms)
        assert score.cost_usd == pytest.approx((row.tokens_in * PRICE_IN + PRICE_OUT) / 1e6) == row.cost_usd
        assert not score.cached and score.spent_usd == score.cost_usd
        # from the cache, as an in-process score reports it: the same tokens and cost, nothing spent, no time taken
        assert (again.tokens_in, again.tokens_out, again.cost_usd) == (row.tokens_in, row.tokens_out, row.cost_usd)
        assert again.cached and again.spent_usd == 0 and again.latency_ms == 0
        assert again.probabilities == pytest.approx(score.probabilities)
        assert row.hits == 1
