"""The sweeper's view of a real Redis broker: which items the messages there carry.

A message counts while it waits in its queue and while a worker holds it unacknowledged within the
grace; a flushed broker carries nothing; an unreachable one gives no view at all (None), so the
sweeper judges no queued work on it.
"""

from __future__ import annotations

import redis

from shared.dispatch import TaskName
from shared.settings import Settings
from workers.celery_app import create_app
from workers.inflight import in_flight_view


def test_waiting_and_recently_delivered_messages_count_a_flushed_broker_carries_nothing(redis_url, tmp_path):
    app = create_app(Settings(home=tmp_path, broker_url=redis_url))
    app.send_task(str(TaskName.EMBED), args=["job-a", [1, 2, 3]])
    app.send_task(str(TaskName.FUSE), args=["job-a", [4]])
    app.send_task(str(TaskName.LLM_LOCAL), args=["job-b", [5, 6]])
    view = in_flight_view(app, grace_seconds=30)
    assert view() == {str(TaskName.EMBED): {1, 2, 3}, str(TaskName.FUSE): {4}, str(TaskName.LLM_LOCAL): {5, 6}}

    with app.connection_for_read() as conn:  # a worker takes the embed message and has not acknowledged it yet
        taken = conn.SimpleQueue("embed").get(timeout=5)
        assert taken.payload[0] == ["job-a", [1, 2, 3]]
        assert view()[str(TaskName.EMBED)] == {1, 2, 3}
        # once the grace is over, an unacknowledged message speaks no more for its items: their claim does
        assert str(TaskName.EMBED) not in in_flight_view(app, grace_seconds=0)()
        taken.ack()
    assert str(TaskName.EMBED) not in view()

    redis.Redis.from_url(redis_url).flushdb()
    assert view() == {}
    app.close()


def test_an_unreachable_broker_gives_no_view(tmp_path):
    app = create_app(Settings(home=tmp_path, broker_url="redis://127.0.0.1:1/0"))
    app.conf.broker_connection_timeout = 1
    app.conf.broker_connection_max_retries = 0
    assert in_flight_view(app, grace_seconds=30)() is None
    app.close()
