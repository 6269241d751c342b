"""LLM-only jobs (label set instead of a classifier) and cache hit counts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("classifier_id", existing_type=sa.Integer, nullable=True)
        batch.add_column(sa.Column("labels", sa.JSON, nullable=True))
        batch.add_column(sa.Column("multi_label", sa.Boolean, nullable=True))
        batch.add_column(sa.Column("llm_source", sa.String(16), nullable=True))
    with op.batch_alter_table("llm_scores") as batch:
        batch.add_column(sa.Column("hits", sa.Integer, nullable=False, server_default="0"))
    op.create_index("ix_llm_scores_provider_model", "llm_scores", ["provider", "model"])


def downgrade() -> None:
    op.drop_index("ix_llm_scores_provider_model", table_name="llm_scores")
    with op.batch_alter_table("llm_scores") as batch:
        batch.drop_column("hits")
    op.execute("DELETE FROM jobs WHERE classifier_id IS NULL")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("llm_source")
        batch.drop_column("multi_label")
        batch.drop_column("labels")
        batch.alter_column("classifier_id", existing_type=sa.Integer, nullable=False)
