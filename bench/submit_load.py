"""Submit under load: many processes submitting at once with colliding idempotency keys.

    HF_HUB_OFFLINE=1 python bench/submit_load.py --processes 20 --jobs 50 --keys 200 --texts 20

Real Postgres and Redis on 127.0.0.1 (a scratch database and Redis DB 12, dropped and emptied
after); no workers: a submit only stores the job and its items in Postgres and enqueues its Celery
messages in Redis, so this measures the submit path alone. A tiny MiniLM classifier "load" is
trained first. Then ``--processes`` spawned processes, released together by a barrier, each submit
``--jobs`` jobs with the key ``load-K``, K drawn at random (seeded per process) from ``--keys``, so
the same key is submitted by several processes at about the same moment. A key's texts are a fixed
function of the key (``--texts`` of them), as a retrying caller would send.

Reported: submits/s (all submits / wall time from release to the last submit), p50/p99 submit
latency, errors, and the checks: every key got exactly one job id across all processes, the
database holds exactly one job per key used with ``--texts`` items each, and Postgres counted no
deadlocks in the scratch database. Exit status 0 when every check passes, else 1.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Only light imports at module level: every spawned process imports this file again.
from bench.common import REDIS, machine, scratch_services, write_result  # noqa: E402

CLASSIFIER = "load"
TOPICS = {"sport": ["match", "goal", "league", "coach", "striker", "stadium"],
          "business": ["market", "shares", "profit", "bank", "investor", "merger"],
          "science": ["telescope", "genome", "physics", "laboratory", "molecule", "orbit"]}


def log(message: str) -> None:
    print(f"[submit_load] {message}", file=sys.stderr, flush=True)


def training_data(n_per_class: int = 20):
    """~60 short synthetic texts whose topic words make the class learnable."""
    from shared.textio import LabelledData

    rng = random.Random(0)
    texts, labels = [], []
    for _ in range(n_per_class):
        for label, words in TOPICS.items():
            a, b, c = rng.sample(words, 3)
            texts.append(f"Report {rng.randint(1, 9999)}: the {a} and the {b} drew attention to the {c}.")
            labels.append([label])
    return LabelledData(texts=texts, labels=labels, multi_label=False, source="synthetic")


def texts_for(key: str, n: int) -> list[str]:
    """A key's texts: the same key always sends the same texts (a changed count is refused by design)."""
    return [f"{key} text {i}: the market and the league both moved today." for i in range(n)]


def submitter(index: int, settings, jobs: int, keys: int, n_texts: int, barrier, results) -> None:
    """One process: connect, wait for the others, submit ``jobs`` jobs, put its records on ``results``."""
    from shared.client import FusionqClient

    rng = random.Random(1000 + index)
    records, started = [], None
    try:
        with FusionqClient(settings) as client:
            client.dispatcher  # connect to the broker now, so the timed submits are steady-state ones
            barrier.wait(timeout=600)
            started = time.time()  # wall clock: comparable across processes
            for _ in range(jobs):
                key = f"load-{rng.randrange(keys)}"
                t0 = time.perf_counter()
                record = {"key": key, "job_id": None, "error": None}
                try:
                    record["job_id"] = str(client.submit(texts_for(key, n_texts), CLASSIFIER, idempotency_key=key))
                except Exception as exc:  # noqa: BLE001 - every failure is a finding, recorded and counted
                    record["error"] = f"{type(exc).__name__}: {exc}"
                record["seconds"] = time.perf_counter() - t0
                records.append(record)
    except Exception as exc:  # noqa: BLE001 - a process that could not start is reported, not hung on
        records.append({"key": None, "job_id": None, "seconds": 0.0,
                        "error": f"process {index}: {type(exc).__name__}: {exc}"})
        barrier.abort()  # the others must not wait for this one
    results.put({"index": index, "started": started, "ended": time.time(), "records": records})


def deadlocks(admin_url: str, db_name: str) -> int:
    """Deadlocks Postgres has counted in ``db_name`` (pg_stat_database)."""
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT deadlocks FROM pg_stat_database WHERE datname = :d"),
                                    {"d": db_name}).scalar_one())
    finally:
        engine.dispose()


def stored_jobs(database_url: str) -> dict[str, list[tuple[str, int]]]:
    """key -> [(job id, its items)] for every ``load-`` job row in the database."""
    import sqlalchemy as sa

    from shared.db.engine import session_for
    from shared.db.models import Item, Job

    with session_for(database_url) as session:
        rows = session.execute(
            sa.select(Job.idempotency_key, Job.id, sa.func.count(Item.id))
            .outerjoin(Item, Item.job_id == Job.id)
            .where(Job.idempotency_key.like("load-%"))
            .group_by(Job.idempotency_key, Job.id)).all()
    found: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for key, job_id, n_items in rows:  # the unique constraint should allow one row per key: counted, not assumed
        found[key].append((str(job_id), n_items))
    return found


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile of sorted values, rounded; None for none."""
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))], 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=50, help="submits per process")
    parser.add_argument("--keys", type=int, default=200, help="distinct idempotency keys to draw from")
    parser.add_argument("--texts", type=int, default=20, help="texts per job")
    parser.add_argument("--out", default="bench/out/submit_load.json")
    args = parser.parse_args()

    from shared.fusion.training import TrainingConfig
    from shared.service.training import train_classifier
    from shared.settings import Settings

    result = {**machine(), "processes": args.processes, "jobs_per_process": args.jobs, "keys": args.keys,
              "texts_per_job": args.texts}
    log(f"CPU: {result['cpu']}; {result['machine']}")
    with scratch_services("fusionq-submit-load-") as (database_url, tmp):
        admin_url, db_name = database_url.rsplit("/", 1)[0] + "/postgres", database_url.rsplit("/", 1)[1]
        settings = Settings(home=tmp, database_url=database_url, broker_url=REDIS, artifact_dir=tmp / "artifacts")
        log("training the classifier")
        train_classifier(settings=settings, name=CLASSIFIER, data=training_data(),
                         encoders=["sentence-transformers/all-MiniLM-L6-v2"], layers=(-1,), fusion="concat",
                         training=TrainingConfig(max_epochs=20), show_progress=False)

        ctx = multiprocessing.get_context("spawn")
        barrier, results = ctx.Barrier(args.processes), ctx.Queue()
        deadlocks_before = deadlocks(admin_url, db_name)
        log(f"starting {args.processes} processes x {args.jobs} submits over {args.keys} keys")
        procs = [ctx.Process(target=submitter, args=(i, settings, args.jobs, args.keys, args.texts, barrier, results))
                 for i in range(args.processes)]
        reports = []
        try:
            for proc in procs:
                proc.start()
            for _ in procs:  # drain before join: a child blocks on exit until its queued records are read
                reports.append(results.get(timeout=900))
                log(f"{len(reports)}/{len(procs)} processes done")
        finally:  # no submitter outlives the scratch database, even when this one gives up
            for proc in procs:
                proc.join(timeout=60)
                if proc.is_alive():
                    proc.terminate()
        time.sleep(1.0)  # the backends' statistics reach pg_stat_database when they flush, within ~1 s
        deadlock_count = deadlocks(admin_url, db_name) - deadlocks_before
        stored = stored_jobs(database_url)

    records = [r for report in reports for r in report["records"]]
    errors = [r["error"] for r in records if r["error"]]
    ids_by_key: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r["job_id"]:
            ids_by_key[r["key"]].add(r["job_id"])
    used = {r["key"] for r in records if r["key"]}
    starts = [rep["started"] for rep in reports if rep["started"]]  # None: the process never got to submit
    wall = max(rep["ended"] for rep in reports) - min(starts) if starts else float("nan")
    latencies = sorted(r["seconds"] * 1000 for r in records if not r["error"])
    checks = {
        "keys_with_more_than_one_job_id": sum(1 for ids in ids_by_key.values() if len(ids) > 1),
        "keys_without_job_id": len(used - set(ids_by_key)),
        "job_rows": sum(len(jobs) for jobs in stored.values()),
        "keys_with_one_job_row": sum(1 for k in used if len(stored.get(k, [])) == 1),
        "jobs_with_wrong_item_count": sum(1 for jobs in stored.values() for _, n in jobs if n != args.texts),
        # the id a caller got must be the stored one (a caller holding a rolled-back job's id lost its job)
        "keys_whose_returned_id_is_not_stored": sum(
            1 for k, ids in ids_by_key.items() if not ids <= {job_id for job_id, _ in stored.get(k, [])}),
        "deadlocks": deadlock_count,
    }
    passed = (not errors and checks["keys_with_more_than_one_job_id"] == 0 and checks["keys_without_job_id"] == 0
              and checks["keys_with_one_job_row"] == len(used) and checks["job_rows"] == len(used)
              and checks["jobs_with_wrong_item_count"] == 0 and checks["keys_whose_returned_id_is_not_stored"] == 0
              and deadlock_count == 0)
    result.update({
        "total_submits": len(records), "errors": len(errors), "first_errors": errors[:5],
        "wall_s": round(wall, 2), "submits_per_s": round(len(records) / wall, 1),
        "latency_ms": {"p50": percentile(latencies, 0.50), "p99": percentile(latencies, 0.99),
                       "max": percentile(latencies, 1.0)},
        "distinct_keys_used": len(used), "checks": checks, "passed": passed})
    write_result(result, args.out)
    log("PASSED" if passed else "FAILED")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
