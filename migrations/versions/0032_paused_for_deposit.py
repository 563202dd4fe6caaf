"""campaigns: ``paused_for_deposit``, a pause the funder's dry deposit made: no more packets, but the ones out still
earn what their claims reserved (an operator's pause still stops both)

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
    op.add_column(
        "campaigns", sa.Column("paused_for_deposit", sa.Boolean(), nullable=False, server_default=sa.false())
    )


def downgrade():
    op.drop_column("campaigns", "paused_for_deposit")
