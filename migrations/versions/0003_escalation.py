"""Escalation: LLM requests per item and tier, per-item modes, job tiers and budgets, prediction flags

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tiers", sa.JSON, nullable=True))
        batch.add_column(sa.Column("budget_items", sa.Integer, nullable=True))
        batch.add_column(sa.Column("budget_usd", sa.Float, nullable=True))
        batch.add_column(sa.Column("n_escalated", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("mode", sa.String(16), nullable=True))
        batch.add_column(sa.Column("resends", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("flags", sa.JSON, nullable=False, server_default="[]"))
    op.create_table(
        "llm_requests",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
        sa.Column("item_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                  sa.ForeignKey("items.id", ondelete="CASCADE", name="fk_llm_requests_item_id_items"), nullable=False),
        sa.Column("job_id", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE", name="fk_llm_requests_job_id_jobs"),
                  nullable=False),
        sa.Column("tier", sa.Integer, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("scores", sa.JSON, nullable=True),
        sa.Column("method", sa.String(16), nullable=True),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_llm_requests"),
        sa.UniqueConstraint("item_id", "source", name="uq_llm_requests_item_id_source"),
    )
    op.create_index("ix_llm_requests_job_status", "llm_requests", ["job_id", "status"])
    op.create_index("ix_llm_requests_status_lease", "llm_requests", ["status", "lease_until"])


def downgrade() -> None:
    op.drop_index("ix_llm_requests_status_lease", table_name="llm_requests")
    op.drop_index("ix_llm_requests_job_status", table_name="llm_requests")
    op.drop_table("llm_requests")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("flags")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("resends")
        batch.drop_column("mode")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("n_escalated")
        batch.drop_column("budget_usd")
        batch.drop_column("budget_items")
        batch.drop_column("tiers")
