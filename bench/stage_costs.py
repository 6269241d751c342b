"""The queue's own cost, without the encoder: milliseconds and CPU per database step of a fast job.

What item 3 of issue 10 is made of once the encoder is fast: the submit of a job (its items stored
and cut into tasks), and per embed task the claim and the finish of its fast items (the items
marked done, their predictions inserted, the job counted, the commit). Each step is timed on its
own, on a real Postgres (or with ``--embedded`` the embedded default's SQLite file), repeated, with the CPU it cost this process and Postgres' processes;
the model's decision is left out (made-up probabilities), so the figures are the database path's
alone and repeat within a few percent on a quiet machine.

    HF_HUB_OFFLINE=1 python bench/stage_costs.py --data ../shared/data/ag_news/test.csv --n 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common import _cpu_seconds, _pids_named, machine, scratch_services, write_result  # noqa: E402
from bench.pipeline_throughput import positive_int  # noqa: E402
from shared.db.engine import session_for, upgrade  # noqa: E402
from shared.demo import sample_dir, stratified_sample  # noqa: E402
from shared.encoders.spec import EncoderSpec  # noqa: E402
from shared.fusion.artifact import get_artifact  # noqa: E402
from shared.fusion.predict import decide_from_probabilities  # noqa: E402
from shared.service.aggregate import _prediction_rows  # noqa: E402
from shared.service.claims import claim  # noqa: E402
from shared.service.submit import store_job  # noqa: E402
from shared.service.training import train_classifier  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.textio import read_labelled, read_texts  # noqa: E402
from shared.vocab import ENCODER_SIGNAL, ItemStatus, Mode  # noqa: E402
from shared.db.items import store_predictions  # noqa: E402
from shared.db.jobs import count_finished  # noqa: E402


class StepClock:
    """Wall ms and CPU ms (this process; all Postgres processes) of each named step, per repetition."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[float, float, float]]] = {}

    def time(self, name: str, work):
        postgres = _pids_named("postgres")
        cpu0, pg0, t0 = time.process_time(), sum(_cpu_seconds(p) for p in postgres), time.perf_counter()
        result = work()
        wall = (time.perf_counter() - t0) * 1000
        cpu, pg = (time.process_time() - cpu0) * 1000, (sum(_cpu_seconds(p) for p in postgres) - pg0) * 1000
        self.rows.setdefault(name, []).append((wall, cpu, pg))
        return result

    def summary(self) -> dict:
        return {name: {"wall_ms_median": round(statistics.median(r[0] for r in rows), 1),
                       "client_cpu_ms_median": round(statistics.median(r[1] for r in rows), 1),
                       # /proc counts in clock ticks (10 ms): only the mean over many steps means anything
                       "postgres_cpu_ms_mean": round(statistics.fmean(r[2] for r in rows), 1),
                       "steps": len(rows)}
                for name, rows in self.rows.items()}


def finish_fast(settings: Settings, held, probabilities: np.ndarray) -> int:
    """What the embed stage does after encoding a task's fast items, minus the model: rows, UPDATE,
    INSERT, the job's counters, commit (shared.service.aggregate.finish_fast_items)."""
    job, ids = held.job, [item.id for item in held.items]
    with session_for(settings.effective_database_url) as session, session.begin():
        decision = decide_from_probabilities(probabilities[: len(ids)], multi_label=False)
        rows = _prediction_rows(decision, [f"c{k}" for k in range(probabilities.shape[1])],
                                [(i, job.created_at) for i in ids], [[ENCODER_SIGNAL] for _ in ids],
                                [[] for _ in ids])
        done = store_predictions(session=session, rows=rows, from_statuses=(ItemStatus.PENDING,), token=held.token)
        count_finished(session=session, job_id=job.id, done=done)
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ag_news/test.csv", help="CSV with a text column")
    parser.add_argument("--n", type=positive_int, default=2000, help="texts per job")
    parser.add_argument("--repeats", type=positive_int, default=20, help="jobs submitted and finished")
    parser.add_argument("--embedded", action="store_true",
                        help="the embedded default's SQLite file instead of Postgres (as `fusionq classify` with nothing configured)")
    parser.add_argument("--out", default="bench/out/stage_costs.json")
    args = parser.parse_args()

    data_path = Path(args.data)
    if not data_path.is_file():
        parser.error(f"--data {data_path}: no such file (the team's ../shared/data, or any CSV with a text column)")
    texts = read_texts(data_path)[: args.n]
    spec = EncoderSpec(model="sentence-transformers/all-MiniLM-L6-v2")
    clock = StepClock()
    with scratch_services() as (database_url, tmp):
        settings = Settings(home=tmp, database_url=None if args.embedded else database_url,
                            artifact_dir=tmp / "artifacts")
        if args.embedded:
            upgrade(settings.effective_database_url)
        print("training a small classifier (not timed) ...", flush=True)
        trained = train_classifier(settings=settings, name="bench", data=stratified_sample(
            read_labelled(sample_dir() / "train.csv"), 200), encoders=[spec], layers=spec.layers, fusion="concat",
            show_progress=False)
        n_classes = len(get_artifact(trained.classifier.artifact_uri, trained.classifier.artifact_sha256).labels)
        rng = np.random.default_rng(0)
        probabilities = rng.dirichlet(np.ones(n_classes), size=len(texts))
        tasks = 0
        for run in range(args.repeats):
            job_id, sends = clock.time("submit (store_job)", lambda: store_job(
                settings, texts, classifier_ref="bench", mode=Mode.FAST, key=None))
            for _, batch in sends:
                held = clock.time("claim", lambda: claim(settings, str(job_id), batch))
                done = clock.time("finish (rows, UPDATE, INSERT, counters, commit)",
                                  lambda: finish_fast(settings, held, probabilities))
                assert done == len(batch), (done, len(batch))
                tasks += 1
            print(f"job {run + 1}/{args.repeats}: {len(sends)} tasks", flush=True)
    result = {**machine(), "database": "sqlite (embedded)" if args.embedded else "postgres", "texts_per_job": len(texts), "tasks": tasks, "data": str(data_path),
              "items_per_task": settings.embed_items_per_task, "steps": clock.summary()}
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
