"""The scorer against llama.cpp's OpenAI-compatible server (PyPI ``llama-cpp-python[server]``,
compiled from source here: ~8 minutes on two cores), serving a tiny random LLaMA written as GGUF
(tests.support.gguf_llama), driven through the real ``llm_api`` stage of the embedded worker.

Unlike `transformers serve`, llama.cpp returns ``logprobs`` in chat completions: the scorer must
read class probabilities from them, never fall back to the JSON vote. The model's first answer
token is built to be known (answer keys A, B, C at logits 6, 5, 4; every other token far below),
so each text's probabilities must come out as the softmax of those logits: only a scorer that
read the logprobs can produce them (a vote gives one class, a default gives nothing).

Marked ``llamacpp`` and skipped where the server is not installed: the build is too slow for every
CI run. Install with ``pip install -e '.[llamacpp]'``; ``bench/llm_peers.py`` runs the same check
and records what the server returned (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import sys

import httpx
import numpy as np
import pytest

from shared.client import FusionqClient
from shared.llm.prompts import LabelSet
from shared.settings import Settings
from tests.support.services import http_server
from tests.test_api import free_port

pytest.importorskip("llama_cpp.server", reason="llama.cpp's server needs pip install -e '.[llamacpp]' (a source build)")
pytest.importorskip("gguf", reason="writing the tiny model needs pip install -e '.[llamacpp]'")

pytestmark = pytest.mark.llamacpp

MODEL_NAME = "tiny-llama"
ANSWER_LOGITS = {"A": 6.0, "B": 5.0, "C": 4.0}


@pytest.fixture(scope="module")
def llamacpp_server(tmp_path_factory):
    from tests.support.gguf_llama import write_tiny_llama_gguf

    model = write_tiny_llama_gguf(tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.gguf", answer_logits=ANSWER_LOGITS)
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL_NAME,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    with http_server(command, port=port, ready_path="/v1/models", what="llama.cpp server",
                     log=tmp_path_factory.mktemp("llamacpp-log") / "server.log") as url:
        yield url


def test_llamacpp_chat_completions_carry_top_logprobs(llamacpp_server):
    """The protocol fact the scorer relies on, checked on the wire."""
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Answer with one letter: A or B?"}],
            "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 20}
    reply = httpx.post(llamacpp_server + "/v1/chat/completions", json=body, timeout=60).json()
    top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    # llama-cpp-python keys the top list by token text, so tokens decoding alike (byte tokens) merge:
    # up to 20, not always 20.
    assert 0 < len(top) <= 20 and all(isinstance(t["token"], str) and t["logprob"] <= 0 for t in top)
    assert [t["token"] for t in top[:3]] == ["A", "B", "C"]


def test_an_llm_only_job_through_llamacpp_reads_the_logprobs(tmp_path, llamacpp_server):
    settings = Settings(home=tmp_path / "home", llm_api=f"openai:{MODEL_NAME}@{llamacpp_server}/v1", llm_max_retries=0)
    texts = ["The striker scored twice in the final.", "Shares rose after the merger.", "Physicists found a new molecule.",
             "The coach praised the referee.", "Investors cheered the profit.", "The telescope saw a new orbit."]
    with FusionqClient(settings) as client:
        job_id = client.submit_llm(texts, LabelSet(names=("sports", "business", "science")), source="api")
        progress = client.wait(job_id, timeout=300)
        results = client.results(job_id)
    assert progress.status == "completed" and progress.n_done == len(texts), [r.error for r in results]
    logits = np.array(list(ANSWER_LOGITS.values()))
    expected = np.exp(logits) / np.exp(logits).sum()  # A, B, C are the keys of sports, business, science
    for result in results:
        got = np.array([result.probabilities[name] for name in ("sports", "business", "science")])
        assert np.allclose(got, expected, atol=0.01), (got, expected)
