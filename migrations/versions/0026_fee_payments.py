"""fee payments: a merchant's payment of its billed service fees, recorded with four eyes like a deposit top-up

Revision ID: 0026_fee_payments
Revises: 0025_sales_funded
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0026_fee_payments"
down_revision = "0025_sales_funded"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("deposit_proposals") as batch:
        batch.add_column(sa.Column("purpose", sa.String(16), server_default="deposit", nullable=False))
        batch.create_check_constraint("purpose", "purpose in ('deposit', 'fees')")


def downgrade():
    with op.batch_alter_table("deposit_proposals") as batch:
        batch.drop_constraint("purpose", type_="check")
        batch.drop_column("purpose")
