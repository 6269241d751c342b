"""The LLM scorer against llama.cpp's OpenAI-compatible server (PyPI ``llama-cpp-python[server]``,
compiled from source: ``pip install -e '.[llamacpp]'``), serving a tiny LLaMA written as GGUF whose
first answer token is known (keys A-D at logits 6, 5, 4, 3; tests.support.gguf_llama).

What it records: whether chat completions carry ``logprobs`` / ``top_logprobs`` (the scorer's
fast path) and how long a one-token request takes, then how an LLM-only job of ``--n`` texts
ends when driven through the real ``llm_api`` stage of the embedded worker (done items, failures
and their reasons, and how far the stored probabilities are from the softmax of the known logits). The same check runs in CI's test suite only where the extra is installed
(tests/workers/test_llm_peer_llamacpp.py, marker ``llamacpp``).

    python bench/llm_peers.py --n 20        # writes bench/out/llm_peers.json
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, write_result  # noqa: E402
from shared.client import FusionqClient  # noqa: E402
from shared.demo import sample_dir  # noqa: E402
from shared.llm.prompts import LabelSet, single_label_messages  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.textio import read_texts  # noqa: E402
from tests.support.gguf_llama import write_tiny_llama_gguf  # noqa: E402
from tests.support.services import http_server  # noqa: E402
from tests.test_api import free_port  # noqa: E402

MODEL_NAME = "tiny-llama"
ANSWER_LOGITS = {"A": 6.0, "B": 5.0, "C": 4.0, "D": 3.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="texts in the LLM-only job (from the demo sample)")
    parser.add_argument("--out", default="bench/out/llm_peers.json")
    args = parser.parse_args()
    if args.n < 1:
        parser.error("--n must be at least 1")  # exits 2
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("llama.cpp's server is not installed: pip install -e '.[llamacpp]' (compiles from source)")

    labels = LabelSet(("World", "Sports", "Business", "Sci/Tech"))
    texts = read_texts(sample_dir() / "test.csv")[: args.n]
    with tempfile.TemporaryDirectory(prefix="fusionq-peers-") as scratch:
        scratch = Path(scratch)
        model = write_tiny_llama_gguf(scratch / "tiny-llama.gguf", answer_logits=ANSWER_LOGITS)
        port = free_port()
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL_NAME,
                   "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
        with http_server(command, port=port, ready_path="/v1/models", what="llama.cpp server",
                         log=scratch / "server.log") as url:
            latencies, top_sizes = [], []
            for text in texts:
                body = {"model": MODEL_NAME, "messages": single_label_messages(labels, text), "max_tokens": 1,
                        "temperature": 0, "logprobs": True, "top_logprobs": 20}
                started = time.perf_counter()
                reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()
                latencies.append((time.perf_counter() - started) * 1000)
                content = (reply["choices"][0].get("logprobs") or {}).get("content") or [{}]
                top_sizes.append(len(content[0].get("top_logprobs") or []))
            settings = Settings(home=scratch / "home", llm_api=f"openai:{MODEL_NAME}@{url}/v1", llm_max_retries=0)
            started = time.perf_counter()
            with FusionqClient(settings) as client:
                job_id = client.submit_llm(texts, labels, source="api")
                progress = client.wait(job_id, timeout=600)
                results = client.results(job_id)
            job_seconds = time.perf_counter() - started
    logits = np.array(list(ANSWER_LOGITS.values()))
    expected = np.exp(logits) / np.exp(logits).sum()
    errors = [float(np.abs(np.array([r.probabilities[n] for n in labels.names]) - expected).max())
              for r in results if r.status == "done"]
    reasons = collections.Counter((r.error or "").split(" among")[0][:60] for r in results if r.status == "failed")
    write_result({
        **machine(), "server": f"llama-cpp-python {llama_cpp.__version__} (llama_cpp.server), tiny LLaMA GGUF",
        "requests_with_top_logprobs": sum(1 for n in top_sizes if n > 0), "requests": len(top_sizes),
        "top_logprobs_per_answer": sorted(set(top_sizes)),
        "one_token_request_ms_p50": round(statistics.median(latencies), 1),
        "job": {"status": progress.status, "n": len(texts), "done": progress.n_done, "failed": progress.n_failed,
                "seconds": round(job_seconds, 2), "failure_reasons": dict(reasons),
                "max_abs_error_vs_known_probabilities": round(max(errors), 4) if errors else None},
    }, args.out)


if __name__ == "__main__":
    main()
