"""SQLAlchemy tables. Unique keys make every worker write an idempotent upsert.

Portable types only (JSON, Uuid, LargeBinary), so the same schema runs on Postgres and SQLite.
"""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.vocab import OPEN_ITEM_STATUSES

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)


class Classifier(Base):
    """A trained classifier version in the registry. Rows are immutable once written."""

    __tablename__ = "classifiers"
    __table_args__ = (sa.UniqueConstraint("name", "version", name="uq_classifiers_name_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    version: Mapped[int] = mapped_column(sa.Integer)
    labels: Mapped[list] = mapped_column(sa.JSON)
    multi_label: Mapped[bool] = mapped_column(sa.Boolean)
    encoder_spec: Mapped[dict] = mapped_column(sa.JSON)
    artifact_uri: Mapped[str] = mapped_column(sa.Text)
    artifact_sha256: Mapped[str] = mapped_column(sa.String(64))
    metrics: Mapped[dict] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class Job(Base):
    """One caller request: many texts, one classifier version, one mode."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    classifier_id: Mapped[int | None] = mapped_column(sa.ForeignKey("classifiers.id"))
    mode: Mapped[str] = mapped_column(sa.String(16))
    # LLM-only jobs (mode "llm") carry their label set and the LLM source instead of a classifier.
    labels: Mapped[dict | None] = mapped_column(sa.JSON)
    multi_label: Mapped[bool | None] = mapped_column(sa.Boolean)
    llm_source: Mapped[str | None] = mapped_column(sa.String(16))
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(200), unique=True)
    n_items: Mapped[int] = mapped_column(sa.Integer)
    n_done: Mapped[int] = mapped_column(sa.Integer, default=0)
    n_failed: Mapped[int] = mapped_column(sa.Integer, default=0)
    # Escalation (modes auto/full/llm): the tiers as resolved at submit, so a config change never
    # alters a running job, and the budget of an auto job.
    tiers: Mapped[list | None] = mapped_column(sa.JSON)
    budget_items: Mapped[int | None] = mapped_column(sa.Integer)
    budget_usd: Mapped[float | None] = mapped_column(sa.Float)
    n_escalated: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    # Completion notice asked at submit ({"task", "queue"} and/or {"webhook"}); sent once by the sweeper.
    notify: Mapped[dict | None] = mapped_column(sa.JSON(none_as_null=True))  # None: SQL NULL, not JSON null
    notified_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))


_OPEN_ITEM = sa.text(f"status IN ({', '.join(repr(str(s)) for s in OPEN_ITEM_STATUSES)})")


class Item(Base):
    """One text of a job, and its own mode when the caller set one (else the job's).

    ``status``: pending (needs features) -> embedded -> done; ``scoring`` for items answered by an
    LLM alone; failed with ``error``. Outstanding LLM work lives in :class:`LlmRequest`.
    """

    __tablename__ = "items"
    __table_args__ = (
        sa.UniqueConstraint("job_id", "position", name="uq_items_job_id_position"),
        # open items only (migration 0009): finished ones leave it, and claims and lease renewals
        # change no indexed column
        sa.Index("ix_items_open", "status", postgresql_where=_OPEN_ITEM, sqlite_where=_OPEN_ITEM),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(sa.Integer)
    text: Mapped[str] = mapped_column(sa.Text)
    mode: Mapped[str | None] = mapped_column(sa.String(16))
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)  # claims by the encoder: real work started
    resends: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")  # lost messages the sweeper re-sent
    # A worker's claim: held until ``lease_until`` (renewed by its heartbeat), its writes fenced by
    # ``claim_token``. NULL lease: the item waits in a queue (since ``updated_at``).
    lease_until: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    claim_token: Mapped[int | None] = mapped_column(sa.BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    error: Mapped[str | None] = mapped_column(sa.Text)


class ItemFeatures(Base):
    """Encoder output of one item, float32 bytes, keyed by (item, encoder) so a re-run is a no-op."""

    __tablename__ = "item_features"

    item_id: Mapped[int] = mapped_column(sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    encoder_key: Mapped[str] = mapped_column(sa.String(400), primary_key=True)
    dim: Mapped[int] = mapped_column(sa.Integer)
    vector: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class Prediction(Base):
    """The one final prediction of an item (unique on item)."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("items.id", ondelete="CASCADE"), unique=True)
    labels: Mapped[list] = mapped_column(sa.JSON)
    probabilities: Mapped[list] = mapped_column(sa.JSON)
    confidence: Mapped[float] = mapped_column(sa.Float)
    signals: Mapped[list] = mapped_column(sa.JSON)
    # Why the prediction is less than its mode promised: budget_exhausted, missing:llm:<source>.
    flags: Mapped[list] = mapped_column(sa.JSON, default=list, server_default="[]")
    latency_ms: Mapped[float] = mapped_column(sa.Float)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class LlmRequest(Base):
    """LLM scores wanted for one item from one source (tier). Unique on (item, source): an item
    climbs to a tier at most once, whoever asks and however often.

    ``status``: queued -> done (``scores`` set) or failed (``error``; the signal is then missing);
    skipped when the tier was down as the item reached it (never sent).
    ``reason``: escalation (auto), full, or llm (the LLM alone).
    """

    __tablename__ = "llm_requests"
    __table_args__ = (
        sa.UniqueConstraint("item_id", "source", name="uq_llm_requests_item_id_source"),
        sa.Index("ix_llm_requests_job_status", "job_id", "status"),
        sa.Index("ix_llm_requests_status_lease", "status", "lease_until"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("items.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    tier: Mapped[int] = mapped_column(sa.Integer)
    source: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str] = mapped_column(sa.String(16))
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    lease_until: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))  # as Item's
    claim_token: Mapped[int | None] = mapped_column(sa.BigInteger)
    scores: Mapped[list | None] = mapped_column(sa.JSON)
    method: Mapped[str | None] = mapped_column(sa.String(16))
    cost_usd: Mapped[float] = mapped_column(sa.Float, default=0.0)
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class LlmScore(Base):
    """Cached per-class scores of one LLM question; filled by the LLM workers."""

    __tablename__ = "llm_scores"
    __table_args__ = (sa.Index("ix_llm_scores_provider_model", "provider", "model"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    cache_key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    provider: Mapped[str] = mapped_column(sa.String(100))
    model: Mapped[str] = mapped_column(sa.String(300))
    prompt_version: Mapped[str] = mapped_column(sa.String(50))
    label_set_hash: Mapped[str] = mapped_column(sa.String(64))
    text_hash: Mapped[str] = mapped_column(sa.String(64))
    scores: Mapped[list | None] = mapped_column(sa.JSON)
    method: Mapped[str] = mapped_column(sa.String(16))
    tokens_in: Mapped[int] = mapped_column(sa.Integer, default=0)
    tokens_out: Mapped[int] = mapped_column(sa.Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(sa.Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(sa.Float, default=0.0)
    error: Mapped[str | None] = mapped_column(sa.Text)
    hits: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
