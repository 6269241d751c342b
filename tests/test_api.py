"""The HTTP API as a caller meets it: `fusionq serve` in its own process, spoken to over loopback HTTP.

The embedded default (SQLite, in-process worker) answers every route; errors are JSON with a code;
API keys guard /v1 when configured, and without one the server refuses to leave loopback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from tests.conftest import make_topic_texts, train_topics

FUSIONQ = str(Path(sys.executable).with_name("fusionq"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`fusionq serve` on a free loopback port, with ``env`` on top of this process's environment."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([FUSIONQ, "serve", "--port", str(self.port), *args], env={**os.environ, **env},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def __enter__(self) -> "Server":
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"fusionq serve exited {self.proc.returncode}: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("fusionq serve did not answer /healthz within 60 s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_bert_path) -> Path:
    home = tmp_path_factory.mktemp("api") / "home"
    train_topics(Settings(home=home), tiny_bert_path)
    return home


@pytest.fixture(scope="module")
def server(home):
    with Server({"FUSIONQ_HOME": str(home), "FUSIONQ_API_MAX_BODY_MB": "1", "HF_HUB_OFFLINE": "1"}) as running:
        yield running


def test_classify_answers_a_small_batch_in_the_response(server):
    texts, labels = make_topic_texts(2, seed=5)
    answer = httpx.post(server.url + "/v1/classify", json={"texts": texts, "classifier": "topics"}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "completed" and [r["position"] for r in body["results"]] == list(range(len(texts)))
    assert all(r["labels"] and abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in body["results"])


def test_a_job_is_accepted_once_per_idempotency_key_and_read_back_in_pages_or_ndjson(server):
    texts, _ = make_topic_texts(3, seed=6)  # 9 texts
    headers = {"Idempotency-Key": "api-test-1"}
    first = httpx.post(server.url + "/v1/jobs", json={"texts": texts, "classifier": "topics"}, headers=headers)
    again = httpx.post(server.url + "/v1/jobs", json={"texts": texts, "classifier": "topics"}, headers=headers)
    assert first.status_code == again.status_code == 202
    job_id = first.json()["job_id"]
    assert again.json()["job_id"] == job_id and first.json()["status_url"] == f"/v1/jobs/{job_id}"
    deadline = time.monotonic() + 60
    while (view := httpx.get(server.url + f"/v1/jobs/{job_id}").json())["progress"]["status"] != "completed":
        assert time.monotonic() < deadline, view
        time.sleep(0.1)
    assert view["progress"]["n_done"] == 9 and view["stats"]["labels"] == ["business", "science", "sports"]
    page = httpx.get(server.url + f"/v1/jobs/{job_id}/results", params={"limit": 4}).json()
    assert (page["n_items"], page["next_offset"], len(page["results"])) == (9, 4, 4)
    last = httpx.get(server.url + f"/v1/jobs/{job_id}/results", params={"offset": 8, "limit": 4}).json()
    assert last["next_offset"] is None and [r["position"] for r in last["results"]] == [8]
    streamed = httpx.get(server.url + f"/v1/jobs/{job_id}/results", headers={"Accept": "application/x-ndjson"})
    assert streamed.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line)["position"] for line in streamed.text.splitlines()] == list(range(9))


@pytest.mark.parametrize("method, path, body, status, code", [
    ("post", "/v1/jobs", {"texts": ["a"], "classifier": "nope"}, 404, "classifier_not_found"),
    ("get", "/v1/jobs/00000000-0000-0000-0000-000000000000", None, 404, "job_not_found"),
    ("get", "/v1/jobs/not-a-uuid", None, 422, "invalid_request"),
    ("post", "/v1/jobs", {"texts": [], "classifier": "topics"}, 422, "invalid_request"),
    ("post", "/v1/jobs", {"texts": ["a"], "classifier": "topics", "mode": "turbo"}, 422, "invalid_request"),
    ("post", "/v1/jobs", {"texts": ["a"], "classifier": "topics", "colour": "red"}, 422, "invalid_request"),
    ("post", "/v1/classify", {"texts": ["a"], "classifier": "topics", "timeout_s": 600}, 422, "invalid_request"),
    ("get", "/v1/nowhere", None, 404, "not_found"),
])
def test_errors_are_json_with_a_code_and_a_message(server, method, path, body, status, code):
    answer = getattr(httpx, method)(server.url + path, **({"json": body} if body is not None else {}))
    assert answer.status_code == status, answer.text
    problem = answer.json()
    assert problem["code"] == code and problem["message"]


def test_a_reused_idempotency_key_for_another_request_is_a_conflict(server):
    headers = {"Idempotency-Key": "api-test-2"}
    assert httpx.post(server.url + "/v1/jobs", json={"texts": ["a", "b"], "classifier": "topics"},
                      headers=headers).status_code == 202
    answer = httpx.post(server.url + "/v1/jobs", json={"texts": ["a"], "classifier": "topics"}, headers=headers)
    assert answer.status_code == 409 and answer.json()["code"] == "idempotency_conflict"


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    huge = {"texts": ["x" * 1000] * 1200, "classifier": "topics"}  # ~1.2 MB, the limit is 1 MB here
    answer = httpx.post(server.url + "/v1/jobs", json=huge)
    assert answer.status_code == 413 and answer.json()["code"] == "body_too_large"


def test_health_readiness_classifiers_metrics_and_openapi(server):
    assert httpx.get(server.url + "/healthz").json() == {"ok": True}
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    listed = httpx.get(server.url + "/v1/classifiers").json()
    assert [(c["name"], c["version"]) for c in listed] == [("topics", 1)]
    metrics = httpx.get(server.url + "/metrics").text
    assert 'fusionq_items{mode="fast",status="done"}' in metrics
    assert "fusionq_submit_to_prediction_seconds_bucket" in metrics
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/results", "/v1/classify", "/v1/classifiers",
            "/healthz", "/readyz"} <= set(spec["paths"])
    assert httpx.get(server.url + "/docs").status_code == 200


def test_api_keys_guard_the_routes_and_never_appear_in_the_output(home):
    env = {"FUSIONQ_HOME": str(home), "FUSIONQ_API_KEYS": "key-one, key-two", "HF_HUB_OFFLINE": "1"}
    with Server(env) as server:
        url = server.url + "/v1/classifiers"
        for headers in ({}, {"Authorization": "Bearer key-three"}, {"X-API-Key": "key-on"}):
            refused = httpx.get(url, headers=headers)
            assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
        assert httpx.get(url, headers={"Authorization": "Bearer key-two"}).status_code == 200
        assert httpx.get(url, headers={"X-API-Key": "key-one"}).status_code == 200
        assert httpx.get(server.url + "/healthz").status_code == 200  # probes need no key
    output = server.proc.stdout.read()
    assert "API keys required" in output and "key-one" not in output and "key-two" not in output


def test_without_a_key_the_server_refuses_to_leave_loopback(home):
    run = subprocess.run([FUSIONQ, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                         env={**os.environ, "FUSIONQ_HOME": str(home)}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "FUSIONQ_API_KEYS" in run.stderr and "Traceback" not in run.stderr
