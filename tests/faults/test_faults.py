"""Faults with real processes: embed, fusion, LLM and maintenance workers, celery beat, Redis,
Postgres and a loopback LLM. Each test breaks something in the middle of a job and checks that
the job completes with exactly one final prediction per item and nothing lost; it reports how
long recovery took (and appends a line to $FUSIONQ_FAULT_REPORT when set, for bench/faults.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid

import pytest
import redis
import sqlalchemy as sa

from shared.client import FusionqClient
from shared.db.engine import dispose_engines, session_for, upgrade
from shared.db.models import Item, LlmRequest, Prediction
from shared.errors import JobTimeout
from shared.settings import Settings
from tests.conftest import PG_ADMIN_URL, REDIS_URL, TOPIC_WORDS, make_topic_texts, train_topics
from tests.support.fake_openai import FakeOpenAIServer, keyword_answer
from workers.launch import start_beat, start_worker, stop_worker

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
LEASE_SECONDS = 4
ENV = {"FUSIONQ_ITEM_LEASE_SECONDS": str(LEASE_SECONDS), "FUSIONQ_SWEEP_INTERVAL": "1", "FUSIONQ_MAX_ATTEMPTS": "5",
       "FUSIONQ_EMBED_ITEMS_PER_TASK": "48", "FUSIONQ_LLM_BATCH_ITEMS": "8", "FUSIONQ_LLM_TIMEOUT": "1",
       "FUSIONQ_LLM_MAX_RETRIES": "2", "FUSIONQ_LLM_BREAKER_FAILURES": "3", "FUSIONQ_LLM_BREAKER_COOLDOWN": "2",
       "FUSIONQ_ESCALATION_TIERS": "local@0.999", "HF_HUB_OFFLINE": "1"}


class Cluster:
    """The worker processes of one box; started, killed and stopped by the tests."""

    def __init__(self, settings: Settings, env: dict[str, str], log_dir) -> None:
        self.settings, self.env, self.log_dir = settings, env, log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, queue: str, env: dict[str, str] | None = None, **options) -> None:
        self.procs[queue] = start_worker(queue, env={**self.env, **(env or {})}, log_dir=self.log_dir, **options)

    def start_all(self) -> None:
        self.start("fusion", env={"FUSIONQ_TORCH_THREADS": "1"})  # leaves the cores to the encoder
        self.start("embed")
        self.start("llm_local", pool="threads", concurrency=4)
        self.start("maintenance")
        self.procs["beat"] = start_beat(env=self.env, log_dir=self.log_dir)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            stop_worker(proc)
        self.procs.clear()


@pytest.fixture(scope="module")
def llm_server():
    with FakeOpenAIServer(answer_fn=keyword_answer(TOPIC_WORDS), hang_seconds=3.0) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, llm_server, minilm_path):
    """A fresh database, Redis DB 13, a classifier trained with the loopback LLM, and every worker."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    name = f"fusionq_faults_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    broker = redis.Redis.from_url(REDIS_URL)
    broker.flushdb()
    home = tmp_path_factory.mktemp("faults")
    env = {**ENV, "FUSIONQ_HOME": str(home / "home"), "FUSIONQ_DATABASE_URL": database_url,
           "FUSIONQ_BROKER_URL": REDIS_URL, "FUSIONQ_LLM_LOCAL": f"openai:local-model@{llm_server.base_url}"}
    settings = Settings(home=home / "home", database_url=database_url, broker_url=REDIS_URL,
                        llm_local=env["FUSIONQ_LLM_LOCAL"], escalation_tiers=ENV["FUSIONQ_ESCALATION_TIERS"],
                        item_lease_seconds=LEASE_SECONDS, llm_max_retries=0, embed_items_per_task=48, llm_batch_items=8)
    upgrade(database_url)
    train_topics(settings, minilm_path, llms=("local",))
    cluster = Cluster(settings, env, home / "logs")
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()
        dispose_engines()
        broker.flushdb()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def submit(cluster: Cluster, n_per_class: int, *, mode: str, seed: int, key: str | None = None) -> uuid.UUID:
    texts, _ = make_topic_texts(n_per_class, seed=seed)
    with FusionqClient(cluster.settings) as client:
        return client.submit(texts, "topics", mode, idempotency_key=key)


def wait_surviving_outages(cluster: Cluster, job_id, timeout: float = 240.0) -> None:
    """Wait for the job; ``client.wait`` rides out a database that is restarting."""
    with FusionqClient(cluster.settings) as client:
        try:
            client.wait(job_id, timeout=timeout)
        except JobTimeout:
            raise AssertionError(f"job {job_id} did not complete within {timeout:.0f}s; logs in {cluster.log_dir}") from None


def audit(cluster: Cluster, job_id) -> dict:
    """Items lost (not finished, or done without a prediction), duplicate predictions, and work done
    again: encoder batches and LLM requests started more than once (``reprocessed``), aggregator
    messages the sweeper re-sent (each a no-op if the first one arrived)."""
    with session_for(cluster.settings.effective_database_url) as session:
        items = session.execute(sa.select(Item.id, Item.status, Item.attempts, Item.resends)
                                .where(Item.job_id == job_id)).all()
        per_item = dict(session.execute(
            sa.select(Prediction.item_id, sa.func.count()).join(Item, Item.id == Prediction.item_id)
            .where(Item.job_id == job_id).group_by(Prediction.item_id)).all())
        request_attempts = session.scalars(sa.select(LlmRequest.attempts).where(LlmRequest.job_id == job_id)).all()
        flagged = session.scalar(sa.select(sa.func.count()).select_from(Prediction).join(Item, Item.id == Prediction.item_id)
                                 .where(Item.job_id == job_id, sa.cast(Prediction.flags, sa.Text) != "[]"))
    lost = sum(1 for i in items if i.status not in ("done", "failed") or (i.status == "done" and per_item.get(i.id) != 1))
    return {"items": len(items), "lost": lost, "duplicates": sum(max(n - 1, 0) for n in per_item.values()),
            "failed": sum(i.status == "failed" for i in items), "flagged": flagged,
            "reprocessed": sum(max(i.attempts - 1, 0) for i in items) + sum(max(a - 1, 0) for a in request_attempts),
            "aggregator_resends": sum(i.resends for i in items)}


def report(fault: str, recovered_s: float, result: dict) -> None:
    line = {"fault": fault, "recovered_s": round(recovered_s, 2), **result}
    print(f"\nFAULT {json.dumps(line)}")
    path = os.environ.get("FUSIONQ_FAULT_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


def check(result: dict) -> None:
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["failed"] == 0, result


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def count(cluster: Cluster, *where) -> int:
    with session_for(cluster.settings.effective_database_url) as session:
        return session.scalar(sa.select(sa.func.count()).select_from(Item).where(*where))


def test_sigkill_of_the_embed_worker_in_the_middle_of_a_batch(cluster):
    job_id = submit(cluster, 100, mode="fast", seed=31)  # 300 texts, 7 batches
    # Wait until a batch is claimed but not yet stored: the worker is encoding it right now.
    wait_for(lambda: count(cluster, Item.job_id == job_id, Item.status == "pending", Item.attempts >= 1) > 0,
             what="a batch in the middle of encoding")
    cluster.procs["embed"].kill()
    cluster.procs["embed"].wait()
    killed = time.monotonic()
    cluster.start("embed")
    wait_surviving_outages(cluster, job_id)
    recovered = time.monotonic() - killed
    result = audit(cluster, job_id)
    report("SIGKILL embed worker mid-batch", recovered, result)
    check(result)
    assert result["reprocessed"] >= 1  # the killed batch really was lost with its worker and done again


def test_flushall_of_the_broker_in_the_middle_of_a_job(cluster):
    job_id = submit(cluster, 100, mode="auto", seed=32)
    wait_for(lambda: count(cluster, Item.job_id == job_id, Item.status == "done") > 0, what="the first predictions")
    redis.Redis.from_url(REDIS_URL).flushdb()  # every queued message of every queue is gone
    flushed = time.monotonic()
    wait_surviving_outages(cluster, job_id)
    recovered = time.monotonic() - flushed
    result = audit(cluster, job_id)
    report("FLUSHALL Redis mid-job", recovered, result)
    check(result)


@pytest.mark.skipif(shutil.which("pg_ctlcluster") is None, reason="needs pg_ctlcluster to restart PostgreSQL")
def test_postgres_restart_in_the_middle_of_a_job(cluster):
    version = sorted(os.listdir("/etc/postgresql"))[0]
    job_id = submit(cluster, 100, mode="auto", seed=33)
    wait_for(lambda: count(cluster, Item.job_id == job_id, Item.status == "done") > 0, what="the first predictions")
    restarted = time.monotonic()
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"],
                   check=True, capture_output=True)
    dispose_engines()
    wait_surviving_outages(cluster, job_id)
    recovered = time.monotonic() - restarted
    result = audit(cluster, job_id)
    report("Postgres restart mid-job", recovered, result)
    check(result)


def test_the_same_job_submitted_twice_with_one_idempotency_key(cluster):
    key = f"batch-{uuid.uuid4()}"
    jobs: list[uuid.UUID] = []
    started = time.monotonic()
    threads = [threading.Thread(target=lambda: jobs.append(submit(cluster, 20, mode="auto", seed=50, key=key)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(jobs) == 2 and jobs[0] == jobs[1]
    wait_surviving_outages(cluster, jobs[0])
    result = audit(cluster, jobs[0])
    report("same idempotency key twice", time.monotonic() - started, result)
    check(result)
    assert result["items"] == 60


@pytest.mark.parametrize("mode", ["429", "500", "hang", "garbage"])
def test_llm_endpoint_misbehaving_for_a_while(cluster, llm_server, mode):
    spell = 3.0
    llm_server.fail_for(mode, spell)
    started = time.monotonic()
    job_id = submit(cluster, 20, mode="auto", seed=40 + len(mode))
    wait_surviving_outages(cluster, job_id)
    # Recovery counts from the end of the spell; items that met the fault finish on what they
    # have (breaker open or answer failed), flagged, so the job may even finish during the spell.
    recovered = max(time.monotonic() - (started + spell), 0.0)
    result = audit(cluster, job_id)
    report(f"LLM {mode} for {spell:.0f}s", recovered, result)
    check(result)
