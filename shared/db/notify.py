"""Telling a waiting caller that its job finished: Postgres NOTIFY on completion, LISTEN in the client.

NOTIFY is transactional: it is delivered when the completing transaction commits, never before,
so a woken caller always finds the finished rows. The listener subscribes before the caller's
first look at the job, so a completion can never fall between the look and the wait. SQLite (the
embedded default, one process) has no such channel; there the listener just sleeps a short poll.
"""

from __future__ import annotations

import logging
import time
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.common import on_postgres

log = logging.getLogger(__name__)


def job_channel(job_id: uuid.UUID) -> str:
    """The job's own channel (a Postgres identifier: 40 characters, lower case)."""
    return f"fusionq_job_{job_id.hex}"


def notify_job_finished(session: Session, job_id: uuid.UUID) -> None:
    """Queue the job's notification in the caller's transaction (sent by Postgres on commit)."""
    if on_postgres(session):
        session.execute(sa.select(sa.func.pg_notify(job_channel(job_id), "")))


class JobListener:
    """Waits for job notifications on one dedicated autocommit connection (Postgres), or sleeps.

    Opened once per client and reused: :meth:`listen` subscribes to a job's channel before the
    caller's first look at it, :meth:`unlisten` drops it. A lost connection (a database restart)
    degrades to sleeping and is reopened on the next :meth:`listen`: the caller keeps looking at
    the job, so a notification missed then costs at most one wait, never a hang.
    """

    def __init__(self, url: str) -> None:
        self._url = sa.make_url(url)
        self._connection = None
        self._channels: set[str] = set()

    @property
    def notifies(self) -> bool:
        """Whether this database can tell a waiter (Postgres); elsewhere :meth:`wait` only sleeps."""
        return self._url.get_backend_name() == "postgresql"

    def listen(self, job_id: uuid.UUID) -> None:
        if not self.notifies:
            return
        import psycopg

        channel = job_channel(job_id)
        try:
            if self._connection is None:
                conninfo = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
                self._connection = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
                self._channels.clear()
            if channel not in self._channels:
                self._connection.execute(f'LISTEN "{channel}"')
                self._channels.add(channel)
        except psycopg.Error as exc:
            log.warning("cannot LISTEN for job completion (%s); polling instead", exc)
            self.close()

    def unlisten(self, job_id: uuid.UUID) -> None:
        channel = job_channel(job_id)
        if self._connection is None or channel not in self._channels:
            return
        import psycopg

        try:
            self._connection.execute(f'UNLISTEN "{channel}"')
            self._channels.discard(channel)
        except psycopg.Error:
            self.close()

    def wait(self, timeout: float) -> bool:
        """Block until a notification on a listened channel arrives (True) or ``timeout`` passes (False)."""
        if self._connection is None:
            time.sleep(timeout)
            return False
        import psycopg

        try:
            for _ in self._connection.notifies(timeout=timeout, stop_after=1):
                return True
            return False
        except psycopg.Error as exc:
            log.warning("lost the job-completion listener (%s); polling instead", exc)
            self.close()
            return False

    def close(self) -> None:
        self._channels.clear()
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None

    def __enter__(self) -> "JobListener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
