"""Engines (one per URL per process, created lazily) and schema migration helpers."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shared.db.common import on_postgres
from shared.errors import DatabaseUnavailable, SchemaError


def make_engine(url: str) -> sa.Engine:
    """A new engine for ``url``; SQLite gets WAL and foreign keys so workers in threads can share it."""
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001 - DBAPI hook
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    # prepare_threshold=None: psycopg prepares no statement server-side, so Postgres plans each one
    # with its values. Prepared, a statement runs on a generic plan from its sixth use, and for the
    # batch statements that plan is much worse: ``id = ANY($1)`` over a parameter array is searched
    # linearly for every row the scan meets, where a planned-with-values array is hashed (claiming
    # 1,024 items: 20-35 ms generic, 8-10 ms custom). Planning costs ~0.1-0.3 ms per statement.
    return sa.create_engine(url, pool_pre_ping=_PRE_PING, pool_size=5, max_overflow=5,
                            connect_args={"prepare_threshold": None})


# Whether a pooled connection is tested (a round trip) before each use. Callers keep it: a CLI or a
# client rides out a Postgres restart without an error. Workers turn it off (workers.celery_app):
# a task on a dead connection fails with OperationalError, SQLAlchemy then drops the whole pool,
# and the task's retry (workers.retry) runs on a fresh one; that saves two round trips per task.
_PRE_PING = True


def test_connections_before_use(enabled: bool) -> None:
    """Set this process's pre-ping for engines made from now on (and forget the ones made before)."""
    global _PRE_PING
    if enabled != _PRE_PING:
        _PRE_PING = enabled
        dispose_engines()


# One engine and sessionmaker per URL per process, created on first use (never in a prefork parent).
_ENGINES: dict[str, tuple[sa.Engine, sessionmaker[Session]]] = {}


def get_engine(url: str) -> sa.Engine:
    """This process's engine for ``url``. Call :func:`dispose_engines` in a forked child."""
    return _engine_and_sessionmaker(url)[0]


def session_for(url: str) -> Session:
    """A new session on this process's engine for ``url``; the caller owns the transaction."""
    return _engine_and_sessionmaker(url)[1]()


def _engine_and_sessionmaker(url: str) -> tuple[sa.Engine, sessionmaker[Session]]:
    if url not in _ENGINES:
        engine = make_engine(url)
        _ENGINES[url] = (engine, sessionmaker(engine, expire_on_commit=False))
    return _ENGINES[url]


def relax_commit(session: Session) -> None:
    """Let this transaction's commit return before its WAL reaches disk (Postgres ``synchronous_commit
    = off`` for this transaction only). For writes whose loss in a database crash is harmless — the
    database stays consistent and the work is simply done again — never for a job's submission."""
    if on_postgres(session):
        session.execute(sa.text("SET LOCAL synchronous_commit = off"))


def dispose_engines() -> None:
    """Forget engines inherited over fork; a child must not share its parent's connections."""
    for engine, _ in _ENGINES.values():
        engine.dispose(close=False)
    _ENGINES.clear()


def alembic_config(url: str):  # -> alembic.config.Config
    """Alembic configuration pointing at the packaged ``migrations`` folder and ``url``."""
    from alembic.config import Config

    import migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision``."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``base`` drops everything)."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(url: str) -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def database_unreachable(url: str, exc: Exception) -> str:
    """What to tell a user whose database refused the connection: which one, why, and what to do."""
    where = sa.make_url(url)
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    hint = (f"create it (createdb -h {where.host or 'localhost'} {where.database}) or fix FUSIONQ_DATABASE_URL"
            if "does not exist" in reason else "start it, or fix FUSIONQ_DATABASE_URL")
    return f"cannot connect to the database {where.render_as_string(hide_password=True)}: {reason}; {hint}"


def ensure_schema(url: str, *, auto_upgrade: bool | None = None) -> None:
    """Check the schema is at head; migrate when ``auto_upgrade`` else explain what to run.

    By default only SQLite (the embedded default, one user) is migrated on the fly; a shared
    Postgres is migrated once per deploy with `fusionq db upgrade`.
    """
    if auto_upgrade is None:
        auto_upgrade = url.startswith("sqlite")
    try:
        current = current_revision(get_engine(url))
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise DatabaseUnavailable(database_unreachable(url, exc)) from None
    head = head_revision(url)
    if current == head:
        return
    if auto_upgrade:
        upgrade(url)
        return
    raise SchemaError(
        f"database {sa.make_url(url).render_as_string(hide_password=True)} is at revision {current or 'none'}, "
        f"the code needs {head}: run `fusionq db upgrade` once per deploy."
    )
