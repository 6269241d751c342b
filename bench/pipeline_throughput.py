"""Pipeline efficiency: texts/s through the whole system vs the bare encoder, and one-text latency.

Whole system = Redis broker + Postgres + separate `embed` and `fusion` worker processes, the
same texts and model as the bare in-process encoder. The embed worker is the README's CPU worker
by default: a prefork pool with a child per core, sharing the cores (workers.cores);
``--embed-processes 1`` runs the solo worker instead. Needs Redis and Postgres on 127.0.0.1.

    python bench/pipeline_throughput.py --data ../shared/data/ag_news/test.csv --n 2000
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REDIS, CpuAccount, add_embed_processes_option, database_facts, embed_pool, machine, positive_int, scratch_services, texts_or_exit, write_result  # noqa: E402
from shared.client import FusionqClient  # noqa: E402
from shared.demo import sample_dir, stratified_sample  # noqa: E402
from shared.encoders.hf import get_encoder  # noqa: E402
from shared.encoders.precision import cpu_description  # noqa: E402
from shared.encoders.spec import EncoderSpec  # noqa: E402
from shared.gc_freeze import freeze_what_is_alive  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.textio import read_labelled  # noqa: E402
from shared.service.training import train_classifier  # noqa: E402
from workers.dispatch import dispatcher_for  # noqa: E402
from workers.launch import start_worker, stop_worker  # noqa: E402



def bare_encoder_rate(spec: EncoderSpec, texts: list[str], settings: Settings, repeats: int) -> float:
    encoder = get_encoder(spec)
    encoder.encode(texts[:64], max_tokens=settings.embed_max_tokens, max_batch=settings.embed_max_batch)  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        encoder.encode(texts, max_tokens=settings.embed_max_tokens, max_batch=settings.embed_max_batch)
        rates.append(len(texts) / (time.perf_counter() - started))
    return statistics.median(rates)


def single_text_model_ms(spec: EncoderSpec, text: str, repeats: int = 20, pause_s: float = 0.0) -> float:
    """The model's own time for a one-text job of ``text`` (median of ``repeats``), in this process;
    with ``pause_s``, each run follows a pause, as a job's encode follows the queue's work (a core
    that did something else first encodes a text ~4 ms slower on the AMX VM, docs/BENCHMARKS.md)."""
    encoder = get_encoder(spec)
    times = []
    for _ in range(repeats):
        time.sleep(pause_s)
        started = time.perf_counter()
        encoder.encode([text])
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def embedded_rates(spec: EncoderSpec, train, texts: list[str], home: Path, repeats: int,
                   settings: Settings, one_text_jobs: int) -> tuple[list[float], list[float], list[float]]:
    """texts/s of the embedded default, as `fusionq classify` runs it with nothing configured, each
    run right after a bare-encoder run here: (bare rates, embedded rates), paired; then the ms from
    submit to `wait` returning of ``one_text_jobs`` one-text jobs there, one after another.

    The embedded default runs in a process of its own, as the CLI does: in this one, whose main
    thread encodes the bare runs, its worker thread would be a second OpenMP team on the same cores,
    which slows both by ~15 % (shared.threads) and is not how a user runs it. (While the bare runs
    here, the child's idle worker polls its in-memory broker every 10 ms: ~1 % of a core.)"""
    embedded = Settings(home=home)
    train_classifier(settings=embedded, name="bench", data=train, encoders=[spec], layers=spec.layers,
                     fusion="concat", show_progress=False)
    bare_rates, rates = [], []
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(target=_embedded_child, args=(theirs, str(home), texts), name="embedded-default")
    child.start()
    theirs.close()  # so a child that dies is an EOFError here, not a wait for ever
    try:
        ours.recv()  # warmed up: the worker thread has seen every shape once
        for _ in range(repeats):
            bare_rates.append(bare_encoder_rate(spec, texts, settings, 1))
            ours.send("run")
            rates.append(ours.recv())
        ours.send(("one text", one_text_jobs))
        one_text_ms = ours.recv()
        ours.send("stop")
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    return bare_rates, rates, one_text_ms


def _embedded_child(conn, home: str, texts: list[str]) -> None:
    """The embedded default in its own process: one job of ``texts`` per "run" message, its texts/s sent back."""
    with FusionqClient(Settings(home=Path(home)), dispatcher_factory=dispatcher_for) as client:
        client.wait(client.submit(texts, "bench"), timeout=3600)
        conn.send("ready")
        while (order := conn.recv()) != "stop":
            if order == "run":
                started = time.perf_counter()
                client.wait(client.submit(texts, "bench"), timeout=3600)
                conn.send(len(texts) / (time.perf_counter() - started))
            else:  # ("one text", n): n one-text jobs, each waited for
                times = []
                for n in range(order[1]):
                    started = time.perf_counter()
                    client.wait(client.submit([texts[n % len(texts)]], "bench"), timeout=60)
                    times.append((time.perf_counter() - started) * 1000)
                conn.send(times)


WORKER_MODEL_LINE = re.compile(r"job ([0-9a-f-]{36}): \d+ items claimed in [\d.]+ ms, encoded in ([\d.]+) ms \(the model\)")


def model_ms_in_worker_log(path: Path) -> dict[str, float]:
    """The model's own ms per job, as the embed worker timed it for its log line (one-task jobs)."""
    return {job: float(ms) for job, ms in WORKER_MODEL_LINE.findall(Path(path).read_text())}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ag_news/test.csv", help="CSV with a text column")
    parser.add_argument("--train", default="../shared/data/ag_news/train.csv", help="labelled CSV for the classifier")
    parser.add_argument("--n", type=positive_int, default=2000, help="texts per throughput run")
    parser.add_argument("--repeats", type=positive_int, default=5, help="throughput runs of each kind (median reported)")
    parser.add_argument("--latency-jobs", type=positive_int, default=200, help="one-text jobs, one after another")
    parser.add_argument("--precision", default="auto", help="encoder precision (auto, fp32, bf16)")
    add_embed_processes_option(parser)
    parser.add_argument("--out", default="bench/out/pipeline_throughput.json")
    args = parser.parse_args()

    texts = texts_or_exit(parser, args.data, args.n)
    train_path = Path(args.train) if Path(args.train).is_file() else sample_dir() / "train.csv"
    spec = EncoderSpec(model="sentence-transformers/all-MiniLM-L6-v2", precision=args.precision)
    with scratch_services() as (database_url, tmp):
        settings = Settings(home=tmp, database_url=database_url, broker_url=REDIS, artifact_dir=tmp / "artifacts")
        procs = []
        try:
                print(f"training a classifier on {train_path} (not timed) ...", flush=True)
                train = stratified_sample(read_labelled(train_path), 1000)
                train_classifier(settings=settings, name="bench", data=train, encoders=[spec], layers=spec.layers,
                                 fusion="concat", show_progress=False)

                postgres = database_facts(database_url)
                print(f"CPU: {cpu_description()}; encoder precision {args.precision} -> {get_encoder(spec).precision}; "
                      f"Postgres {postgres['postgres']}", flush=True)
                bare_encoder_rate(spec, texts, settings, 1)  # every padded shape seen once, as the workers will see them
                model_ms = single_text_model_ms(spec, texts[0])
                # each latency job's own text: a long text's model time is not queue overhead
                latency_texts = [texts[i % len(texts)] for i in range(args.latency_jobs)]
                text_model_ms = [single_text_model_ms(spec, text, repeats=3) for text in latency_texts]
                paused_model_ms = [single_text_model_ms(spec, text, repeats=3, pause_s=0.01) for text in latency_texts]

                env = {"FUSIONQ_DATABASE_URL": settings.database_url, "FUSIONQ_BROKER_URL": REDIS,
                       "FUSIONQ_ARTIFACT_DIR": str(settings.artifact_dir), "HF_HUB_OFFLINE": "1"}
                procs.append(start_worker("embed", env=env, log_dir=tmp / "logs", **embed_pool(args.embed_processes)))
                procs.append(start_worker("fusion", env={**env, "FUSIONQ_TORCH_THREADS": "1"}, log_dir=tmp / "logs"))
                with FusionqClient(settings) as client:
                    client.wait(client.submit(texts[:64], "bench"), timeout=300)  # workers load their models
                    client.wait(client.submit(texts, "bench"), timeout=3600)  # the workers see every shape once too
                    bare_rates, system_rates, cpu_runs, bare_cpu = [], [], [], []
                    account = CpuAccount({"embed_worker": procs[0], "fusion_worker": procs[1]})
                    for run in range(args.repeats):  # interleaved, so both see the same machine
                        print(f"run {run + 1}/{args.repeats}: bare encoder, then the whole system, on {len(texts)} texts",
                              flush=True)
                        cpu_started = time.process_time()
                        bare_rates.append(bare_encoder_rate(spec, texts, settings, 1))
                        bare_cpu.append(round(time.process_time() - cpu_started, 2))
                        account.start()
                        started = time.perf_counter()
                        job = client.submit(texts, "bench")
                        client.wait(job, timeout=3600)
                        system_rates.append(len(texts) / (time.perf_counter() - started))
                        cpu_runs.append(account.stop())
                    bare, system = statistics.median(bare_rates), statistics.median(system_rates)

                    # This process also holds the bare encoder, which a client of the service does not: its
                    # full collections (110-230 ms) must not land inside a job's timing (shared.gc_freeze)
                    freeze_what_is_alive()
                    observed, after_submit, stored, latency_job_ids = [], [], [], []
                    for text in latency_texts:
                        started = time.perf_counter()
                        job = client.submit([text], "bench")
                        submitted = time.perf_counter()
                        client.wait(job, timeout=60)  # told by the completing commit (Postgres NOTIFY), no polling
                        finished = time.perf_counter()
                        observed.append((finished - started) * 1000)
                        after_submit.append((finished - submitted) * 1000)
                        stored.append(client.results(job)[0].latency_ms)
                        latency_job_ids.append(str(job))
                worker_model_ms = model_ms_in_worker_log(procs[0].log_path)
                print("embedded default (in-memory broker, worker thread, SQLite) ...", flush=True)
                embedded_bare, embedded_runs, embedded_one_text = embedded_rates(
                    spec, train, texts, tmp / "embedded", args.repeats, settings, one_text_jobs=50)
        finally:
            for proc in procs:
                stop_worker(proc)

    overheads = [total - model for total, model in zip(after_submit, text_model_ms)]
    overheads_paused = [total - model for total, model in zip(after_submit, paused_model_ms)]
    # against the model's time in that very job, as the embed worker measured it (its log line)
    timed = [(total, worker_model_ms[job]) for total, job in zip(after_submit, latency_job_ids) if job in worker_model_ms]
    overheads_worker = [total - model for total, model in timed] or [float("nan")]
    result = {
        **machine(), **postgres, "precision": str(get_encoder(spec).precision),
        "model": spec.model, "embed_processes": args.embed_processes, "texts": len(texts), "data": args.data,
        "bare_encoder_texts_per_s": round(bare, 1),
        "bare_runs_texts_per_s": [round(r, 1) for r in bare_rates],
        "system_texts_per_s": round(system, 1),
        "system_runs_texts_per_s": [round(r, 1) for r in system_rates],
        # each system run over the bare run just before it: this VM's speed drifts by +-30 % within
        # minutes, so only neighbouring runs compare
        "ratio": round(statistics.median(s / b for s, b in zip(system_rates, bare_rates)), 3),
        "paired_ratios": [round(s / b, 3) for s, b in zip(system_rates, bare_rates)],
        # CPU seconds per text, embed worker vs the bare encoder's own process: the work done differs
        # only by the stage's database writes, if the machine's speed held
        "bare_cpu_seconds": bare_cpu,
        # where two cores' time went during each system run: CPU seconds per process role
        "system_cpu_seconds": cpu_runs,
        "embedded_texts_per_s": round(statistics.median(embedded_runs), 1),
        "embedded_runs_texts_per_s": [round(r, 1) for r in embedded_runs],
        # paired like ``ratio``: each embedded run over the bare run just before it
        "embedded_ratio": round(statistics.median(e / b for e, b in zip(embedded_runs, embedded_bare)), 3),
        "embedded_paired_ratios": [round(e / b, 3) for e, b in zip(embedded_runs, embedded_bare)],
        # a one-text job on the embedded default, submit to `wait` returning (model included), 50 jobs
        "embedded_one_text_job_ms_p50": round(_quantile(embedded_one_text, 0.5), 1),
        "embedded_one_text_job_ms_p90": round(_quantile(embedded_one_text, 0.9), 1),
        "one_text_job_ms_median": round(statistics.median(observed), 1),
        "one_text_job_ms_p90": round(sorted(observed)[int(0.9 * (len(observed) - 1))], 1),
        "one_text_stored_latency_ms_median": round(statistics.median(stored), 1),
        "one_text_model_ms_median": round(model_ms, 1),
        "one_text_overhead_ms_median": round(statistics.median(observed) - model_ms, 1),
        # the issue-10 target: from submit returning to wait returning, minus the model's own time
        # for that job's text (measured in this process beforehand, median of 3)
        "after_submit_overhead_ms_p50": round(_quantile(overheads, 0.5), 1),
        "after_submit_overhead_ms_p99": round(_quantile(overheads, 0.99), 1),
        "after_submit_ms_p50": round(_quantile(after_submit, 0.5), 1),
        "after_submit_ms_p99": round(_quantile(after_submit, 0.99), 1),
        "latency_texts_model_ms_p50": round(_quantile(text_model_ms, 0.5), 1),
        # the same with each text's model time taken after a 10 ms pause, as a job's encode follows
        # the queue's work: the model as the job sees it, so what is left is the queue's own part
        "latency_texts_model_after_pause_ms_p50": round(_quantile(paused_model_ms, 0.5), 1),
        "after_submit_overhead_vs_paused_model_ms_p50": round(_quantile(overheads_paused, 0.5), 1),
        "after_submit_overhead_vs_paused_model_ms_p99": round(_quantile(overheads_paused, 0.99), 1),
        # the same against the model's time in each job as the embed worker timed it: the model's own
        # time exactly, where the two estimates above take the same text's time in this process
        "worker_model_ms_p50": round(_quantile([model for _, model in timed] or [float("nan")], 0.5), 1),
        "after_submit_overhead_vs_worker_model_ms_p50": round(_quantile(overheads_worker, 0.5), 1),
        "after_submit_overhead_vs_worker_model_ms_p99": round(_quantile(overheads_worker, 0.99), 1),
        "worker_timed_jobs": len(timed),
        "latency_jobs": len(observed),
    }
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
