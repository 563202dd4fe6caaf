"""share debts: a debt made while its share is still at WeChat names that payout (settled first if it comes back,
and by nothing else until it arrives)

Revision ID: 0027_share_debt_payout
Revises: 0026_fee_payments
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0027_share_debt_payout"
down_revision = "0026_fee_payments"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("receivables") as batch:
        batch.add_column(sa.Column("payout_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_receivables_payout_id_payouts", "payouts", ["payout_id"], ["id"])
        batch.create_index("ix_receivables_payout_id", ["payout_id"])


def downgrade():
    with op.batch_alter_table("receivables") as batch:
        batch.drop_index("ix_receivables_payout_id")
        batch.drop_constraint("fk_receivables_payout_id_payouts", type_="foreignkey")
        batch.drop_column("payout_id")
