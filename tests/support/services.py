"""Stop and start the box's Redis and PostgreSQL, for the fault tests and the chaos run; run a
peer HTTP server on loopback for a test.

Redis is started as .ci/run starts it (no persistence), so a restart loses every message.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

REDIS_CLI = ["redis-cli", "-h", "127.0.0.1", "-p", "6379"]


def wait_for(condition, timeout: float = 60.0, what: str = "condition", every: float = 0.01) -> None:
    """Poll ``condition`` every ``every`` seconds until it holds; TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def redis_up() -> bool:
    return subprocess.run([*REDIS_CLI, "ping"], capture_output=True).returncode == 0


def stop_redis() -> None:
    subprocess.run([*REDIS_CLI, "shutdown", "nosave"], capture_output=True)
    wait_for(lambda: not redis_up(), 30, "Redis to stop", every=0.1)


def start_redis(log_file: str = "/tmp/fusionq-redis.log") -> None:
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
                    "--save", "", "--appendonly", "no", "--dir", "/tmp", "--logfile", log_file],
                   check=True, capture_output=True)
    wait_for(redis_up, 30, "Redis to start", every=0.1)


def postgres(action: str) -> None:
    """``start``, ``stop`` or ``restart`` the box's PostgreSQL cluster (fast shutdown)."""
    version = sorted(os.listdir("/etc/postgresql"))[0]
    fast = ["-m", "fast"] if action != "start" else []
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action, *fast],
                   check=True, capture_output=True)
    if action != "stop":
        wait_for(lambda: subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode == 0, 60, "PostgreSQL",
                 every=0.1)


@contextlib.contextmanager
def http_server(command: list[str], *, port: int, ready_path: str, log: Path, what: str, timeout: float = 120):
    """Run ``command`` (an HTTP server on loopback ``port``), wait until ``ready_path`` answers 200,
    yield its base URL, stop it after. A server that dies while starting fails with its log's tail."""
    import httpx

    with log.open("w") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(url + ready_path, timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None  # stop waiting on a dead server; the assertion below says why

    try:
        wait_for(ready, timeout=timeout, what=what, every=0.5)
        assert proc.poll() is None, log.read_text()[-3000:]
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
