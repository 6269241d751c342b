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
    name = f"{queue}-{uuid.uuid4().hex[:6]}"
    cmd = ["worker", "-Q", queue, "-c", str(concurrency), "-P", pool, "-n", f"{name}@%h", "--without-gossip",
           "--without-mingle", "-E", "-l", "INFO"]
    return _start_celery(cmd, name=name, ready=" ready.", env=env, log_dir=log_dir, timeout=timeout)


def start_beat(*, env: dict[str, str], log_dir: Path, timeout: float = 60.0) -> subprocess.Popen:
    """Launch ``celery -A workers.app beat`` (it sends the sweeper every FUSIONQ_SWEEP_INTERVAL seconds)."""
    name = f"beat-{uuid.uuid4().hex[:6]}"
    cmd = ["beat", "-s", str(log_dir / f"{name}-schedule"), "-l", "INFO"]
    return _start_celery(cmd, name=name, ready="beat: Starting", env=env, log_dir=log_dir, timeout=timeout)


def start_flower(*, port: int, basic_auth: str, env: dict[str, str], log_dir: Path,
                 timeout: float = 60.0) -> subprocess.Popen:
    """Launch Flower on 127.0.0.1:``port``, behind HTTP basic auth (``user:password``)."""
    name = f"flower-{uuid.uuid4().hex[:6]}"
    cmd = ["flower", "--address=127.0.0.1", f"--port={port}"]
    return _start_celery(cmd, name=name, ready="Visit me at", env={**env, "FLOWER_BASIC_AUTH": basic_auth},
                         log_dir=log_dir, timeout=timeout)


def _start_celery(args: list[str], *, name: str, ready: str, env: dict[str, str], log_dir: Path,
                  timeout: float) -> subprocess.Popen:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    handle = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.app", *args], env={**os.environ, **env},
                            stdout=handle, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
    proc.log_path = log_path  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"celery {name} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        if ready in log_path.read_text():
            return proc
        time.sleep(0.2)
    stop_worker(proc)
    raise RuntimeError(f"celery {name} not ready after {timeout:.0f}s:\n{log_path.read_text()[-3000:]}")


def stop_worker(proc: subprocess.Popen, *, timeout: float = 30.0) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
