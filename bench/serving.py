"""Cost-aware serving: a 10,000-text job in auto mode vs fast mode, and worker memory over a
100,000-text job. Real worker processes (embed, fusion, llm_local, maintenance + beat), Redis,
Postgres, MiniLM, and an OpenAI-compatible LLM on loopback (tests/support/fake_openai.py: it
picks the class whose name occurs in the text, so its answers are plumbing, not accuracy).

    python bench/serving.py --n 10000 --memory-n 100000

Writes bench/out/serving.json, bench/out/serving_memory.csv and bench/out/serving_memory.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.client import FusionqClient  # noqa: E402
from shared.demo import stratified_sample  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.textio import read_labelled, read_texts  # noqa: E402
from shared.service.training import train_classifier  # noqa: E402
from tests.support.fake_openai import FakeOpenAIServer  # noqa: E402
from bench.common import REDIS, MemorySampler, scratch_services  # noqa: E402
from workers.launch import start_beat, start_worker, stop_worker  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def run_job(client: FusionqClient, texts: list[str], mode: str, llm: FakeOpenAIServer, **options) -> dict:
    calls_before = len(llm.requests)
    started = time.perf_counter()
    job = client.submit(texts, "bench", mode, **options)
    client.wait(job, timeout=7200, poll=1.0)
    seconds = time.perf_counter() - started
    stats = client.stats(job)
    return {"mode": mode, "texts": len(texts), "seconds": round(seconds, 1), "texts_per_s": round(len(texts) / seconds, 1),
            "escalated": stats.n_escalated, "share_escalated": round(stats.n_escalated / len(texts), 4),
            "llm_calls": len(llm.requests) - calls_before, "llm_cost_usd": stats.llm_cost_usd,
            "flags": stats.flags, "n_done": stats.n_done, "n_failed": stats.n_failed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ag_news/test.csv")
    parser.add_argument("--train", default="../shared/data/ag_news/train.csv")
    parser.add_argument("--n", type=int, default=10_000, help="texts of the auto and fast jobs")
    parser.add_argument("--memory-n", type=int, default=100_000, help="texts of the memory job (0: skip)")
    parser.add_argument("--escalate-share", type=float, default=0.2, help="the classifier's escalation target")
    parser.add_argument("--out-dir", default="bench/out")
    args = parser.parse_args()

    pool = read_texts(args.data)
    texts = [pool[i % len(pool)] for i in range(args.n)]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    procs: dict[str, object] = {}
    result: dict = {"date": time.strftime("%Y-%m-%d"), "model": MODEL, "data": args.data,
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    with scratch_services() as (database_url, tmp), FakeOpenAIServer() as llm:
        spec = f"openai:bench-llm@{llm.base_url}"
        settings = Settings(home=tmp, database_url=database_url, broker_url=REDIS, artifact_dir=tmp / "artifacts",
                            llm_local=spec)
        env = {"FUSIONQ_DATABASE_URL": settings.database_url, "FUSIONQ_BROKER_URL": REDIS, "FUSIONQ_LLM_LOCAL": spec,
               "FUSIONQ_ARTIFACT_DIR": str(settings.artifact_dir), "FUSIONQ_SWEEP_INTERVAL": "10", "HF_HUB_OFFLINE": "1"}
        try:
            print("training a classifier with the loopback LLM as its local source (not timed) ...", flush=True)
            from shared.fusion.escalation import EscalationTarget

            train = stratified_sample(read_labelled(args.train), 500)
            trained = train_classifier(settings=settings, name="bench", data=train, encoders=[MODEL], layers=(-1,),
                                       fusion="concat", llms=["local"], show_progress=False,
                                       escalation=EscalationTarget(share=args.escalate_share))
            result["escalation_threshold"] = trained.classifier.metrics["serving"]["escalation_threshold"]
            logs = tmp / "logs"
            procs["embed"] = start_worker("embed", env=env, log_dir=logs)
            procs["fusion"] = start_worker("fusion", env={**env, "FUSIONQ_TORCH_THREADS": "1"}, log_dir=logs)
            procs["llm_local"] = start_worker("llm_local", env=env, log_dir=logs, pool="threads", concurrency=8)
            procs["maintenance"] = start_worker("maintenance", env=env, log_dir=logs)
            procs["beat"] = start_beat(env=env, log_dir=logs)
            with FusionqClient(settings) as client:
                client.wait(client.submit(texts[:64], "bench", "auto"), timeout=300)  # models load
                for mode in ("fast", "auto"):
                    print(f"{mode} job of {len(texts)} texts ...", flush=True)
                    result[mode] = run_job(client, texts, mode, llm)
                    print(json.dumps(result[mode]), flush=True)
                result["auto_time_vs_fast"] = round(result["auto"]["seconds"] / result["fast"]["seconds"], 3)
                if args.memory_n:
                    big = [pool[i % len(pool)] for i in range(args.memory_n)]
                    sampler = MemorySampler({k: v for k, v in procs.items() if k != "beat"})
                    sampler.start()
                    print(f"memory job of {len(big)} texts (auto) ...", flush=True)
                    result["memory_job"] = run_job(client, big, "auto", llm)
                    sampler.stop_event.set()
                    sampler.join()
                    result["memory_mb"] = _memory_summary(sampler.rows, out_dir)
        finally:
            for proc in procs.values():
                stop_worker(proc)
    (out_dir / "serving.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _memory_summary(rows: list[dict], out_dir: Path) -> dict:
    """Per worker: RSS at 10 % of the job (after warm-up), at the end, and the peak; CSV + PNG."""
    names = [k for k in rows[0] if k != "t_s"]
    with (out_dir / "serving_memory.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["t_s", *names])
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        ax.plot([r["t_s"] for r in rows], [r[name] for r in rows], label=name)
    ax.set_xlabel("seconds into the job")
    ax.set_ylabel("RSS (MB)")
    ax.set_title("worker memory over one large job")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "serving_memory.png", dpi=120)
    early = rows[max(len(rows) // 10, 1) - 1]
    return {name: {"at_10pct": early[name], "end": rows[-1][name], "peak": max(r[name] for r in rows)} for name in names}


if __name__ == "__main__":
    sys.exit(main())
