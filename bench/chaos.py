"""Chaos run: a steady stream of mixed jobs while every fault we know is injected at random, then a count.

    HF_HUB_OFFLINE=1 python bench/chaos.py --minutes 20        # writes bench/out/chaos.json

Loopback only: a scratch Postgres database, Redis DB 11, the loopback LLM of the tests, and the
README's worker processes (embed, fusion, llm_local, maintenance, beat) with the shipped lease,
sweep and attempt settings. Client processes submit jobs in modes fast/auto/full/llm, each with an
idempotency key, retrying a failed submit with the same key (so a submit that failed half-way is
finished, not duplicated). Meanwhile a scheduler injects, at random intervals, one of: SIGKILL of
a worker (embed, fusion, llm_local, the sweeper's), SIGSTOP of the encoder past its lease, a
FLUSHDB of the broker, a Redis restart, a Postgres restart or outage, a second beat, and LLM
429/500/hang/garbage spells, each fault once per round in a shuffled order. The workers run under a supervisor, as in production: one the
scheduler killed is started again after a few seconds, one that exits by itself at once (and is
recorded). At the end it waits for every job and counts, over all items: predicted once,
predicted twice, lost (not finished), failed (grouped by reason) and flagged, with worker memory
over the run. Restarting Redis and Postgres touches the whole box: run it alone, and from a clone
of the commit (the workers import the working tree: an edit mid-run changes them).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench.common import machine, rss_mb, scratch_services, write_result  # noqa: E402
from shared.db.engine import dispose_engines, session_for  # noqa: E402
from shared.db.models import Item, Job, LlmRequest, Prediction  # noqa: E402
from shared.llm.prompts import LabelSet  # noqa: E402
from shared.service.training import train_classifier  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.textio import LabelledData  # noqa: E402
from tests.support.fake_openai import FakeOpenAIServer, keyword_answer  # noqa: E402
from tests.support.services import postgres, start_redis, stop_redis  # noqa: E402
from workers.launch import start_beat, start_worker, stop_worker  # noqa: E402

BROKER = "redis://127.0.0.1:6379/11"
TOPICS = {
    "sports": ["match", "goal", "coach", "league", "striker", "tournament", "season", "referee"],
    "business": ["shares", "profit", "merger", "investors", "revenue", "quarter", "market", "bank"],
    "science": ["telescope", "molecule", "experiment", "physicists", "genome", "laboratory", "orbit", "fossil"],
}
MODES = ["fast"] * 4 + ["auto"] * 3 + ["full"] * 2 + ["llm"]
SIZES = [1, 5, 20, 60, 150, 300]
# Only the LLM is tuned: a hanging loopback LLM must not hold a batch for the default 30 s timeout.
LLM_ENV = {"FUSIONQ_LLM_TIMEOUT": "2", "FUSIONQ_LLM_MAX_RETRIES": "2", "FUSIONQ_LLM_BREAKER_FAILURES": "3",
           "FUSIONQ_LLM_BREAKER_COOLDOWN": "5", "FUSIONQ_ESCALATION_TIERS": "local@0.999"}


def topic_texts(rng: random.Random, n: int) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for _ in range(n):
        label = rng.choice(sorted(TOPICS))
        words = rng.sample(TOPICS[label], 3)
        texts.append(f"Report {rng.randint(1, 99999)}: the {words[0]} and the {words[1]} drew attention to the {words[2]}.")
        labels.append(label)
    return texts, labels


def client_loop(settings: Settings, deadline: float, seed: int, out_path: str) -> None:
    """One submitting process: a job, a pause, the next, until ``deadline``; one JSON line per job."""
    from shared.client import FusionqClient

    rng = random.Random(seed)
    labels = LabelSet(names=tuple(sorted(TOPICS)))
    with FusionqClient(settings) as client, open(out_path, "a", encoding="utf-8") as out:
        while time.time() < deadline:
            mode, n = rng.choice(MODES), rng.choice(SIZES)
            texts, _ = topic_texts(rng, n)
            record = {"key": f"chaos-{seed}-{uuid.uuid4().hex[:8]}", "mode": mode, "n": n, "errors": []}
            for _ in range(90):  # up to ~3 minutes of outage, retrying with the same key
                try:
                    if mode == "llm":
                        job = client.submit_llm(texts, labels, source="local", idempotency_key=record["key"])
                    else:
                        job = client.submit(texts, "chaos", mode, idempotency_key=record["key"])
                    record["job_id"] = str(job)
                    break
                except Exception as exc:  # noqa: BLE001 - every failure is recorded and explained
                    record["errors"].append(f"{type(exc).__name__}: {str(exc)[:160]}")
                    time.sleep(2)
            out.write(json.dumps(record) + "\n")
            out.flush()
            time.sleep(rng.uniform(0.5, 3.0))


class Box:
    """The worker processes, under a supervisor: one the scheduler killed is started again after a
    pause; one that exits by itself is started again at once and recorded as a crash."""

    def __init__(self, env: dict, log_dir: Path) -> None:
        self.env, self.log_dir, self.procs, self.restarts = env, log_dir, {}, Counter()
        self.lock = threading.Lock()
        self.crashes: list[dict] = []

    def supervise(self, stop: threading.Event, t0: float) -> None:
        """Every 2 s until ``stop``: restart workers that exited without being told to, as compose's
        ``restart: unless-stopped`` or Kubernetes would."""
        while not stop.wait(2):
            with self.lock:
                exited = [(name, proc) for name, proc in self.procs.items() if proc.poll() is not None]
                for name, _ in exited:
                    del self.procs[name]
            for name, proc in exited:
                self.crashes.append({"at_s": round(time.monotonic() - t0), "worker": name, "exit": proc.returncode,
                                     "why": _last_error(proc.log_path)})
                print(f"[{self.crashes[-1]['at_s']:5d} s] {name} exited by itself ({proc.returncode}); restarted",
                      file=sys.stderr, flush=True)
                self.start(name)

    def start(self, name: str) -> None:
        options = {"llm_local": {"pool": "threads", "concurrency": 4}}.get(name, {})
        extra = {"FUSIONQ_TORCH_THREADS": "1"} if name == "fusion" else {}
        proc = (start_beat(env=self.env, log_dir=self.log_dir) if name.startswith("beat")
                else start_worker(name, env={**self.env, **extra}, log_dir=self.log_dir, **options))
        with self.lock:
            self.procs[name] = proc

    def kill(self, name: str, pause: float) -> None:
        with self.lock:
            proc = self.procs.pop(name)
        proc.kill()
        proc.wait()
        time.sleep(pause)
        self.start(name)
        self.restarts[name] += 1

    def stop_all(self) -> None:
        with self.lock:
            procs, self.procs = dict(self.procs), {}
        for proc in procs.values():
            try:
                proc.send_signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
            stop_worker(proc)


def _last_error(log_path: Path) -> str:
    """The last CRITICAL or ERROR line of a worker's log: why it exited."""
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if "CRITICAL" in line or "ERROR" in line]
    return lines[-1][:300] if lines else "no error logged"


def inject(fault: str, box: Box, llm: FakeOpenAIServer, rng: random.Random, lease: int) -> None:
    if fault.startswith("kill "):
        box.kill(fault.split()[1], pause=rng.uniform(1, 5))
    elif fault == "sigstop embed past its lease":
        proc = box.procs["embed"]
        proc.send_signal(signal.SIGSTOP)
        time.sleep(lease + 10)
        proc.send_signal(signal.SIGCONT)
    elif fault == "flushdb broker":
        redis.Redis.from_url(BROKER).flushdb()
    elif fault == "restart redis":
        stop_redis()
        time.sleep(rng.uniform(1, 5))
        start_redis()
    elif fault == "restart postgres":
        postgres("restart")
    elif fault == "postgres down 10 s":
        postgres("stop")
        time.sleep(10)
        postgres("start")
    elif fault == "second beat for 60 s":
        box.start("beat-2")
        time.sleep(60)
        with box.lock:
            proc = box.procs.pop("beat-2")
        stop_worker(proc)
    elif fault.startswith("llm "):
        llm.fail_for(fault.split()[1], 10.0)
    dispose_engines()  # this process's pooled connections may be dead after a restart


FAULTS = ["kill embed", "kill fusion", "kill llm_local", "kill maintenance", "sigstop embed past its lease",
          "flushdb broker", "restart redis", "restart postgres", "postgres down 10 s", "second beat for 60 s",
          "llm 429", "llm 500", "llm hang", "llm garbage"]


def audit(url: str, records: list[dict]) -> dict:
    """Counts over every item of every job in the database, and the clients' view of their submits."""
    with session_for(url) as session:
        items = session.execute(sa.select(Item.id, Item.status, Item.attempts, Item.resends, Item.error)).all()
        per_item = dict(session.execute(sa.select(Prediction.item_id, sa.func.count()).group_by(Prediction.item_id)).all())
        flags = Counter(flag for (row,) in session.execute(sa.select(Prediction.flags)) for flag in row)
        jobs = dict(session.execute(sa.select(Job.idempotency_key, Job.status)).all())
        request_attempts = session.scalars(sa.select(LlmRequest.attempts)).all()
    failed = Counter(_reason(i.error) for i in items if i.status == "failed")
    submitted = [r for r in records if "job_id" in r]
    return {
        "jobs_submitted": len(submitted), "jobs_in_database": len(jobs),
        "jobs_not_completed": sum(1 for s in jobs.values() if s != "completed"),
        "submits_that_never_succeeded": [r for r in records if "job_id" not in r],
        "submit_errors_retried": Counter(e.split(":")[0] for r in records for e in r["errors"]),
        "keys_with_two_jobs": len(records) - len({r["key"] for r in records}),
        "items": len(items),
        "predicted_once": sum(1 for i in items if i.status == "done" and per_item.get(i.id) == 1),
        "predicted_twice_or_more": sum(1 for n in per_item.values() if n > 1),
        "lost": sum(1 for i in items if i.status not in ("done", "failed") or (i.status == "done" and i.id not in per_item)),
        "failed": sum(failed.values()), "failed_by_reason": dict(failed.most_common()),
        "flagged_by_flag": dict(flags.most_common()),
        "reprocessed_items": sum(max(i.attempts - 1, 0) for i in items),
        "reprocessed_llm_requests": sum(max(a - 1, 0) for a in request_attempts),
        "lost_message_resends": sum(i.resends for i in items),
    }


def _reason(error: str | None) -> str:
    """An item's error with its URLs, ports and numbers blanked, so equal causes group together."""
    import re

    text = re.sub(r"https?://\S+", "<url>", error or "")
    return re.sub(r"\d+", "N", text)[:200]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="how long the stream and the faults run")
    parser.add_argument("--clients", type=int, default=3, help="submitting processes")
    parser.add_argument("--fault-every", type=float, nargs=2, default=(20.0, 50.0), metavar=("MIN_S", "MAX_S"))
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated subset of: " + ", ".join(FAULTS))
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", default="bench/out/chaos.json")
    args = parser.parse_args()
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    rng = random.Random(args.seed)
    result = {**machine(), "minutes": args.minutes, "clients": args.clients, "seed": args.seed, "faults": []}
    print(f"CPU: {result['cpu']}", file=sys.stderr, flush=True)
    topic_words = {label: words for label, words in TOPICS.items()}
    with FakeOpenAIServer(answer_fn=keyword_answer(topic_words), hang_seconds=5.0) as llm, \
            scratch_services("fusionq-chaos-", redis_url=BROKER) as (url, tmp):
        llm_spec = f"openai:local-model@{llm.base_url}"
        settings = Settings(home=tmp, database_url=url, broker_url=BROKER, artifact_dir=tmp / "artifacts",
                            llm_local=llm_spec, escalation_tiers=LLM_ENV["FUSIONQ_ESCALATION_TIERS"])
        texts, labels = topic_texts(random.Random(0), 120)
        train_classifier(settings=settings, name="chaos", encoders=["sentence-transformers/all-MiniLM-L6-v2"],
                         data=LabelledData(texts=texts, labels=[[x] for x in labels], multi_label=False, source="chaos"),
                         layers=(-1,), fusion="concat", show_progress=False, llms=["local"])
        env = {"FUSIONQ_DATABASE_URL": url, "FUSIONQ_BROKER_URL": BROKER, "FUSIONQ_ARTIFACT_DIR": str(tmp / "artifacts"),
               "FUSIONQ_LLM_LOCAL": llm_spec, "HF_HUB_OFFLINE": "1", **LLM_ENV}
        box = Box(env, tmp / "logs")
        memory: list[dict] = []
        stop_sampling = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not stop_sampling.wait(30):
                with box.lock:
                    pids = {name: p.pid for name, p in box.procs.items() if not name.startswith("beat")}
                row = {"t_s": round(time.monotonic() - t0)}
                for name, pid in pids.items():
                    try:
                        rss = rss_mb(pid)
                    except OSError:  # it was killed a moment ago
                        continue
                    if rss == rss:  # NaN: a process being reaped has no resident size
                        row[name] = round(rss)
                memory.append(row)

        records_dir = tmp / "clients"
        records_dir.mkdir()
        clients = []
        try:
            for name in ("fusion", "embed", "llm_local", "maintenance", "beat"):
                box.start(name)
            threading.Thread(target=sample, daemon=True).start()
            threading.Thread(target=box.supervise, args=(stop_sampling, time.monotonic()), daemon=True).start()
            deadline = time.time() + args.minutes * 60
            spawn = multiprocessing.get_context("spawn")
            client_settings = settings.model_copy(update={"llm_local": llm_spec})
            for n in range(args.clients):
                clients.append(spawn.Process(target=client_loop, args=(client_settings, deadline, args.seed * 100 + n,
                                                                       str(records_dir / f"client-{n}.jsonl"))))
                clients[-1].start()
            started, deck = time.monotonic(), []
            while time.time() < deadline - 30:
                time.sleep(rng.uniform(*args.fault_every))
                if not deck:  # every fault once per round, in a random order: none left out of a run
                    deck = rng.sample(faults, len(faults))
                fault = deck.pop()
                at = round(time.monotonic() - started)
                print(f"[{at:5d} s] {fault}", file=sys.stderr, flush=True)
                inject(fault, box, llm, rng, settings.item_lease_seconds)
                result["faults"].append({"at_s": at, "fault": fault})
            for proc in clients:
                proc.join(timeout=300)
            records = [json.loads(line) for path in sorted(records_dir.glob("*.jsonl"))
                       for line in path.read_text().splitlines()]
            print(f"stream over: {len(records)} jobs; waiting for the last ones", file=sys.stderr, flush=True)
            drained = wait_until_complete(url, timeout=900)
            result["drain_seconds"] = drained
            stop_sampling.set()
            result["counts"] = audit(url, records)
            result["worker_restarts"] = dict(box.restarts)
            result["worker_crashes"] = box.crashes
            result["fault_counts"] = dict(Counter(f["fault"] for f in result["faults"]))
            result["memory_summary"] = summarize_memory(memory)
            result["memory_mb"] = memory
            write_result(result, args.out)  # before the cleanup: the counts are the run's point
        finally:
            stop_sampling.set()
            for proc in clients:
                if proc.is_alive():
                    proc.kill()
            box.stop_all()
    counts = result.get("counts", {})
    ok = counts.get("lost") == 0 and counts.get("predicted_twice_or_more") == 0 and counts.get("jobs_not_completed") == 0
    return 0 if ok else 1


def wait_until_complete(url: str, timeout: float) -> float | None:
    """Seconds until every job in the database completed, or None if some did not within ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with session_for(url) as session:
                left = session.scalar(sa.select(sa.func.count()).select_from(Job).where(Job.status != "completed"))
        except sa.exc.OperationalError:
            left = None
        if left == 0:
            return round(time.monotonic() - started, 1)
        time.sleep(2)
    return None


def summarize_memory(rows: list[dict]) -> dict:
    """Per worker: resident MB at the first and last sample and the highest."""
    names = sorted({k for row in rows for k in row if k != "t_s"})  # empty when no sample was taken
    return {name: {"first": next(r[name] for r in rows if name in r), "last": next(r[name] for r in reversed(rows) if name in r),
                   "max": max(r[name] for r in rows if name in r)} for name in names}


if __name__ == "__main__":
    sys.exit(main())
