"""The queue's own cost, without the encoder: milliseconds and CPU per database step of a fast job.

What item 3 of issue 10 is made of once the encoder is fast: the submit of a job (its items stored
and cut into tasks), and per embed task the claim and the finish of its fast items (the items
marked done, their predictions inserted, the job counted, the commit). Each step is timed on its
own, on a real Postgres (or with ``--embedded`` the embedded default's SQLite file), repeated, with
the CPU it cost this process and Postgres' processes. The finish is the embed stage's own
(``finish_fast_items``, the fusion network's decision included) on made-up features, so no encoder
runs and the figures repeat within a few percent on a quiet machine.

    HF_HUB_OFFLINE=1 python bench/stage_costs.py --data ../shared/data/ag_news/test.csv --n 2000
    HF_HUB_OFFLINE=1 python bench/stage_costs.py --embedded --data ../shared/data/ag_news/test.csv --n 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common import CpuAccount, database_facts, machine, positive_int, scratch_services, texts_or_exit, write_result  # noqa: E402
from shared.db.engine import session_for, upgrade  # noqa: E402
from shared.demo import sample_dir, stratified_sample  # noqa: E402
from shared.encoders.spec import EncoderSpec  # noqa: E402
from shared.fusion.artifact import get_artifact  # noqa: E402
from shared.service.aggregate import finish_fast_items  # noqa: E402
from shared.service.claims import claim  # noqa: E402
from shared.service.submit import store_job  # noqa: E402
from shared.service.training import train_classifier  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.textio import read_labelled  # noqa: E402
from shared.vocab import Mode  # noqa: E402


class StepClock:
    """Wall ms and CPU ms (this process; all Postgres processes) of each named step, per repetition."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[float, float, float]]] = {}

    def time(self, name: str, work):
        account = CpuAccount({})  # this process ("client") and Postgres' processes
        account.start()
        started = time.perf_counter()
        result = work()
        wall = time.perf_counter() - started
        used = account.stop()
        self.rows.setdefault(name, []).append((wall * 1000, used["client"] * 1000, used["postgres"] * 1000))
        return result

    def summary(self) -> dict:
        # /proc counts CPU in clock ticks (10 ms): only means over many steps say anything
        return {name: {"wall_ms_median": round(statistics.median(r[0] for r in rows), 1),
                       "client_cpu_ms_mean": round(statistics.fmean(r[1] for r in rows), 1),
                       "postgres_cpu_ms_mean": round(statistics.fmean(r[2] for r in rows), 1),
                       "steps": len(rows)}
                for name, rows in self.rows.items()}


def finish(settings: Settings, held, artifact, features: np.ndarray) -> int:
    """The embed stage's finish of a task's fast items, in its own transaction (shared.service.embed)."""
    ids = [item.id for item in held.items]
    with session_for(settings.effective_database_url) as session, session.begin():
        return finish_fast_items(session, held.job, artifact, features[: len(ids)], ids, token=held.token)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ag_news/test.csv", help="CSV with a text column")
    parser.add_argument("--n", type=positive_int, default=2000, help="texts per job")
    parser.add_argument("--repeats", type=positive_int, default=20, help="jobs submitted and finished")
    parser.add_argument("--embedded", action="store_true",
                        help="the embedded default's SQLite file instead of Postgres (as `fusionq classify` with nothing configured)")
    parser.add_argument("--out", default="bench/out/stage_costs.json")
    args = parser.parse_args()

    texts = texts_or_exit(parser, args.data, args.n)
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
        artifact = get_artifact(trained.classifier.artifact_uri, trained.classifier.artifact_sha256)
        features = np.random.default_rng(0).normal(size=(len(texts), artifact.model.config.feature_dim))
        tasks = 0
        for run in range(args.repeats):
            job_id, sends = clock.time("submit (store_job)", lambda: store_job(
                settings, texts, classifier_ref="bench", mode=Mode.FAST, key=None))
            for _, batch in sends:
                held = clock.time("claim", lambda: claim(settings, str(job_id), batch))
                done = clock.time("finish (decision, rows, UPDATE, INSERT, counters, commit)",
                                  lambda: finish(settings, held, artifact, features))
                assert done == len(batch), (done, len(batch))
                tasks += 1
            print(f"job {run + 1}/{args.repeats}: {len(sends)} tasks", flush=True)
        facts = {} if args.embedded else database_facts(database_url)
    result = {**machine(), **facts, "database": "sqlite (embedded)" if args.embedded else "postgres",
              "texts_per_job": len(texts), "tasks": tasks, "data": args.data,
              "items_per_task": settings.embed_items_per_task, "steps": clock.summary()}
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
