"""Leases that mean work in hand: a claim token per claim (the fencing token), queued work unleased

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

Before this revision ``lease_until`` was set at enqueue time too ("may wait in the queue until").
Now it is only a worker's claim, renewed by its heartbeat; queued work has none, and the sweeper
judges it lost by the broker's evidence. Open rows drop their old queue leases here.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OPEN_ITEMS = "('pending', 'embedded', 'scoring')"


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("claim_token", sa.BigInteger, nullable=True))
    with op.batch_alter_table("llm_requests") as batch:
        batch.add_column(sa.Column("claim_token", sa.BigInteger, nullable=True))
    op.execute(f"UPDATE items SET lease_until = NULL WHERE status IN {OPEN_ITEMS}")
    op.execute("UPDATE llm_requests SET lease_until = NULL WHERE status = 'queued'")


def downgrade() -> None:
    with op.batch_alter_table("llm_requests") as batch:
        batch.drop_column("claim_token")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("claim_token")
