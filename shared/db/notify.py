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

log = logging.getLogger(__name__)


def job_channel(job_id: uuid.UUID) -> str:
    """The job's own channel (a Postgres identifier: 40 characters, lower case)."""
    return f"fusionq_job_{job_id.hex}"


def notify_job_finished(session: Session, job_id: uuid.UUID) -> None:
    """Queue the job's notification in the caller's transaction (sent by Postgres on commit)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.select(sa.func.pg_notify(job_channel(job_id), "")))


class JobListener:
    """Waits for one job's notification on a dedicated autocommit connection (Postgres), or sleeps.

    A lost connection (a database restart) degrades to sleeping: the caller keeps polling, so a
    notification missed then costs at most one wait, never a hang.
    """

    def __init__(self, url: str, job_id: uuid.UUID) -> None:
        self._connection = None
        self._channel = job_channel(job_id)
        if sa.make_url(url).get_backend_name() == "postgresql":
            import psycopg

            conninfo = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
            try:
                self._connection = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
                self._connection.execute(f'LISTEN "{self._channel}"')
            except psycopg.Error as exc:
                log.warning("cannot LISTEN for job completion (%s); polling instead", exc)
                self.close()

    def wait(self, timeout: float) -> bool:
        """Block until the job's notification arrives (True) or ``timeout`` seconds pass (False)."""
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
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None

    def __enter__(self) -> "JobListener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
