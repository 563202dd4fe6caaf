"""campaigns: ``paused_for_deposit``, a pause the funder's dry deposit made: no more packets, but the ones out still
earn what their claims reserved (an operator's pause still stops both); ``paused_by_platform``, a pause by an admin, a
ban or the risk jobs: the merchant's own staff do not activate it again

Revision ID: 0032_paused_for_deposit
Revises: 0031_unsettled_coupons
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0032_paused_for_deposit"
down_revision = "0031_unsettled_coupons"
branch_labels = None
depends_on = None


def upgrade():
    for column in ("paused_for_deposit", "paused_by_platform"):
        op.add_column("campaigns", sa.Column(column, sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade():
    op.drop_column("campaigns", "paused_by_platform")
    op.drop_column("campaigns", "paused_for_deposit")
