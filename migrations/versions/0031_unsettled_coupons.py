"""orders: ``unsettled_coupon_fen``, what 免充值 coupons (promotion_detail type NOCASH) paid of the payment: WeChat
never settles it, so the books take it from the merchant of record instead of from what WeChat holds for us

Revision ID: 0031_unsettled_coupons
Revises: 0030_operator_key_creator
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0031_unsettled_coupons"
down_revision = "0030_operator_key_creator"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("orders", sa.Column("unsettled_coupon_fen", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade():
    op.drop_column("orders", "unsettled_coupon_fen")
