"""Drop items.text_hash: written for every item, read by nothing

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

Each item stored the sha256 of its text (64 hex characters), computed in Python at submit and
copied again by each of the item's three writes on the fast path (stored, claimed, finished).
No query, export or API reads it (the LLM cache hashes texts itself, into ``llm_scores``), and its
index already went in 0006. Downgrade brings the column back, filled by Postgres' own ``sha256``
(the same digest of the UTF-8 text); on SQLite it comes back empty.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.drop_column("text_hash")


def downgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("text_hash", sa.String(64), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE items SET text_hash = encode(sha256(convert_to(text, 'UTF8')), 'hex')")
        op.alter_column("items", "text_hash", nullable=False)
        op.execute("ALTER TABLE items ALTER COLUMN text_hash SET STATISTICS 0")  # as 0007 left it
