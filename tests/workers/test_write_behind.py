"""The embed worker's write-behind: one write in flight, in order, drained on exit, failures contained."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy.exc import OperationalError

from workers.write_behind import WriteBehind, retry_on_database_errors


def test_writes_run_in_order_with_at_most_one_in_flight():
    writer, log, running = WriteBehind(), [], []
    lock = threading.Lock()

    def write(n):
        def run():
            with lock:
                running.append(n)
                assert len(running) == 1, running  # never two at once
            time.sleep(0.05)
            with lock:
                running.remove(n)
            log.append(n)
        return run

    started = time.monotonic()
    writer.submit(write(1))
    assert time.monotonic() - started < 0.04  # the first returns at once: the task acknowledges
    writer.submit(write(2))  # waits for the first
    assert log == [1]
    writer.drain()
    assert log == [1, 2]


def test_a_failed_write_is_logged_and_does_not_fail_the_next_task(caplog):
    writer, done = WriteBehind(), []

    def broken():
        raise RuntimeError("disk full")

    writer.submit(broken)
    writer.submit(lambda: done.append(True))  # must not raise the previous write's error
    writer.drain()
    assert done == [True]
    assert "a background write failed" in caplog.text and "disk full" in caplog.text


def test_database_errors_are_retried_then_given_up(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda _s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("UPDATE items", {}, Exception("server closed the connection"))
        return "committed"

    assert retry_on_database_errors(flaky) == "committed" and len(calls) == 3

    def dead():
        raise OperationalError("UPDATE items", {}, Exception("connection refused"))

    with pytest.raises(OperationalError):
        retry_on_database_errors(dead, max_retries=2)


def test_other_errors_are_not_retried():
    calls = []

    def wrong():
        calls.append(1)
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        retry_on_database_errors(wrong)
    assert calls == [1]
