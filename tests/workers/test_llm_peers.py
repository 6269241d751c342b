"""The scorer against an OpenAI-compatible server we did not write: `transformers serve` (extra
`transformers[serving]`), serving a tiny random LLaMA from disk, driven through the real `llm_api`
stage of the embedded worker.

`transformers serve` ignores `logprobs`, so the scorer must notice their absence and fall back to
asking for a JSON vote; a random model cannot write one, so each answer must end as a recorded,
explained failure (never a default class, never a crash) and the job must still complete. What
this proves is the protocol: requests it accepts, answers we read. The other peer, llama.cpp's
server, returns logprobs: tests/workers/test_llm_peer_llamacpp.py (needs the llamacpp extra).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from shared.client import FusionqClient
from shared.llm.prompts import LabelSet
from shared.settings import Settings
from tests.conftest import _save_tiny_decoder
from tests.support.services import http_server
from tests.test_api import free_port

pytest.importorskip("openai", reason="transformers serve needs pip install 'transformers[serving]'")


@pytest.fixture(scope="module")
def transformers_server(tmp_path_factory):
    model = _save_tiny_decoder(tmp_path_factory.mktemp("tiny-llama-served"), "llama", causal_lm=True)
    command = shutil.which("transformers", path=str(Path(sys.executable).parent))
    port = free_port()
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with http_server([command, "serve", model, "--port", str(port)], port=port, ready_path="/health",
                     what="transformers serve", log=log) as url:
        yield model, url, log


def test_an_llm_only_job_through_transformers_serve_completes_with_explained_answers(tmp_path, transformers_server):
    model, url, log = transformers_server
    settings = Settings(home=tmp_path / "home", llm_api=f"openai:{model}@{url}/v1", llm_max_retries=0)
    texts = ["The striker scored twice in the final.", "Shares rose after the merger.", "Physicists found a new molecule."]
    with FusionqClient(settings) as client:
        job_id = client.submit_llm(texts, LabelSet(names=("sports", "business", "science")), source="api")
        progress = client.wait(job_id, timeout=180)
        results = client.results(job_id)
    assert progress.status == "completed" and progress.n_done + progress.n_failed == 3
    for result in results:
        if result.status == "done":  # a random model may, rarely, write a readable vote
            assert abs(sum(result.probabilities.values()) - 1) < 1e-6 and result.signals
        else:
            assert result.status == "failed" and "answer" in result.error, result.error
    served = log.read_text()
    assert served.count('"POST /v1/chat/completions HTTP/1.1" 200') >= 3  # it accepted every request we sent
