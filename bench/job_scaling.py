"""Cost per item as jobs grow: texts/s and worker memory for 1k, 10k and 100k-item fast jobs.

    HF_HUB_OFFLINE=1 python bench/job_scaling.py --sizes 1000,10000,100000
    HF_HUB_OFFLINE=1 python bench/job_scaling.py --sizes 10000 --embed-workers 2   # horizontal scaling

Real Redis and Postgres on 127.0.0.1, separate `embed` and `fusion` worker processes as the
README starts them (the embed worker a prefork pool with a child per core, as on a CPU host;
``--embed-processes 1``: the solo GPU worker; a prefork worker's largest child is reported as
``embed.child``: it runs the tasks); texts are AG News (train then test, repeated to reach the size). For each job:
wall time from submit to `wait` returning, texts/s, and each worker's resident memory before and
after, sampled every 2 s during the job (peak), and the work the sweeper sent again (none, with
nothing broken: a backlog that outlives the 15 s claim lease is judged by the broker, not by its age).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (REDIS, CpuAccount, MemorySampler, add_embed_processes_option, embed_pool, machine,  # noqa: E402
                          positive_int, scratch_services, worker_memory_mb, write_result)
from shared.client import FusionqClient  # noqa: E402
from shared.demo import stratified_sample  # noqa: E402
from shared.service.training import train_classifier  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.errors import DataFileError  # noqa: E402
from shared.textio import read_labelled, read_texts  # noqa: E402
from workers.launch import start_worker, stop_worker  # noqa: E402

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data/ag_news")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--embed-workers", type=positive_int, default=1, help="embed workers on the one queue")
    add_embed_processes_option(parser)  # the processes of each
    parser.add_argument("--out", default="bench/out/job_scaling.json")
    args = parser.parse_args()
    folder = Path(args.data_dir)
    try:
        pool = read_texts(folder / "train.csv") + read_texts(folder / "test.csv")
    except DataFileError as exc:
        print(f"{exc}: pass --data-dir, a folder with train.csv and test.csv (text,label)", file=sys.stderr)
        return 2
    result = {**machine(), "embed_workers": args.embed_workers, "embed_processes": args.embed_processes, "jobs": []}
    print(f"CPU: {result['cpu']}", flush=True)
    with scratch_services("fusionq-scaling-") as (database_url, tmp):
        settings = Settings(home=tmp, database_url=database_url, broker_url=REDIS, artifact_dir=tmp / "artifacts")
        train_classifier(settings=settings, name="bench", data=stratified_sample(read_labelled(folder / "train.csv"), 1000),
                         encoders=["sentence-transformers/all-MiniLM-L6-v2"], layers=(-1,), fusion="concat")
        env = {"FUSIONQ_DATABASE_URL": settings.database_url, "FUSIONQ_BROKER_URL": REDIS,
               "FUSIONQ_ARTIFACT_DIR": str(settings.artifact_dir), "HF_HUB_OFFLINE": "1"}
        procs = {}
        try:
            for n in range(args.embed_workers):
                procs["embed" if n == 0 else f"embed-{n + 1}"] = start_worker("embed", env=env, log_dir=tmp / "logs",
                                                                              **embed_pool(args.embed_processes))
            procs["fusion"] = start_worker("fusion", env={**env, "FUSIONQ_TORCH_THREADS": "1"}, log_dir=tmp / "logs")
            with FusionqClient(settings) as client:
                client.wait(client.submit(pool[:256], "bench"), timeout=600)  # models load
                for size in (int(s) for s in args.sizes.split(",")):
                    result["jobs"].append(run_job(client, procs, [pool[i % len(pool)] for i in range(size)]))
                    print(result["jobs"][-1], flush=True)
        finally:
            for proc in procs.values():
                stop_worker(proc)
    write_result(result, args.out)
    return 0


def run_job(client: FusionqClient, procs: dict, texts: list[str]) -> dict:
    """One fast job: wall time, texts/s, and each worker's memory before, at its peak and after."""
    before = worker_memory_mb(procs)
    sampler = MemorySampler(procs)
    account = CpuAccount(procs)
    sampler.start()
    account.start()
    started = time.perf_counter()
    job = client.submit(texts, "bench")
    submitted = time.perf_counter()
    tenths = progress_by_tenth(client, job, len(texts), started)
    seconds = time.perf_counter() - started
    cpu = account.stop()
    sampler.stop_event.set()
    sampler.join()
    after = worker_memory_mb(procs)
    peak = {name: max(value, before.get(name, 0.0), after.get(name, 0.0)) for name, value in sampler.peaks().items()}
    return {"items": len(texts), "seconds": round(seconds, 1), "submit_seconds": round(submitted - started, 2),
            "texts_per_s": round(len(texts) / seconds, 1), "seconds_per_tenth": tenths, "cpu_seconds": cpu,
            **work_done_again(client, job),
            "rss_mb": {name: {"before": _rounded(before.get(name)), "peak": round(peak[name]),
                              "after": _rounded(after.get(name))} for name in sorted(peak)}}


def _rounded(mb: float | None) -> int | None:
    return None if mb is None or mb != mb else round(mb)  # a child that was not there: None


def progress_by_tenth(client: FusionqClient, job, size: int, started: float) -> list[float]:
    """Wait for ``job``; the seconds each tenth of its items took (tasks run shortest texts first,
    so a rising trend within one job is text length, but a 100k job's tenths against a 10k job's
    tell a cost that grows with the job from one that does not)."""
    marks, tenth = [], 1
    while True:
        state = client.progress(job)
        done = state.n_done + state.n_failed
        now = time.perf_counter() - started
        while tenth <= 10 and done >= size * tenth / 10:
            marks.append(now)
            tenth += 1
        if tenth > 10:
            break
        if now > 7200:
            raise TimeoutError(f"job {job} not done after 2 hours")
        time.sleep(0.5)
    client.wait(job, timeout=60)
    return [round(b - a, 1) for a, b in zip([0.0] + marks, marks)]


def work_done_again(client: FusionqClient, job) -> dict:
    """Items the sweeper re-sent (a lapsed claim re-claims, so attempts > 1; a lost message counts a
    resend): with nothing broken, a backlog that outlives the lease must re-send nothing."""
    import sqlalchemy as sa

    from shared.db.engine import session_for
    from shared.db.models import Item

    with session_for(client.settings.effective_database_url) as session:
        reclaimed, resent = session.execute(
            sa.select(sa.func.coalesce(sa.func.sum(sa.func.greatest(Item.attempts - 1, 0)), 0),
                      sa.func.coalesce(sa.func.sum(Item.resends), 0)).where(Item.job_id == job)).one()
    return {"items_claimed_again": int(reclaimed), "items_resent_as_lost": int(resent)}


if __name__ == "__main__":
    sys.exit(main())
