"""What every store module shares: which dialect it talks to and its idempotent INSERT."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session


def on_postgres(session: Session) -> bool:
    """Whether the session talks to Postgres (else SQLite, the embedded default)."""
    return session.get_bind().dialect.name == "postgresql"


def dialect_insert(session: Session):
    """The INSERT construct of the session's dialect, which knows ON CONFLICT (Postgres, SQLite)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only Postgres and SQLite are supported
        raise NotImplementedError(f"no idempotent insert for the {dialect} dialect")
    return insert


def insert_ignoring_conflicts(session: Session, model: type, rows: Sequence[dict], keys: Sequence[str]) -> None:
    """Bulk INSERT ... ON CONFLICT (keys) DO NOTHING: a second run of the same write is a no-op."""
    if not rows:
        return
    insert = dialect_insert(session)
    # on the session's connection (Core): the ORM's bulk-insert machinery costs more than the write
    session.connection().execute(insert(model.__table__).on_conflict_do_nothing(index_elements=list(keys)), list(rows))


def json_rows(rows: Sequence[dict]) -> str:
    """Rows as one JSON document, for Postgres' ``json_to_recordset``: a bulk write then costs the
    client one parameter, not one per value (psycopg adapts lists element by element in Python:
    ~20 ms for a 2,000-item job's six columns, against ~2 ms for this). Timestamps go as ISO 8601
    with their zone. Stored texts hold no NUL and no lone surrogate (``text_problem`` refuses both),
    so every one survives the trip."""
    return json.dumps(rows, ensure_ascii=False, default=_iso_timestamp)


def _iso_timestamp(value):
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@dataclass(frozen=True)
class ClaimedItem:
    """An item a stage now holds (its lease renewed, an attempt counted): id, text and its own mode."""

    id: int
    text: str
    mode: str | None = None  # None: the job's


def new_claim_token() -> int:
    """A fencing token for one claim: the claimed rows carry it, and only writes that name it land."""
    return secrets.randbits(62)


def claimable(table: sa.Table, now) -> sa.ColumnElement[bool]:
    """Rows no live worker holds: never claimed since queued, or their holder's lease ran out."""
    return sa.or_(table.c.lease_until.is_(None), table.c.lease_until < now)


def lease_end(now: dt.datetime, lease_seconds: float) -> dt.datetime:
    return now + dt.timedelta(seconds=lease_seconds)
