"""What every benchmark does the same way: say which machine it ran on, write its JSON, get scratch
services, and watch worker memory."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from shared.encoders.precision import cpu_description
from workers.cores import host_cores


def machine() -> dict:
    """Date, CPU model and the flags that decide precision, cores and Python: print them with every figure."""
    return {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_description(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPython {platform.python_version()}"}


def database_facts(url: str) -> dict:
    """The Postgres a figure was measured against: its version and whether autovacuum runs (its
    ANALYZE and VACUUM share the encoder's cores when Postgres runs on the same machine, and
    machines differ: the AMX VM ran it, an EPYC VM had it off)."""
    import sqlalchemy as sa

    from shared.db.engine import session_for

    with session_for(url) as session:
        version = session.scalar(sa.text("SHOW server_version"))
        autovacuum = session.scalar(sa.text("SHOW autovacuum"))
    return {"postgres": f"{version}, autovacuum {autovacuum}"}


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (anything else is argparse's exit 2)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def add_embed_processes_option(parser) -> None:
    """``--embed-processes N``: how the benchmark's embed worker runs (see :func:`embed_pool`)."""
    parser.add_argument("--embed-processes", type=positive_int, default=host_cores(),
                        help="embed worker processes: 1 is a solo pool (the README's GPU worker); more, a "
                             "prefork pool sharing the cores (the README's CPU worker; default: one per core)")


def embed_pool(processes: int) -> dict:
    """``start_worker`` options for an embed worker of ``processes`` processes: the solo worker for
    1, else a prefork pool whose children share the cores (workers.cores)."""
    return {"concurrency": processes, "pool": "prefork"} if processes > 1 else {}


def texts_or_exit(parser, path: str | Path, n: int) -> list[str]:
    """The first ``n`` texts of the CSV at ``path``; a missing or malformed file is the parser's
    error (a message naming it, exit 2), before anything is started or written."""
    from shared.errors import DataFileError
    from shared.textio import read_texts

    try:
        return read_texts(Path(path))[:n]
    except DataFileError as exc:
        parser.error(f"--data: {exc} (the team's ../shared/data, or any CSV with a text column)")


def write_result(result: dict, out: str | Path) -> None:
    """The result as JSON in ``out`` (folders made) and on stdout."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379/12"  # the benches' own Redis database, emptied before and after


@contextlib.contextmanager
def scratch_services(prefix: str = "fusionq-bench-", *, redis_url: str = REDIS):
    """A fresh Postgres database and an empty Redis database (``redis_url``) for one benchmark;
    (database URL, scratch folder).

    Dropped, emptied and removed on the way out; stop the workers inside the block first."""
    import redis
    import sqlalchemy as sa

    from shared.db.engine import dispose_engines, upgrade

    db_name = f"fusionq_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", pool_pre_ping=True)  # survives a restart
    try:
        redis.Redis.from_url(redis_url).flushdb()
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{db_name}"'))
    except (sa.exc.OperationalError, redis.exceptions.ConnectionError) as exc:
        print(f"error: the benchmarks need Postgres ({PG_ADMIN}) and Redis ({redis_url}) on loopback: "
              f"{type(exc).__name__}: {str(exc).splitlines()[0].rstrip('.')}. Start them (.ci/run shows how) and run again.",
              file=sys.stderr)
        raise SystemExit(2) from None
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{db_name}"
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        upgrade(url)
        yield url, scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
        redis.Redis.from_url(redis_url).flushdb()


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid``, MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_pids(pid: int) -> list[int]:
    """The child processes of ``pid`` (a prefork worker's pool), [] where Linux does not list them."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def worker_memory_mb(procs: dict[str, object]) -> dict[str, float]:
    """Resident MB of each worker process and, for a prefork worker, of its largest child
    (``<name>.child``): the child runs the tasks, so its memory is the one that must stay flat."""
    memory = {}
    for name, proc in procs.items():
        memory[name] = rss_mb(proc.pid)
        children = [rss_mb(child) for child in child_pids(proc.pid)]
        if children:
            memory[f"{name}.child"] = max(children)
    return memory


class MemorySampler(threading.Thread):
    """:func:`worker_memory_mb` every ``every`` seconds, until stopped."""

    def __init__(self, procs: dict[str, object], every: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.procs, self.every, self.rows, self.stop_event = procs, every, [], threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.rows.append({"t_s": round(time.monotonic() - self.t0, 1),
                              **{name: round(mb, 1) for name, mb in worker_memory_mb(self.procs).items()}})
            self.stop_event.wait(self.every)

    def peaks(self) -> dict[str, float]:
        return {name: max(row.get(name, 0.0) for row in self.rows) for name in {k for r in self.rows for k in r} - {"t_s"}}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (Linux /proc), 0 for a process that is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu_seconds() -> dict[str, float]:
    """Whole-machine busy, idle and iowait CPU seconds so far (/proc/stat): counts processes that
    came and went between two snapshots (autovacuum workers, short backends), which per-pid sums miss."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    user, nice, system, idle, iowait, irq, softirq = fields
    tick = os.sysconf("SC_CLK_TCK")
    return {"busy": (user + nice + system + irq + softirq) / tick, "idle": idle / tick, "iowait": iowait / tick}


def _pids_named(*names: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in names:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


class CpuAccount:
    """CPU seconds spent by each role (worker processes with their prefork children, Postgres,
    Redis, this process) between :meth:`start` and :meth:`stop`: where the cores' time goes while a job runs."""

    def __init__(self, workers: dict[str, object]) -> None:
        self.workers = {name: proc.pid for name, proc in workers.items()}

    def _snapshot(self) -> dict[str, float]:
        roles = {**{name: [pid, *child_pids(pid)] for name, pid in self.workers.items()}, "client": [os.getpid()],
                 "postgres": _pids_named("postgres"), "redis": _pids_named("redis-server")}
        return {role: sum(_cpu_seconds(pid) for pid in pids) for role, pids in roles.items()}

    def start(self) -> None:
        self._started, self._machine, self._t0 = self._snapshot(), _machine_cpu_seconds(), time.monotonic()

    def stop(self) -> dict[str, float]:
        """CPU seconds per role, plus ``wall_s``, ``idle_cpu_s`` (two cores' time nobody used, from
        the per-role sums), and from the whole machine's counters ``other_cpu_s`` (busy time of no
        listed process, e.g. autovacuum workers that exited) and ``iowait_s``."""
        ended, machine_now, wall = self._snapshot(), _machine_cpu_seconds(), time.monotonic() - self._t0
        used = {role: round(ended[role] - self._started.get(role, 0.0), 2) for role in ended}
        busy = machine_now["busy"] - self._machine["busy"]
        return {**used, "wall_s": round(wall, 2),
                "idle_cpu_s": round((os.cpu_count() or 1) * wall - sum(used.values()), 2),
                "other_cpu_s": round(busy - sum(used.values()), 2),
                "iowait_s": round(machine_now["iowait"] - self._machine["iowait"], 2)}
