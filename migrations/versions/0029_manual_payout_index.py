"""payouts: an index of manual payouts by operator and time, for the four-eyes limit's day total; refunds: when
the refund job last asked WeChat about each (``checked_at``), so it asks the least recently asked first

Revision ID: 0029_manual_payout_index
Revises: 0028_payout_number
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0029_manual_payout_index"
down_revision = "0028_payout_number"
branch_labels = None
depends_on = None

MANUAL = sa.text("created_by_operator_id IS NOT NULL")


def upgrade():
    op.add_column("refunds", sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_payouts_manual",
        "payouts",
        ["created_by_operator_id", "created_at"],
        postgresql_where=MANUAL,
        sqlite_where=MANUAL,
    )


def downgrade():
    op.drop_index("ix_payouts_manual", table_name="payouts")
    op.drop_column("refunds", "checked_at")
