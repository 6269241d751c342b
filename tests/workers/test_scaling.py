"""Horizontal scaling and monitoring on real services: two `embed` workers (a solo process, and a
prefork pool of two as the README runs one on a CPU host) and two `fusion` worker processes on the
same queues, an LLM worker and the sweeper, Flower behind basic auth and `fusionq serve`.

Every item gets exactly one prediction whichever worker took it; both workers of each queue take
work; `/readyz` says not ready until a worker serves each queue and `/metrics` counts them; Flower
refuses a caller without credentials and shows the workers and their finished tasks to one with.
"""

from __future__ import annotations


import httpx
import pytest
import sqlalchemy as sa

from shared.client import FusionqClient
from shared.db.engine import session_for, upgrade
from shared.db.models import Item, Prediction
from shared.settings import Settings
from tests.conftest import make_topic_texts, train_topics
from tests.support.services import wait_for
from tests.test_api import Server, free_port
from workers.launch import start_flower, start_worker, stop_worker

pytestmark = pytest.mark.e2e


def test_two_workers_per_queue_share_the_work_and_every_item_gets_one_prediction(
        tmp_path, postgres_url, redis_url, tiny_bert_path, topic_llm):
    llm = f"openai:local-model@{topic_llm.base_url}"
    settings = Settings(home=tmp_path / "home", database_url=postgres_url, broker_url=redis_url,
                        artifact_dir=tmp_path / "artifacts", llm_local=llm, escalation_tiers="local@0.999",
                        embed_items_per_task=16)
    upgrade(postgres_url)
    train_topics(settings, tiny_bert_path, llms=("local",))
    env = {"FUSIONQ_DATABASE_URL": postgres_url, "FUSIONQ_BROKER_URL": redis_url, "FUSIONQ_LLM_LOCAL": llm,
           "FUSIONQ_ARTIFACT_DIR": str(settings.artifact_dir), "FUSIONQ_ESCALATION_TIERS": "local@0.999",
           "FUSIONQ_EMBED_ITEMS_PER_TASK": "16", "HF_HUB_OFFLINE": "1"}
    procs: dict = {}
    try:
        flower_port = free_port()
        procs["flower"] = start_flower(port=flower_port, basic_auth="ops:s3cret", env=env, log_dir=tmp_path / "logs")
        with Server(env) as api:
            not_ready = httpx.get(api.url + "/readyz")
            assert not_ready.status_code == 503 and "no live worker" in not_ready.json()["checks"]["workers"]
            for name, queue, options in [("embed-1", "embed", {}), ("embed-2", "embed", {"pool": "prefork", "concurrency": 2}), ("fusion-1", "fusion", {}),
                                         ("fusion-2", "fusion", {}), ("maintenance", "maintenance", {}),
                                         ("llm", "llm_local", {"pool": "threads", "concurrency": 4})]:
                procs[name] = start_worker(queue, env=env, log_dir=tmp_path / "logs", **options)
            wait_for(lambda: httpx.get(api.url + "/readyz").status_code == 200, timeout=30, what="/readyz", every=0.5)

            jobs = []
            with FusionqClient(settings) as client:
                for seed in range(4):  # several jobs at once, mode auto: encoder, LLM and aggregator hops
                    texts, _ = make_topic_texts(20, seed=100 + seed)
                    jobs.append(client.submit(texts, "topics", "auto"))
                for job_id in jobs:
                    assert client.wait(job_id, timeout=240).n_done == 60
            metrics = httpx.get(api.url + "/metrics").text
        assert 'fusionq_workers{queue="embed"} 2.0' in metrics and 'fusionq_workers{queue="fusion"} 2.0' in metrics

        with session_for(postgres_url) as session:
            per_item = session.execute(sa.select(Item.id, sa.func.count(Prediction.id)).outerjoin(
                Prediction, Prediction.item_id == Item.id).group_by(Item.id)).all()
        assert len(per_item) == 240 and {n for _, n in per_item} == {1}
        done = {name: procs[name].log_path.read_text().count("succeeded in") for name in
                ("embed-1", "embed-2", "fusion-1", "fusion-2")}
        print(f"\ntasks done per worker: {done}")
        assert all(n > 0 for n in done.values()), done  # both workers of each queue took work
        # the README's CPU embed worker: a prefork pool whose children share the cores (workers.cores)
        assert procs["embed-2"].log_path.read_text().count("torch thread(s) to start") == 2

        flower = f"http://127.0.0.1:{flower_port}"
        assert httpx.get(flower + "/").status_code == 401
        assert httpx.get(flower + "/api/workers", auth=("ops", "wrong")).status_code == 401
        listed = httpx.get(flower + "/api/workers", params={"refresh": "1"}, auth=("ops", "s3cret"), timeout=30).json()
        assert sum(name.startswith("embed-") for name in listed) == 2 and sum(n.startswith("fusion-") for n in listed) == 2
        tasks = httpx.get(flower + "/api/tasks", auth=("ops", "s3cret"), timeout=30).json()
        assert any(t["name"] == "fusionq.embed_items" and t["state"] == "SUCCESS" for t in tasks.values())
    finally:
        for proc in procs.values():
            stop_worker(proc)
