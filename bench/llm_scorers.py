"""LLM scorer costs: the hf backend with and without shared-prefix reuse, and the overhead the
OpenAI-compatible scorer adds per call on top of a loopback server, at several concurrencies.

    python bench/llm_scorers.py            # writes bench/out/llm_scorers.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.llm.hf import HFScorer  # noqa: E402
from shared.llm.openai_compat import OpenAICompatScorer  # noqa: E402
from shared.llm.prompts import LabelSet, single_label_messages  # noqa: E402
from shared.demo import sample_dir  # noqa: E402
from shared.textio import read_labelled  # noqa: E402
from tests.conftest import _train_bpe_tokenizer  # noqa: E402
from tests.support.fake_openai import FakeOpenAIServer  # noqa: E402

LABELS = LabelSet(("sports", "business", "science", "health", "entertainment"),
                  descriptions=("games, athletes, leagues", "companies, markets, money", "research and discoveries",
                                "medicine, fitness, disease", "film, music, celebrities"))


def tiny_llama(path: Path) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _train_bpe_tokenizer(path)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(path)
    return str(path)


def bench_hf(texts: list[str]) -> dict:
    scorer = HFScorer(tiny_llama(Path(tempfile.mkdtemp())), batch_size=8)
    scorer.score(texts[:8], LABELS)  # warm-up
    out = {"model": "random LLaMA, 4 layers, hidden 256 (CPU)", "texts": len(texts)}
    for reuse in (True, False):
        started = time.perf_counter()
        scorer.score(texts, LABELS, reuse_prefix=reuse)
        total = time.perf_counter() - started
        single = []
        for text in texts[:30]:
            t0 = time.perf_counter()
            scorer.score([text], LABELS, reuse_prefix=reuse)
            single.append((time.perf_counter() - t0) * 1000)
        out["with_prefix_reuse" if reuse else "without_prefix_reuse"] = {
            "texts_per_s": round(len(texts) / total, 1),
            "one_text_ms_p50": round(float(np.percentile(single, 50)), 1),
            "one_text_ms_p90": round(float(np.percentile(single, 90)), 1),
            "one_text_ms_p99": round(float(np.percentile(single, 99)), 1),
        }
    prefix, _ = scorer._split(single_label_messages(LABELS, "\u241fTEXT\u241f"))
    out["prefix_tokens"] = len(prefix)
    return out


def bench_openai(texts: list[str], calls: int) -> list[dict]:
    rows = []
    with FakeOpenAIServer() as server:
        scorer = OpenAICompatScorer(base_url=server.base_url, model="fake", max_retries=0,
                                    http_client=httpx.Client(limits=httpx.Limits(max_connections=64)))
        raw = httpx.Client(limits=httpx.Limits(max_connections=64))
        body = {"model": "fake", "messages": single_label_messages(LABELS, texts[0]), "max_tokens": 1,
                "temperature": 0, "logprobs": True, "top_logprobs": 20}

        def raw_call(_):
            t0 = time.perf_counter()
            raw.post(server.base_url + "/chat/completions", json=body).raise_for_status()
            return (time.perf_counter() - t0) * 1000

        def scorer_call(i):
            t0 = time.perf_counter()
            score = scorer.score_one(texts[i % len(texts)], LABELS, multi_label=False)
            assert score.method == "logprobs", score.error
            return (time.perf_counter() - t0) * 1000

        for concurrency in (1, 8, 32):
            result = {"concurrency": concurrency}
            for name, fn in (("raw_http", raw_call), ("scorer", scorer_call)):
                with ThreadPoolExecutor(concurrency) as pool:
                    list(pool.map(fn, range(min(calls, 50))))  # warm-up
                    started = time.perf_counter()
                    latencies = list(pool.map(fn, range(calls)))
                    wall = time.perf_counter() - started
                result[name] = {"calls_per_s": round(calls / wall, 1),
                                "ms_p50": round(statistics.median(latencies), 2),
                                "ms_p90": round(float(np.percentile(latencies, 90)), 2)}
            result["overhead_ms_p50"] = round(result["scorer"]["ms_p50"] - result["raw_http"]["ms_p50"], 2)
            rows.append(result)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--out", default="bench/out/llm_scorers.json")
    args = parser.parse_args()
    texts = read_labelled(sample_dir() / "train.csv").texts[: args.texts]
    result = {"date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPython {platform.python_version()}",
              "hf": bench_hf(texts), "openai_loopback": bench_openai(texts, args.calls)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
