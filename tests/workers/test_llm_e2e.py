"""LLM workers end to end: real llm_local, llm_api (two processes) and fusion workers, Redis,
Postgres and an OpenAI-compatible server on loopback."""

import collections
import math

import pytest
import sqlalchemy as sa

from shared.client import FusionqClient
from shared.db.engine import session_for, upgrade
from shared.db.models import Item, LlmScore, Prediction
from shared.llm.prompts import LabelSet
from shared.settings import Settings
from tests.conftest import TOPIC_WORDS, make_topic_texts
from tests.support.fake_openai import FakeOpenAIServer, keyword_answer
from workers.launch import start_worker, stop_worker

pytestmark = pytest.mark.e2e
RATE = 20


@pytest.fixture
def llm_server():
    """Answers 0.9 on the topic whose keywords the text holds (every topic text holds three of its own)."""
    with FakeOpenAIServer(answer_fn=keyword_answer(TOPIC_WORDS)) as server:
        yield server


@pytest.fixture
def settings_and_workers(tmp_path, postgres_url, redis_url, llm_server):
    env = {"FUSIONQ_DATABASE_URL": postgres_url, "FUSIONQ_BROKER_URL": redis_url,
           "FUSIONQ_LLM_LOCAL": f"openai:local-model@{llm_server.base_url}",
           "FUSIONQ_LLM_API": f"openai:api-model@{llm_server.base_url}",
           "FUSIONQ_LLM_RATE_PER_SECOND": str(RATE), "FUSIONQ_LLM_PRICE_IN_PER_MTOK": "1.0",
           "FUSIONQ_LLM_BATCH_ITEMS": "8", "HF_HUB_OFFLINE": "1"}
    settings = Settings(home=tmp_path / "home", database_url=postgres_url, broker_url=redis_url,
                        llm_local=env["FUSIONQ_LLM_LOCAL"], llm_api=env["FUSIONQ_LLM_API"], llm_batch_items=8)
    upgrade(postgres_url)
    procs = []
    try:
        logs = tmp_path / "logs"
        procs.append(start_worker("fusion", env=env, log_dir=logs))
        procs.append(start_worker("llm_local", env=env, log_dir=logs, pool="threads", concurrency=4))
        for _ in range(2):  # two processes share one rate limit through Redis
            procs.append(start_worker("llm_api", env=env, log_dir=logs, pool="threads", concurrency=4))
        yield settings, procs
    finally:
        for proc in procs:
            stop_worker(proc)


def test_local_and_api_workers_score_everything_once_under_a_shared_rate_limit(settings_and_workers, llm_server):
    settings, procs = settings_and_workers
    labels = LabelSet(tuple(TOPIC_WORDS))
    local_texts, true_local = make_topic_texts(60, seed=21)   # 180 texts
    api_texts, _ = make_topic_texts(40, seed=22)              # 120 texts
    api_texts[5] = ""
    with FusionqClient(settings) as client:
        local_job = client.submit_llm(local_texts, labels, source="local")
        api_job = client.submit_llm(api_texts, labels, source="api")
        local_progress = client.wait(local_job, timeout=240)
        api_progress = client.wait(api_job, timeout=240)
        local_results = client.results(local_job)
    assert (local_progress.n_done, local_progress.n_failed) == (180, 0)
    assert (api_progress.n_done, api_progress.n_failed) == (119, 1)
    # Every result is the LLM's own distribution, marked as logprobs, in submission order: the topic the
    # text was made from at 0.9, the other two at 0.05 each (what keyword_answer is programmed to say).
    assert all(r.signals == ["llm:local:logprobs"] for r in local_results)
    assert [r.position for r in local_results] == list(range(180))
    assert [r.labels for r in local_results] == [[label] for label in true_local]
    for result, label in zip(local_results, true_local):
        expected = {name: 0.9 if name == label else 0.05 for name in labels.names}
        assert result.probabilities == pytest.approx(expected) and result.confidence == pytest.approx(0.9)

    with session_for(settings.effective_database_url) as session:
        per_item = session.execute(sa.select(Item.id, sa.func.count(Prediction.id))
                                   .outerjoin(Prediction, Prediction.item_id == Item.id).group_by(Item.id)).all()
        cached = session.execute(sa.select(LlmScore.model, sa.func.count(), sa.func.sum(LlmScore.cost_usd))
                                 .group_by(LlmScore.model)).all()
    assert sorted(n for _, n in per_item) == [0] + [1] * 299
    by_model = {model: (n, cost) for model, n, cost in cached}
    assert by_model["local-model"][0] == 180 and by_model["local-model"][1] == 0
    assert by_model["api-model"][0] == 119 and by_model["api-model"][1] > 0  # the empty text never reached the API

    api_calls = [r["time"] for r in llm_server.requests if (r["body"] or {}).get("model") == "api-model"]
    per_second = collections.Counter(int(t) for t in api_calls)
    assert len(api_calls) == 119
    assert max(per_second.values()) <= RATE + 2  # the limit holds across both worker processes
    # 119 calls need at least ceil(119 / RATE) one-second windows, first and last only partly used
    assert max(api_calls) - min(api_calls) >= math.ceil(119 / RATE) - 2
    for proc in procs:
        assert proc.poll() is None, proc.log_path.read_text()[-2000:]
