"""payouts: an index of manual payouts by operator and time, for the four-eyes limit's day total

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
    op.create_index(
        "ix_payouts_manual",
        "payouts",
        ["created_by_operator_id", "created_at"],
        postgresql_where=MANUAL,
        sqlite_where=MANUAL,
    )


def downgrade():
    op.drop_index("ix_payouts_manual", table_name="payouts")
