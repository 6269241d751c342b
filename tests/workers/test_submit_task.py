"""`fusionq.submit` as another service uses it: a JSON request sent by task name, the job id back on
``reply_to``, and the completion notice as a task and as a webhook POST to a real loopback server.

Runs on the embedded broker (the in-process worker consumes every queue, its sweeps send the notices),
reading the callers' queue with kombu as a Celery client in another service would.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kombu import Connection

from shared.client import FusionqClient
from shared.dispatch import TaskName
from tests.conftest import make_topic_texts, train_topics


class _Hook(BaseHTTPRequestHandler):
    received: queue.Queue

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.put(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    handler = type("Hook", (_Hook,), {"received": queue.Queue()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler.received
    server.shutdown()


def _replies(conn: Connection, name: str, timeout: float) -> list:
    """Messages the worker sent to the caller's own queue, as (task name, argument)."""
    box, got, deadline = conn.SimpleQueue(name), [], time.monotonic() + timeout
    while time.monotonic() < deadline and not got:
        while box.qsize():
            message = box.get(timeout=1)
            got.append((message.headers["task"], message.payload[0][0]))
            message.ack()
        time.sleep(0.05)
    return got


def test_a_job_sent_by_task_name_is_accepted_answered_and_notified(sqlite_settings, tiny_bert_path, webhook):
    url, posted = webhook
    train_topics(sqlite_settings, tiny_bert_path)
    texts, _ = make_topic_texts(4, seed=21)
    with FusionqClient(sqlite_settings) as client, Connection("memory://") as conn:
        app = client.dispatcher.app  # starts the embedded worker; any Celery client on the broker does the same
        conn.SimpleQueue("caller").clear()
        app.send_task(str(TaskName.SUBMIT), queue="submit", args=[{
            "texts": texts, "classifier": "topics", "mode": "fast", "idempotency_key": "from-another-service",
            "reply_to": {"task": "caller.accepted", "queue": "caller"},
            "on_complete": {"task": "caller.done", "queue": "caller"}, "webhook_url": url}])
        [(task, accepted)] = _replies(conn, "caller", timeout=30)
        assert task == "caller.accepted" and accepted["status"] == "accepted"
        assert accepted["idempotency_key"] == "from-another-service"
        progress = client.wait(accepted["job_id"], timeout=60)
        assert (progress.status, progress.n_done) == ("completed", 12)
        # the next sweep (every FUSIONQ_SWEEP_INTERVAL, 10 s) sends the notices, once
        [(task, done)] = _replies(conn, "caller", timeout=30)
        assert task == "caller.done" and done["job_id"] == accepted["job_id"] and done["n_done"] == 12
        hooked = posted.get(timeout=30)
        assert hooked == done
        assert _replies(conn, "caller", timeout=12) == []  # not twice
        assert posted.empty()


def test_a_bad_request_is_refused_on_reply_to_and_stores_nothing(sqlite_settings, tiny_bert_path):
    train_topics(sqlite_settings, tiny_bert_path)
    with FusionqClient(sqlite_settings) as client, Connection("memory://") as conn:
        app = client.dispatcher.app
        conn.SimpleQueue("caller").clear()
        for request in ({"texts": ["a"], "classifier": "unknown-one"}, {"texts": [], "classifier": "topics"},
                        {"texts": ["a"], "classifier": "topics", "mode": "turbo"}):
            app.send_task(str(TaskName.SUBMIT), queue="submit",
                          args=[{**request, "reply_to": {"task": "caller.accepted", "queue": "caller"}}])
            [(task, answer)] = _replies(conn, "caller", timeout=30)
            assert answer["status"] == "refused" and answer["job_id"] is None and answer["error"]
        import sqlalchemy as sa

        from shared.db.engine import session_for
        from shared.db.models import Job

        with session_for(sqlite_settings.effective_database_url) as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0
