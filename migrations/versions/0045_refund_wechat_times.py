"""refunds: WeChat's own times and the refund job's re-sends.

``requested_at``: when WeChat took the refund request (its create_time, or the refund's row in its trade bill); the
daily reconciliation expects a refund on that Beijing day's bill. ``finished_at`` becomes WeChat's success_time for a
success (the reports' day); ``applied_at`` keeps our clock, when WeChat's word was applied here (what ``finished_at``
held until now, copied for the refunds already finished). ``resends``: how often the refund job sent a refund again
because WeChat's query said it never heard of it (bounded, then an operator is alerted).

Revision ID: 0045_refund_wechat_times
Revises: 0044_user_region_set_at
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0045_refund_wechat_times"
down_revision = "0044_user_region_set_at"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("refunds") as batch:
        batch.add_column(sa.Column("requested_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("resends", sa.SmallInteger(), server_default="0", nullable=False))
    op.execute("UPDATE refunds SET applied_at = finished_at WHERE finished_at IS NOT NULL")


def downgrade():
    with op.batch_alter_table("refunds") as batch:
        batch.drop_column("resends")
        batch.drop_column("applied_at")
        batch.drop_column("requested_at")
