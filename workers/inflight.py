"""What the broker holds right now, for the sweeper: the items its messages carry, per task.

A message counts while it waits in a queue, or while a worker has it unacknowledged and took it
within the grace (a worker claims its items at once; after that its claim's lease speaks for it).
Read from kombu's own structures: Redis lists and the ``unacked`` hash (with its delivery-time
index), or the in-memory broker of the embedded default. Any other broker, or a broker that does
not answer, gives None: the sweeper then leaves queued work alone.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterable

from celery import Celery

from shared.service.sweeper import InFlight

log = logging.getLogger(__name__)

WORK_QUEUES = ("embed", "fusion", "llm_local", "llm_api")


def in_flight_view(app: Celery, *, grace_seconds: float) -> Callable[[], InFlight | None]:
    """A function reading ``app``'s broker each time it is called."""

    def read() -> InFlight | None:
        try:
            with app.connection_for_read() as connection:
                channel = connection.default_channel
                driver = connection.transport.driver_type
                if driver == "redis":
                    return _carried(_redis_messages(channel, grace_seconds))
                if driver == "memory":
                    return _carried(_memory_messages(channel))
        except Exception as exc:  # noqa: BLE001 - no view: queued work is not judged this time
            log.warning("cannot read the broker's queues (%s: %s); queued work is not judged this sweep",
                        type(exc).__name__, exc)
        return None

    return read


def queue_keys(channel, queue: str) -> set[str]:
    """The Redis lists kombu keeps for ``queue``: one per priority step."""
    return {channel._q_for_pri(queue, pri) for pri in channel.priority_steps}


def _redis_messages(channel, grace_seconds: float) -> Iterable[dict]:
    client = channel.client
    for queue in WORK_QUEUES:
        for key in queue_keys(channel, queue):
            for raw in client.lrange(key, 0, -1):
                yield _loads(raw)
    recent = client.zrangebyscore(channel.unacked_index_key, time.time() - grace_seconds, "+inf")
    if recent:
        for raw in client.hmget(channel.unacked_key, recent):
            if raw is not None:
                entry = _loads(raw)  # [message, exchange, routing key]
                yield entry[0] if isinstance(entry, list) and entry else None


def _memory_messages(channel) -> Iterable[dict]:
    for queue in WORK_QUEUES:
        waiting = channel.queues.get(queue)
        if waiting is not None:
            yield from list(waiting.queue)


def _carried(messages: Iterable[dict | None]) -> InFlight:
    """Task name -> item ids, from Celery protocol 2 messages whose arguments are (job id, item ids)."""
    carried: InFlight = {}
    for message in messages:
        try:
            task = message["headers"]["task"]
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
            carried.setdefault(task, set()).update(int(i) for i in args[1])
        except Exception:  # noqa: BLE001, S112 - a message of another shape carries no items of ours
            continue
    return carried


def _loads(raw):
    try:
        return json.loads(raw)
    except ValueError:
        return None
