"""The HTTP API's cost: a one-text job through HTTP against the Python client, and jobs/s accepted
by ``POST /v1/jobs`` with 1, 8 and 32 concurrent callers.

    HF_HUB_OFFLINE=1 python bench/http_api.py --n 200

Real Redis and Postgres on 127.0.0.1 (a scratch database, Redis DB 12), `embed` and `fusion`
worker processes as the README starts them, `fusionq serve` in its own process, callers on
loopback (httpx). The one-text figures alternate client and HTTP jobs so drift hits both alike;
both are told the job finished by LISTEN/NOTIFY (``POST /v1/classify`` through the API's NoticeHub).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.common import REDIS, machine, scratch_services, write_result  # noqa: E402
from shared.client import FusionqClient  # noqa: E402
from shared.demo import sample_dir  # noqa: E402
from shared.service.training import train_classifier  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.textio import read_labelled, read_texts  # noqa: E402
from workers.launch import start_worker, stop_worker  # noqa: E402


def quantiles(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 1), "p99": round(ordered[int(0.99 * (len(ordered) - 1))], 1)}


def accepted_per_second(url: str, callers: int, seconds: float, text: str) -> float:
    """Jobs accepted per second by POST /v1/jobs with ``callers`` threads posting back to back."""
    stop, counts = time.monotonic() + seconds, [0] * callers

    def post(slot: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.monotonic() < stop:
                answer = http.post("/v1/jobs", json={"texts": [text], "classifier": "bench"})
                if answer.status_code == 202:
                    counts[slot] += 1

    threads = [threading.Thread(target=post, args=(n,)) for n in range(callers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return round(sum(counts) / (time.monotonic() - started), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="one-text jobs per path")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--out", default="bench/out/http_api.json")
    args = parser.parse_args()
    result = {**machine(), "one_text_jobs": args.n}
    print(f"CPU: {result['cpu']}", file=sys.stderr, flush=True)
    texts = read_texts(sample_dir() / "test.csv")
    with scratch_services("fusionq-http-") as (url, tmp):
        settings = Settings(home=tmp, database_url=url, broker_url=REDIS, artifact_dir=tmp / "artifacts")
        train_classifier(settings=settings, name="bench", data=read_labelled(sample_dir() / "train.csv"),
                         encoders=["sentence-transformers/all-MiniLM-L6-v2"], layers=(-1,), fusion="concat",
                         show_progress=False)
        env = {"FUSIONQ_DATABASE_URL": url, "FUSIONQ_BROKER_URL": REDIS, "FUSIONQ_ARTIFACT_DIR": str(tmp / "artifacts"),
               "HF_HUB_OFFLINE": "1"}
        procs = {"embed": start_worker("embed", env=env, log_dir=tmp / "logs"),
                 "fusion": start_worker("fusion", env={**env, "FUSIONQ_TORCH_THREADS": "1"}, log_dir=tmp / "logs")}
        port = 18080
        server = subprocess.Popen([str(Path(sys.executable).with_name("fusionq")), "serve", "--port", str(port)],
                                  env={**os.environ, **env}, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, timeout=60) as http, FusionqClient(settings) as client:
                for _ in range(600):
                    try:
                        if http.get("/healthz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.1)
                client.wait(client.submit(texts[:32], "bench"), timeout=300)  # models load in the workers
                http.post("/v1/classify", json={"texts": texts[:1], "classifier": "bench"})
                via_client, via_http = [], []
                for n in range(args.n):
                    text = texts[n % len(texts)]
                    started = time.perf_counter()
                    client.wait(client.submit([text], "bench"), timeout=60)
                    via_client.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    answer = http.post("/v1/classify", json={"texts": [text], "classifier": "bench"})
                    via_http.append((time.perf_counter() - started) * 1000)
                    assert answer.status_code == 200, answer.text
            result["client_submit_to_wait_ms"] = quantiles(via_client)
            result["http_classify_ms"] = quantiles(via_http)
            result["http_overhead_ms"] = {k: round(result["http_classify_ms"][k] - result["client_submit_to_wait_ms"][k], 1)
                                          for k in ("p50", "p99")}
            result["jobs_accepted_per_s"] = {str(c): accepted_per_second(base, c, args.seconds, texts[0])
                                             for c in (1, 8, 32)}
        finally:
            server.terminate()
            server.wait(timeout=30)
            for proc in procs.values():
                stop_worker(proc)
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
