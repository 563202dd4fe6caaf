"""wallet: an order spends the person's rebate balance and points (reserved with the order, spent on payment,
given back in proportion on refund); the order's amounts constraint counts them

Revision ID: 0019_wallet
Revises: 0018_fund_flow
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0019_wallet"
down_revision = "0018_fund_flow"
branch_labels = None
depends_on = None

COLUMNS = ("balance_used_fen", "points_used", "points_value_fen", "balance_returned_fen", "points_returned")


def upgrade():
    with op.batch_alter_table("orders") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.BigInteger(), server_default="0", nullable=False))
        batch.drop_constraint(batch.f("ck_orders_payable_is_total_less_discount"), type_="check")
        batch.create_check_constraint(
            "payable_is_total_less_deductions",
            "payable_fen + discount_fen + balance_used_fen + points_value_fen = total_fen",
        )
        batch.create_check_constraint(
            "wallet_amounts",
            "balance_used_fen >= 0 and points_used >= 0 and points_value_fen >= 0"
            " and (points_used = 0) = (points_value_fen = 0)",
        )
        batch.create_check_constraint(
            "wallet_returned_within_used",
            "balance_returned_fen >= 0 and balance_returned_fen <= balance_used_fen"
            " and points_returned >= 0 and points_returned <= points_used",
        )


def downgrade():
    with op.batch_alter_table("orders") as batch:
        batch.drop_constraint(batch.f("ck_orders_wallet_returned_within_used"), type_="check")
        batch.drop_constraint(batch.f("ck_orders_wallet_amounts"), type_="check")
        batch.drop_constraint(batch.f("ck_orders_payable_is_total_less_deductions"), type_="check")
        batch.create_check_constraint("payable_is_total_less_discount", "payable_fen + discount_fen = total_fen")
        for name in reversed(COLUMNS):
            batch.drop_column(name)
