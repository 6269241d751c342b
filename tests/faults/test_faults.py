"""Faults with real processes: embed, fusion, LLM and maintenance workers, celery beat, Redis,
Postgres and a loopback LLM, all with the shipped lease and sweep settings (15 s claims renewed by
a heartbeat, a sweep every 10 s). Each test breaks something in the middle of a job and checks
that the job completes with exactly one final prediction per item and nothing lost; it reports
how long recovery took (and appends a line to $FUSIONQ_TEST_FAULT_REPORT when set, for bench/faults.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from shared.client import FusionqClient
from shared.db.engine import dispose_engines, session_for, upgrade
from shared.db.models import Item, Job, LlmRequest, Prediction
from shared.errors import JobTimeout
from shared.settings import Settings
from tests.conftest import PG_ADMIN_URL, REDIS_URL, TOPIC_WORDS, make_topic_texts, train_topics
from tests.support.fake_openai import FakeOpenAIServer, keyword_answer
from tests.support.services import postgres, start_redis, stop_redis, wait_for
from workers.launch import start_beat, start_worker, stop_worker

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
DEFAULTS = Settings()  # leases, sweeps, batch sizes and attempts as shipped
# Only the LLM is tuned: a loopback LLM that hangs must not hold a test for the default 30 s timeout.
ENV = {"FUSIONQ_LLM_BATCH_ITEMS": "8", "FUSIONQ_LLM_TIMEOUT": "1", "FUSIONQ_LLM_MAX_RETRIES": "2",
       "FUSIONQ_LLM_BREAKER_FAILURES": "3", "FUSIONQ_LLM_BREAKER_COOLDOWN": "2",
       "FUSIONQ_ESCALATION_TIERS": "local@0.999", "HF_HUB_OFFLINE": "1"}
# The longest a lapsed claim or a lost message can wait for the sweeper with the defaults.
RESEND_WITHIN = DEFAULTS.item_lease_seconds + DEFAULTS.sweep_interval


class Cluster:
    """The worker processes of one box; started, killed and stopped by the tests."""

    def __init__(self, settings: Settings, env: dict[str, str], log_dir) -> None:
        self.settings, self.env, self.log_dir = settings, env, log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, env: dict[str, str] | None = None, *, queue: str | None = None, **options) -> None:
        """Start the worker ``name``, on the queue of that name unless ``queue`` says otherwise."""
        self.procs[name] = start_worker(queue or name, env={**self.env, **(env or {})}, log_dir=self.log_dir, **options)

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
                        llm_max_retries=0, llm_batch_items=8)
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
    again: encoder batches and LLM requests started more than once (``reprocessed``), and items
    whose message was lost and that the sweeper sent again (``lost_message_resends``)."""
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
            "lost_message_resends": sum(i.resends for i in items)}


def report(fault: str, recovered_s: float, result: dict) -> None:
    line = {"fault": fault, "recovered_s": round(recovered_s, 2), **result}
    print(f"\nFAULT {json.dumps(line)}")
    path = os.environ.get("FUSIONQ_TEST_FAULT_REPORT")  # FUSIONQ_TEST_*: the one prefix conftest leaves set
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


def check(result: dict) -> None:
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["failed"] == 0, result


def count(cluster: Cluster, *where) -> int:
    with session_for(cluster.settings.effective_database_url) as session:
        return session.scalar(sa.select(sa.func.count()).select_from(Item).where(*where))


def fault_mid_job(cluster: Cluster, fault: str, seed: int, break_it) -> tuple[dict, float]:
    """Submit 300 texts (mode auto), wait for the first predictions, ``break_it()``, then wait for the
    job; the audit is reported and checked. Returns it and the seconds from the break to completion."""
    job_id = submit(cluster, 100, mode="auto", seed=seed)
    wait_for(lambda: count(cluster, Item.job_id == job_id, Item.status == "done") > 0, what="the first predictions")
    broken = time.monotonic()
    break_it()
    dispose_engines()  # this process's pooled connections may be dead after a restart
    wait_surviving_outages(cluster, job_id)
    recovered = time.monotonic() - broken
    result = audit(cluster, job_id)
    report(fault, recovered, result)
    check(result)
    return result, recovered


def _ids(cluster: Cluster, *where) -> set[int]:
    with session_for(cluster.settings.effective_database_url) as session:
        return set(session.scalars(sa.select(Item.id).where(*where)))


def _in_hand(cluster: Cluster, job_id) -> set[int]:
    """Items an encoder has claimed and not yet stored: it is encoding them right now."""
    return _ids(cluster, Item.job_id == job_id, Item.status == "pending", Item.lease_until.is_not(None))


def _taken_up_again(cluster: Cluster, ids: set[int]) -> bool:
    """Every one of ``ids`` was claimed again (or finished) since its first claim."""
    with session_for(cluster.settings.effective_database_url) as session:
        rows = session.execute(sa.select(Item.status, Item.attempts).where(Item.id.in_(ids))).all()
    return all(status != "pending" or attempts >= 2 for status, attempts in rows)


def test_sigkill_of_the_embed_worker_in_the_middle_of_a_batch(cluster):
    job_id = submit(cluster, 300, mode="fast", seed=31)  # 900 texts, 4 batches
    wait_for(lambda: _in_hand(cluster, job_id), what="a batch in the middle of encoding")
    cluster.procs["embed"].kill()
    cluster.procs["embed"].wait()
    killed = time.monotonic()
    lost_with_it = _in_hand(cluster, job_id)
    cluster.start("embed")  # returns once the replacement is ready
    replaced = time.monotonic()
    wait_for(lambda: _taken_up_again(cluster, lost_with_it), timeout=RESEND_WITHIN + 30,
             what="the killed worker's batch to be claimed again")
    taken_up = time.monotonic() - replaced
    wait_surviving_outages(cluster, job_id)
    result = audit(cluster, job_id)
    result["taken_up_after_replacement_s"] = round(taken_up, 2)
    report("SIGKILL embed worker mid-batch", time.monotonic() - killed, result)
    check(result)
    assert result["reprocessed"] >= 1  # the killed batch really was lost with its worker and done again
    assert taken_up <= 30, f"the killed worker's batch waited {taken_up:.1f}s after the replacement was up"


def test_a_worker_paused_past_its_lease_writes_nothing_when_it_resumes(cluster):
    """SIGSTOP the encoder mid-batch; a second encoder takes the batch over once the claim lapses and
    the job completes; then the first one resumes and finishes its batch: its writes are fenced."""
    job_id = submit(cluster, 300, mode="fast", seed=34)
    wait_for(lambda: _in_hand(cluster, job_id), what="a batch in the middle of encoding")
    paused_proc = cluster.procs["embed"]
    paused_proc.send_signal(signal.SIGSTOP)
    paused = time.monotonic()
    try:
        cluster.start("embed-2", queue="embed")
        wait_surviving_outages(cluster, job_id)  # the other encoder finished the paused one's batch too
        recovered = time.monotonic() - paused
        before = _predictions(cluster, job_id)
    finally:
        paused_proc.send_signal(signal.SIGCONT)
    try:
        time.sleep(5)  # the late writer finishes its batch and tries to write it
        result = audit(cluster, job_id)
        report("SIGSTOP embed worker past its lease, then SIGCONT", recovered, result)
        check(result)
        assert _predictions(cluster, job_id) == before  # nothing overwritten, nothing added
        assert result["reprocessed"] >= 1
    finally:
        stop_worker(cluster.procs.pop("embed-2"))


def _predictions(cluster: Cluster, job_id) -> dict:
    with session_for(cluster.settings.effective_database_url) as session:
        return dict(session.execute(sa.select(Prediction.item_id, Prediction.id).join(Item, Item.id == Prediction.item_id)
                                    .where(Item.job_id == job_id)).tuples().all())


def test_flushall_of_the_broker_in_the_middle_of_a_job(cluster):
    _, recovered = fault_mid_job(cluster, "FLUSHALL Redis mid-job", 32, redis.Redis.from_url(REDIS_URL).flushdb)
    assert recovered <= 60


needs_pg_ctl = pytest.mark.skipif(shutil.which("pg_ctlcluster") is None, reason="needs pg_ctlcluster to stop PostgreSQL")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server to restart Redis")
def test_redis_restarted_in_the_middle_of_a_job(cluster):
    def restart():
        stop_redis()
        try:
            time.sleep(2)
        finally:
            start_redis()

    _, recovered = fault_mid_job(cluster, "Redis restarted mid-job (no persistence)", 35, restart)
    assert recovered <= 90


@needs_pg_ctl
def test_postgres_restart_in_the_middle_of_a_job(cluster):
    fault_mid_job(cluster, "Postgres restart mid-job", 33, lambda: postgres("restart"))


@needs_pg_ctl
def test_postgres_down_at_submit_is_a_clear_error_and_stores_nothing(cluster, tmp_path):
    texts, _ = make_topic_texts(5, seed=36)
    source = tmp_path / "in.csv"
    source.write_text("text\n" + "\n".join(texts) + "\n", encoding="utf-8")
    with session_for(cluster.settings.effective_database_url) as session:
        jobs_before = session.scalar(sa.select(sa.func.count()).select_from(Job))
    dispose_engines()
    postgres("stop")
    try:
        run = subprocess.run([str(Path(sys.executable).with_name("fusionq")), "classify", "--classifier", "topics", "--in", str(source),
                              "--out", str(tmp_path / "out.csv")], env={**os.environ, **cluster.env},
                             capture_output=True, text=True, timeout=120)
    finally:
        postgres("start")
    dispose_engines()
    assert run.returncode == 2, run.stderr
    assert "database" in run.stderr.lower() and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "out.csv").exists()
    with session_for(cluster.settings.effective_database_url) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == jobs_before
    report("Postgres down at submit", 0.0, {"exit_status": run.returncode, "jobs_written": 0})


@needs_pg_ctl
def test_postgres_down_while_the_sweeper_has_lost_work_to_resend(cluster):
    def flush_then_outage():
        redis.Redis.from_url(REDIS_URL).flushdb()  # the sweeper has work to re-send...
        postgres("stop")  # ...and cannot reach the database for its next sweeps
        time.sleep(DEFAULTS.sweep_interval + 2)
        postgres("start")

    fault_mid_job(cluster, "Postgres down during sweeps (after a flush)", 37, flush_then_outage)


def test_the_sweeper_killed_again_and_again_mid_job(cluster):
    """SIGKILL the maintenance worker at random moments while sweeps have lost work to re-send: a sweep
    killed before its commit is rolled back; one killed after its commit but before its sends left
    work queued without a message, which the next sweep finds lost again."""
    rng = random.Random(38)

    def flush_then_kills():
        redis.Redis.from_url(REDIS_URL).flushdb()
        for _ in range(4):
            time.sleep(rng.uniform(1.0, DEFAULTS.sweep_interval))
            cluster.procs["maintenance"].kill()
            cluster.procs["maintenance"].wait()
            cluster.start("maintenance")

    fault_mid_job(cluster, "sweeper SIGKILLed 4 times mid-job (after a flush)", 38, flush_then_kills)


def test_two_beat_processes_at_once_keep_the_sweep_correct(cluster):
    cluster.procs["beat-2"] = start_beat(env=cluster.env, log_dir=cluster.log_dir)
    try:
        result, _ = fault_mid_job(cluster, "two beat processes, FLUSHALL mid-job", 39,
                                  redis.Redis.from_url(REDIS_URL).flushdb)
        assert result["lost_message_resends"] <= result["items"]  # each lost message re-sent once, not once per beat
    finally:
        stop_worker(cluster.procs.pop("beat-2"))


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
