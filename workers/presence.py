"""Which workers are alive and on which queues: each worker process announces itself in the broker.

A daemon thread in every worker writes ``fusionq:worker:<hostname>`` (its queues, pid, time) with a
short expiry and renews it every few seconds; a thread, not the worker's event loop, so a solo
worker busy with a long batch still counts as alive. ``/readyz`` and the metrics read these keys.
Redis brokers only; the embedded worker lives in the caller's process and needs no announcing.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from celery import Celery

from workers.inflight import queue_keys

log = logging.getLogger(__name__)

KEY_PREFIX = "fusionq:worker:"
ANNOUNCE_EVERY_SECONDS = 5
EXPIRES_SECONDS = 20


def start_announcing(app: Celery, hostname: str, queues: list[str]) -> threading.Thread | None:
    """Announce this worker until the process ends; None where the broker is not Redis."""
    if not str(app.conf.broker_url or "").startswith(("redis://", "rediss://")):
        return None

    def announce() -> None:
        while True:
            try:
                with app.connection_for_write() as connection:
                    client = connection.default_channel.client
                    while True:
                        client.set(KEY_PREFIX + hostname, json.dumps(
                            {"queues": queues, "pid": os.getpid(), "at": time.time()}), ex=EXPIRES_SECONDS)
                        time.sleep(ANNOUNCE_EVERY_SECONDS)
            except Exception as exc:  # noqa: BLE001 - the broker is down: try again, never kill the worker
                log.debug("cannot announce worker %s: %s", hostname, exc)
                time.sleep(ANNOUNCE_EVERY_SECONDS)

    thread = threading.Thread(target=announce, name="fusionq-presence", daemon=True)
    thread.start()
    return thread


def live_workers(app: Celery) -> dict[str, dict]:
    """hostname -> {"queues", "pid", "at"} of every worker that announced itself recently."""
    with app.connection_for_read() as connection:
        client = connection.default_channel.client
        keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=500))
        values = client.mget(keys) if keys else []
    workers = {}
    for key, value in zip(keys, values):
        if value is not None:
            name = key.decode() if isinstance(key, bytes) else key
            workers[name.removeprefix(KEY_PREFIX)] = json.loads(value)
    return workers


def queue_depths(app: Celery, queues) -> dict[str, int]:
    """Messages waiting in each queue (Redis list lengths, priority lists included)."""
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        return {queue: sum(channel.client.llen(key) for key in queue_keys(channel, queue)) for queue in queues}
