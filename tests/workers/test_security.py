"""Security basics with a real worker: a pickled message is never unpickled, and secrets (API
key, database password) never reach a log."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from kombu import Connection

from shared.client import FusionqClient
from shared.db.engine import upgrade
from shared.llm.prompts import LabelSet
from shared.settings import Settings
from shared.dispatch import TaskName
from tests.support.fake_openai import FakeOpenAIServer
from workers.launch import start_worker, stop_worker

pytestmark = pytest.mark.e2e


class TouchOnUnpickle:
    """Unpickling this creates ``path``: the proof that a worker executed pickle content."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_pickled_task_message_is_refused_and_never_unpickled(tmp_path, postgres_url, redis_url):
    upgrade(postgres_url)
    env = {"FUSIONQ_DATABASE_URL": postgres_url, "FUSIONQ_BROKER_URL": redis_url, "HF_HUB_OFFLINE": "1"}
    worker = start_worker("fusion", env=env, log_dir=tmp_path / "logs")
    marker = tmp_path / "unpickled"
    try:
        task_id = str(uuid.uuid4())
        with Connection(redis_url) as conn:
            conn.Producer().publish(
                ((TouchOnUnpickle(str(marker)),), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}),
                exchange="", routing_key="fusion", serializer="pickle",
                headers={"lang": "py", "task": str(TaskName.FUSE), "id": task_id, "root_id": task_id, "parent_id": None,
                         "group": None, "retries": 0, "eta": None, "expires": None, "argsrepr": "", "kwargsrepr": ""})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "Refusing to deserialize" not in worker.log_path.read_text():
            time.sleep(0.2)
        log = worker.log_path.read_text()
    finally:
        stop_worker(worker)
    assert "Refusing to deserialize untrusted content of type pickle" in log
    assert not marker.exists() and f"{str(TaskName.FUSE)}[{task_id}] received" not in log


def test_secrets_never_reach_the_logs(tmp_path, postgres_url, redis_url):
    api_key = f"sk-test-{uuid.uuid4().hex}"
    db_password = f"pw{uuid.uuid4().hex[:12]}"
    # Trust auth ignores the password, so the URL works and still carries a secret to leak.
    database_url = postgres_url.replace("postgres@", f"postgres:{db_password}@")
    assert db_password in database_url
    upgrade(database_url)
    with FakeOpenAIServer() as llm:
        llm.set_script(["500", "500", "garbage"])  # errors get logged: they must not carry the key
        env = {"FUSIONQ_DATABASE_URL": database_url, "FUSIONQ_BROKER_URL": redis_url, "HF_HUB_OFFLINE": "1",
               "FUSIONQ_LLM_API": f"openai:api-model@{llm.base_url}", "FUSIONQ_LLM_API_KEY": api_key,
               "FUSIONQ_LLM_MAX_RETRIES": "1"}
        settings = Settings(home=tmp_path / "home", database_url=database_url, broker_url=redis_url,
                            llm_api=env["FUSIONQ_LLM_API"], llm_api_key=api_key)
        assert api_key not in repr(settings) and api_key not in str(settings.model_dump())
        workers = [start_worker(q, env=env, log_dir=tmp_path / "logs") for q in ("llm_api", "fusion")]
        try:
            with FusionqClient(settings) as client:
                job = client.submit_llm(["the striker scored", "shares fell", "a telescope"],
                                        LabelSet(("sports", "business", "science")), source="api")
                client.wait(job, timeout=120)
                results = client.results(job)
        finally:
            for worker in workers:
                stop_worker(worker)
        sent = [r for r in llm.requests if r["path"].endswith("/chat/completions")]
    assert sent, "the LLM was never called"
    logs = "\n".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    # The script played out: two 500s (the first text, retried once), a 200 that is not JSON (the second
    # text), then a good answer (the third); four calls in all.
    assert [r["mode"] for r in sent] == ["500", "500", "garbage", "ok"]
    assert sorted(r.status for r in results) == ["done", "failed", "failed"]
    errors = sorted(r.error for r in results if r.error)
    scorer = f"api-model@{llm.base_url}/api-model"  # the provider (its spec name) and the model
    url = f"{llm.base_url}/chat/completions"
    assert errors == [f"{scorer}: {url} answered 200 with a body that is not JSON: 'this is not json {{'",
                      f"{scorer}: {url} failed with 500: The server had an error"]
    # The worker logged each failing call, with its URL...
    failing_call = f'HTTP Request: POST {url} "HTTP/1.0 500 Internal Server Error"'
    assert logs.count(failing_call) == 2
    assert api_key not in logs and db_password not in logs  # ...without the secrets
    assert all(api_key not in e and db_password not in e for e in errors)  # nor do the stored errors carry them
