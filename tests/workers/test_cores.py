"""workers.cores: prefork children share the host's cores by how many of them work now, and a child
killed while it works stops counting. Real forked processes; no Celery needed."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest
import torch

from workers import cores
from workers.cores import CoreShare

FORK = multiprocessing.get_context("fork")


def _work_until_told(share: CoreShare, started, release, threads_seen) -> None:
    with share.working() as rebalance:
        threads_seen.put(torch.get_num_threads())
        started.set()
        release.wait(30)
        rebalance()
        threads_seen.put(torch.get_num_threads())


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_working_children_split_the_cores_and_a_killed_one_stops_counting(restore_torch_threads):
    share = CoreShare(cores=4)
    assert not share.in_child() and share.working_now() == 0 and share.threads_now() == 4
    seen = FORK.Queue()
    children = []
    for _ in range(2):
        started, release = FORK.Event(), FORK.Event()
        child = FORK.Process(target=_work_until_told, args=(share, started, release, seen))
        child.start()
        assert started.wait(30)
        children.append((child, release))
    assert share.working_now() == 2 and share.threads_now() == 2
    first_seen = sorted([seen.get(timeout=10), seen.get(timeout=10)])
    assert first_seen == [2, 4]  # the first took all four cores, the second its half

    killed, _ = children[0]
    os.kill(killed.pid, signal.SIGKILL)  # its slot is never cleared ...
    killed.join(10)
    assert share.working_now() == 1  # ... but a dead pid does not count
    survivor, release = children[1]
    release.set()
    assert seen.get(timeout=10) == 4  # alone again: rebalance gives it every core
    survivor.join(10)
    assert survivor.exitcode == 0 and share.working_now() == 0

    with share.working() as rebalance:  # a later worker reuses the dead child's slot
        assert share.working_now() == 1 and torch.get_num_threads() == 4
        rebalance()
    assert share.working_now() == 0


def test_a_child_is_told_apart_from_the_process_that_made_the_share():
    share = CoreShare(cores=2)
    answer = FORK.Queue()
    child = FORK.Process(target=lambda: answer.put(share.in_child()))
    child.start()
    assert answer.get(timeout=10) is True and share.in_child() is False
    child.join(10)


def _report_share(answer) -> None:
    with cores.cores_while_working() as rebalance:
        answer.put((rebalance is not None, torch.get_num_threads()))


def test_only_the_children_of_the_process_that_asked_take_the_cores(monkeypatch, restore_torch_threads):
    monkeypatch.setattr(cores, "_SHARE", None)
    with cores.cores_while_working() as rebalance:
        assert rebalance is None  # a solo or threads worker never asked: torch's threads stay
    cores.share_among_children()
    with cores.cores_while_working() as rebalance:
        assert rebalance is None  # the worker's main process itself keeps its threads
    answer = FORK.Queue()
    child = FORK.Process(target=_report_share, args=(answer,))
    child.start()
    shares, threads = answer.get(timeout=10)
    child.join(10)
    assert shares and threads == cores.host_cores()  # alone: every core
    assert cores.even_share(2) == max(1, cores.host_cores() // 2) and cores.even_share(0) == cores.host_cores()
