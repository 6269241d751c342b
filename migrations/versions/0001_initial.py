"""initial schema: classifier registry, jobs, items, features, predictions, llm scores

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer, "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "classifiers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("multi_label", sa.Boolean, nullable=False),
        sa.Column("encoder_spec", sa.JSON, nullable=False),
        sa.Column("artifact_uri", sa.Text, nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_classifiers"),
        sa.UniqueConstraint("name", "version", name="uq_classifiers_name_version"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("classifier_id", sa.Integer, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("n_items", sa.Integer, nullable=False),
        sa.Column("n_done", sa.Integer, nullable=False),
        sa.Column("n_failed", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.ForeignKeyConstraint(["classifier_id"], ["classifiers.id"], name="fk_jobs_classifier_id_classifiers"),
        sa.UniqueConstraint("idempotency_key", name="uq_jobs_idempotency_key"),
    )
    op.create_table(
        "items",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("job_id", sa.Uuid, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("lease_until", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_items"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_items_job_id_jobs", ondelete="CASCADE"),
        sa.UniqueConstraint("job_id", "position", name="uq_items_job_id_position"),
    )
    op.create_index("ix_items_status_lease", "items", ["status", "lease_until"])
    op.create_index("ix_items_text_hash", "items", ["text_hash"])
    op.create_table(
        "item_features",
        sa.Column("item_id", BIGINT, nullable=False),
        sa.Column("encoder_key", sa.String(400), nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("item_id", "encoder_key", name="pk_item_features"),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name="fk_item_features_item_id_items", ondelete="CASCADE"),
    )
    op.create_table(
        "predictions",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("item_id", BIGINT, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("probabilities", sa.JSON, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("signals", sa.JSON, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_predictions"),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name="fk_predictions_item_id_items", ondelete="CASCADE"),
        sa.UniqueConstraint("item_id", name="uq_predictions_item_id"),
    )
    op.create_table(
        "llm_scores",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("cache_key", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("prompt_version", sa.String(50), nullable=False),
        sa.Column("label_set_hash", sa.String(64), nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False),
        sa.Column("scores", sa.JSON, nullable=True),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("tokens_in", sa.Integer, nullable=False),
        sa.Column("tokens_out", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_llm_scores"),
        sa.UniqueConstraint("cache_key", name="uq_llm_scores_cache_key"),
    )


def downgrade() -> None:
    op.drop_table("llm_scores")
    op.drop_table("predictions")
    op.drop_table("item_features")
    op.drop_index("ix_items_text_hash", table_name="items")
    op.drop_index("ix_items_status_lease", table_name="items")
    op.drop_table("items")
    op.drop_table("jobs")
    op.drop_table("classifiers")
