"""Cost per item as jobs grow: texts/s and worker memory for 1k, 10k and 100k-item fast jobs.

    HF_HUB_OFFLINE=1 python bench/job_scaling.py --sizes 1000,10000,100000

Real Redis and Postgres on 127.0.0.1, separate `embed` and `fusion` worker processes as the
README starts them; texts are AG News (train then test, repeated to reach the size). For each job:
wall time from submit to `wait` returning, texts/s, and each worker's resident memory before and
after, sampled every 2 s during the job (peak).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, write_result  # noqa: E402
from shared.client import FusionqClient  # noqa: E402
from shared.db.engine import dispose_engines, upgrade  # noqa: E402
from shared.demo import stratified_sample  # noqa: E402
from shared.service.training import train_classifier  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.textio import read_labelled, read_texts  # noqa: E402
from workers.launch import start_worker, stop_worker  # noqa: E402

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379/12"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data/ag_news")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--out", default="bench/out/job_scaling.json")
    args = parser.parse_args()
    folder = Path(args.data_dir)
    pool = read_texts(folder / "train.csv") + read_texts(folder / "test.csv")
    db_name = f"fusionq_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{db_name}"'))
    tmp = Path(tempfile.mkdtemp(prefix="fusionq-scaling-"))
    settings = Settings(home=tmp, database_url=PG_ADMIN.rsplit("/", 1)[0] + f"/{db_name}", broker_url=REDIS,
                        artifact_dir=tmp / "artifacts")
    import redis

    redis.Redis.from_url(REDIS).flushdb()
    result = {**machine(), "jobs": []}
    print(f"CPU: {result['cpu']}", flush=True)
    procs = {}
    try:
        upgrade(settings.effective_database_url)
        train_classifier(settings=settings, name="bench", data=stratified_sample(read_labelled(folder / "train.csv"), 1000),
                         encoders=["sentence-transformers/all-MiniLM-L6-v2"], layers=(-1,), fusion="concat")
        env = {"FUSIONQ_DATABASE_URL": settings.database_url, "FUSIONQ_BROKER_URL": REDIS,
               "FUSIONQ_ARTIFACT_DIR": str(settings.artifact_dir), "HF_HUB_OFFLINE": "1"}
        procs["embed"] = start_worker("embed", env=env, log_dir=tmp / "logs")
        procs["fusion"] = start_worker("fusion", env={**env, "FUSIONQ_TORCH_THREADS": "1"}, log_dir=tmp / "logs")
        with FusionqClient(settings) as client:
            client.wait(client.submit(pool[:256], "bench"), timeout=600)  # models load
            for size in (int(s) for s in args.sizes.split(",")):
                texts = [pool[i % len(pool)] for i in range(size)]
                before = {name: rss_mb(p.pid) for name, p in procs.items()}
                peak = dict(before)
                stop = threading.Event()

                def sample(peak=peak, stop=stop) -> None:
                    while not stop.wait(2.0):
                        for name, p in procs.items():
                            peak[name] = max(peak[name], rss_mb(p.pid))

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                started = time.perf_counter()
                job = client.submit(texts, "bench")
                submitted = time.perf_counter()
                client.wait(job, timeout=7200)
                seconds = time.perf_counter() - started
                stop.set()
                sampler.join()
                after = {name: rss_mb(p.pid) for name, p in procs.items()}
                row = {"items": size, "seconds": round(seconds, 1), "submit_seconds": round(submitted - started, 2),
                       "texts_per_s": round(size / seconds, 1),
                       "rss_mb": {name: {"before": round(before[name]), "peak": round(peak[name]),
                                         "after": round(after[name])} for name in procs}}
                result["jobs"].append(row)
                print(row, flush=True)
    finally:
        for p in procs.values():
            stop_worker(p)
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        redis.Redis.from_url(REDIS).flushdb()
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
