"""Telling a waiting caller that its job finished: Postgres NOTIFY on completion, LISTEN in the client.

NOTIFY is transactional: it is delivered when the completing transaction commits, never before,
so a woken caller always finds the finished rows. The listener subscribes before the caller's
first look at the job, so a completion can never fall between the look and the wait. SQLite (the
embedded default, one process) has no such channel: there the transaction that completes a job
wakes the waiters of its own process once it commits (:data:`IN_PROCESS_COMPLETIONS`), and a
waiter still looks every short poll for work that another process finished.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.common import on_postgres

log = logging.getLogger(__name__)


def job_channel(job_id: uuid.UUID) -> str:
    """The job's own channel (a Postgres identifier: 40 characters, lower case)."""
    return f"fusionq_job_{job_id.hex}"


def job_channel_of(job_id_column):
    """:func:`job_channel` computed by Postgres from a job id column (for statements built once)."""
    return sa.func.concat("fusionq_job_", sa.func.replace(sa.cast(job_id_column, sa.Text), "-", ""))


def notify_expression(channel, payload=""):
    """``pg_notify`` on ``channel`` (a name, or an expression such as :func:`job_channel_of`), as an
    expression: a statement that completes a job can queue its notice itself (Postgres sends it
    when the transaction commits). ``payload``: text, or a text expression, the waiter receives;
    the stages send the finished job's progress, so the waiter needs no query of its own."""
    return sa.func.pg_notify(channel, payload)


def notify_job_finished(session: Session, job_id: uuid.UUID) -> None:
    """Queue the job's notification in the caller's transaction (sent by Postgres on commit; on
    SQLite, this process's waiters are woken once the session commits)."""
    if on_postgres(session):
        session.execute(sa.select(notify_expression(job_channel(job_id))))
    else:
        sa.event.listen(session, "after_commit", IN_PROCESS_COMPLETIONS.signal, once=True)


class InProcessCompletions:
    """Jobs completed in this process, for waiters in this process: the embedded default's workers
    are threads beside the caller, and SQLite has no NOTIFY. A generation count rather than a bare
    event: a waiter notes the generation before it looks at its job, and a completion committed
    after that look wakes it even if it came before the wait began. Waiters wake on any job's
    completion and look at their own (one cheap query)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.generation = 0

    def signal(self, *_) -> None:
        with self._changed:
            self.generation += 1
            self._changed.notify_all()

    def wait_past(self, generation: int, timeout: float) -> bool:
        """Whether a completion came after ``generation`` (at once, or within ``timeout`` seconds)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.generation != generation, timeout)


IN_PROCESS_COMPLETIONS = InProcessCompletions()


# Channels one listener keeps at most: a job submitted but never waited on is unsubscribed once
# this many newer ones are (its waiter, if it comes, then looks before it waits, as for any job).
MAX_CHANNELS = 1000


class JobListener:
    """Waits for job notifications on one dedicated autocommit connection (Postgres), or sleeps.

    Opened once per client and reused: :meth:`listen` subscribes to a job's channel before anyone
    could finish the job unseen (the client does it before sending the job's messages) or before
    the caller's first look at it. :meth:`unlisten` is deferred and sent with the next LISTEN, so a
    wait costs no round trip of its own. A notification for another subscribed job is remembered
    for that job's wait. A lost connection (a database restart) degrades to sleeping and is
    reopened on the next :meth:`listen`: the caller keeps looking at the job, so a notification
    missed then costs at most one wait, never a hang.
    """

    def __init__(self, url: str) -> None:
        self._url = sa.make_url(url)
        self._connection = None
        self._channels: dict[str, None] = {}  # subscribed, oldest first
        self._stale: list[str] = []  # to UNLISTEN with the next command
        self._told: dict[str, str] = {}  # channel -> payload, notified while another job was awaited
        self._generation_seen = IN_PROCESS_COMPLETIONS.generation  # without Postgres: as of the last listen

    @property
    def notifies(self) -> bool:
        """Whether this database can tell a waiter (Postgres); elsewhere :meth:`wait` only sleeps."""
        return self._url.get_backend_name() == "postgresql"

    def subscribed(self, job_id: uuid.UUID) -> bool:
        """Whether the job's channel is listened to now (so its completion cannot go unseen)."""
        return self._connection is not None and job_channel(job_id) in self._channels

    def listen(self, job_id: uuid.UUID) -> None:
        if not self.notifies:
            self._generation_seen = IN_PROCESS_COMPLETIONS.generation  # a completion from now on wakes the wait
            return
        import psycopg

        channel = job_channel(job_id)
        try:
            if self._connection is None:
                conninfo = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
                self._connection = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
                self._channels.clear()
                self._stale.clear()
            if channel not in self._channels:
                while len(self._channels) >= MAX_CHANNELS:
                    self._stale.append(next(iter(self._channels)))
                    self._channels.pop(self._stale[-1])
                commands = [f'UNLISTEN "{old}"' for old in self._stale if old != channel] + [f'LISTEN "{channel}"']
                self._connection.execute("; ".join(commands))  # no parameters: one round trip for them all
                self._stale.clear()
                self._channels[channel] = None
        except psycopg.Error as exc:
            log.warning("cannot LISTEN for job completion (%s); polling instead", exc)
            self.close()

    def unlisten(self, job_id: uuid.UUID) -> None:
        channel = job_channel(job_id)
        self._told.pop(channel, None)
        if channel in self._channels:
            del self._channels[channel]
            self._stale.append(channel)

    def wait(self, timeout: float, job_id: uuid.UUID | None = None) -> bool:
        """Block until a notification arrives (True) or ``timeout`` passes (False): for ``job_id``
        when given, else on any listened channel."""
        return self.wait_for(timeout, job_id) is not None

    def wait_for(self, timeout: float, job_id: uuid.UUID | None = None) -> str | None:
        """The payload of the next notification (for ``job_id`` when given, else on any listened
        channel), or None when ``timeout`` passes first. Without Postgres: "" (a notice without
        payload: look at the job) once a job completed in this process since the last :meth:`listen`."""
        if self._connection is None:
            if not self.notifies:
                return "" if IN_PROCESS_COMPLETIONS.wait_past(self._generation_seen, timeout) else None
            time.sleep(timeout)  # Postgres, but the listening connection is lost: look again after this
            return None
        import psycopg

        wanted = None if job_id is None else job_channel(job_id)
        if wanted in self._told:
            return self._told.pop(wanted)
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                for note in self._connection.notifies(timeout=left, stop_after=1):
                    if wanted is None or note.channel == wanted:
                        return note.payload
                    if note.channel in self._channels:
                        self._told[note.channel] = note.payload
            return None
        except psycopg.Error as exc:
            log.warning("lost the job-completion listener (%s); polling instead", exc)
            self.close()
            return None

    def close(self) -> None:
        self._channels.clear()
        self._stale.clear()
        self._told.clear()
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None

    def __enter__(self) -> "JobListener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class JobWatch:
    """One thread's wait for one job's notice, handed over by a :class:`NoticeHub`."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.listening = threading.Event()  # set once the hub's LISTEN for the channel is in force
        self._arrived = threading.Event()
        self._payload: str | None = None

    def deliver(self, payload: str) -> None:
        self._payload = payload
        self._arrived.set()

    def wait(self, timeout: float) -> str | None:
        """The payload of the next notice for the job, or None when ``timeout`` passes first. Only
        meaningful while :attr:`listening` is set; otherwise the caller polls."""
        if not self._arrived.wait(timeout):
            return None
        self._arrived.clear()
        return self._payload


class NoticeHub:
    """Job notices for many threads (the HTTP API's request threads) over one LISTEN connection.

    :class:`JobListener` serves one caller thread, which reads its own connection. A server's
    request threads cannot share that: here one background thread owns the connection, runs the
    LISTEN/UNLISTEN commands that :meth:`watch` asks for, and hands each notice to the threads
    watching that job. A watcher looks at the job after its LISTEN is in force and before it
    waits, so a completion cannot fall between the two. Without Postgres, or while the connection
    is lost, :attr:`JobWatch.listening` is not set and the caller polls the job instead.
    """

    LISTEN_TIMEOUT = 2.0  # seconds a watch waits for its LISTEN before it falls back to looking

    def __init__(self, url: str) -> None:
        self._url = sa.make_url(url)
        self._lock = threading.Lock()
        self._watches: dict[str, list[JobWatch]] = {}
        self._listened: set[str] = set()  # channels LISTENed on the current connection
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)  # a full pipe means a wake is pending: never block a request on it
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def notifies(self) -> bool:
        return self._url.get_backend_name() == "postgresql"

    @contextmanager
    def watch(self, job_id: uuid.UUID) -> Iterator[JobWatch]:
        """A :class:`JobWatch` for ``job_id``, listening (when it can) by the time it is yielded."""
        watch = JobWatch(job_channel(job_id))
        if self.notifies and not self._closed:
            with self._lock:
                self._watches.setdefault(watch.channel, []).append(watch)
                if watch.channel in self._listened:
                    watch.listening.set()
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="fusionq-notices", daemon=True)
                    self._thread.start()
            if not watch.listening.is_set():
                self._wake()
                watch.listening.wait(self.LISTEN_TIMEOUT)
        try:
            yield watch
        finally:
            with self._lock:
                left = self._watches.get(watch.channel, [])
                if watch in left:
                    left.remove(watch)
                if not left:
                    self._watches.pop(watch.channel, None)
            self._wake()  # the channel's UNLISTEN goes with the thread's next commands

    def close(self) -> None:
        self._closed = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _wake(self) -> None:
        if self._thread is None:  # nobody reads the pipe (no Postgres, or no watch yet)
            return
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # the pipe is full (a wake is pending anyway) or closed
            pass

    def _run(self) -> None:
        import psycopg

        connection = None
        while not self._closed:
            try:
                if connection is None:
                    conninfo = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
                    connection = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
                    with self._lock:
                        self._listened.clear()
                self._sync_channels(connection)
                for note in connection.notifies(timeout=0):  # what arrived, including during the commands
                    self._deliver(note.channel, note.payload)
                select.select([connection.fileno(), self._wake_r], [], [], 1.0)
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            except (psycopg.Error, OSError) as exc:
                log.warning("job-notice listener lost (%s); request threads poll until it is back", exc)
                with self._lock:
                    self._listened.clear()
                    for watches in self._watches.values():
                        for watch in watches:
                            watch.listening.clear()
                if connection is not None:
                    connection.close()
                    connection = None
                time.sleep(1.0)
        if connection is not None:
            connection.close()

    def _sync_channels(self, connection) -> None:
        """LISTEN to every watched channel and UNLISTEN the rest, in one round trip. Under the lock, so
        that a watch registering meanwhile sees which channels are really listened to."""
        with self._lock:
            add, drop = set(self._watches) - self._listened, self._listened - set(self._watches)
            if not add and not drop:
                return
            connection.execute("; ".join([f'UNLISTEN "{c}"' for c in sorted(drop)]
                                         + [f'LISTEN "{c}"' for c in sorted(add)]))
            self._listened = (self._listened | add) - drop
            for channel in add:
                for watch in self._watches[channel]:
                    watch.listening.set()

    def _deliver(self, channel: str, payload: str) -> None:
        with self._lock:
            watches = list(self._watches.get(channel, []))
        for watch in watches:
            watch.deliver(payload)
