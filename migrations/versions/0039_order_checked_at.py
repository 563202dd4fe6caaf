"""orders: ``checked_at``, when the order jobs last asked WeChat about an unpaid order; they ask the least recently
asked first, so orders WeChat keeps answering unreadably (a sub-merchant it no longer lets us ask about) never fill
every batch ahead of the others.

Revision ID: 0039_order_checked_at
Revises: 0038_payout_returned_at
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0039_order_checked_at"
down_revision = "0038_payout_returned_at"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("checked_at")
