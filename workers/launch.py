"""Start and stop real `celery worker` processes for one box (tests, benchmarks, local runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path


def start_worker(queue: str, *, env: dict[str, str], log_dir: Path, concurrency: int = 1, pool: str = "solo",
                 timeout: float = 120.0) -> subprocess.Popen:
    """Launch ``celery -A workers.app worker -Q queue`` and wait until it reports ready.

    ``env`` is added to this process's environment (FUSIONQ_* URLs). The log goes to
    ``log_dir/<queue>-<id>.log``; a worker that dies before it is ready raises with its log tail.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    name = f"{queue}-{uuid.uuid4().hex[:6]}"
    log_path = log_dir / f"{name}.log"
    cmd = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", queue, "-c", str(concurrency),
           "-P", pool, "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-E", "-l", "INFO"]
    handle = log_path.open("w")
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parent.parent)
    proc.log_path = log_path  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker for {queue} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        if " ready." in log_path.read_text():
            return proc
        time.sleep(0.2)
    stop_worker(proc)
    raise RuntimeError(f"celery worker for {queue} not ready after {timeout:.0f}s:\n{log_path.read_text()[-3000:]}")


def stop_worker(proc: subprocess.Popen, *, timeout: float = 30.0) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
