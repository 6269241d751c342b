"""shared.threads: work on a thread that ends with it, its result or error handed back; work beside a statement."""

import os
import signal
import threading
import time

import pytest

from shared.threads import run_beside, run_on_own_thread


def test_the_result_comes_back_from_a_thread_that_has_ended():
    ran_on = []

    def work():
        ran_on.append(threading.current_thread())
        return 42

    assert run_on_own_thread(work, name="fusionq-test") == 42
    assert ran_on[0] is not threading.current_thread() and ran_on[0].name == "fusionq-test"
    ran_on[0].join(timeout=5)  # it has handed its result over; it ends right after
    assert not ran_on[0].is_alive()


def test_an_error_is_raised_in_the_caller_as_it_was():
    error = ValueError("bad fit")

    def work():
        raise error

    with pytest.raises(ValueError) as raised:
        run_on_own_thread(work, name="fusionq-test")
    assert raised.value is error


@pytest.mark.parametrize("finish", [True, False])
def test_ctrl_c_stops_the_work_or_lets_a_write_finish(finish):
    """Ctrl-C (a real SIGINT) reaches the caller while the work runs: other work is stopped where it
    is (KeyboardInterrupt raised in it too), a write is let finish; either way the thread has ended."""
    done = threading.Event()
    threads = []

    def work():
        threads.append(threading.current_thread())
        time.sleep(0.05)  # the caller is waiting for the thread by then, as it is through any real fit
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)
        done.set()

    with pytest.raises(KeyboardInterrupt):
        run_on_own_thread(work, name="fusionq-test", finish_when_interrupted=finish)
    assert done.is_set() is finish
    threads[0].join(timeout=5)
    assert not threads[0].is_alive()


def test_the_statement_runs_at_the_same_time_as_the_work():
    """Each side waits for the other to start: run one after the other, they would time out."""
    statement_started, work_started = threading.Event(), threading.Event()
    seen = {}

    def statement():
        statement_started.set()
        seen["statement thread"] = threading.current_thread()
        return work_started.wait(timeout=5)

    def work():
        work_started.set()
        return statement_started.wait(timeout=5)

    assert run_beside(statement, work) == (True, True)
    assert seen["statement thread"] is not threading.current_thread()
    assert not seen["statement thread"].is_alive()  # joined before the results came back


@pytest.mark.parametrize("failing", ["statement", "work"])
def test_an_error_on_either_side_is_raised_after_the_statement_has_finished(failing):
    """The connection must never be in two threads' hands: the caller's rollback waits for the statement."""
    finished = threading.Event()

    def statement():
        time.sleep(0.1)
        finished.set()
        if failing == "statement":
            raise ConnectionError("server closed the connection")
        return 1

    def work():
        if failing == "work":
            raise ValueError("bad features")
        return 2

    with pytest.raises(ConnectionError if failing == "statement" else ValueError):
        run_beside(statement, work)
    assert finished.is_set()
