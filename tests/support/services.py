"""Stop and start the box's Redis and PostgreSQL, for the fault tests and the chaos run.

Redis is started as .ci/run starts it (no persistence), so a restart loses every message.
"""

from __future__ import annotations

import os
import subprocess
import time

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
