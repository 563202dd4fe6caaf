"""service-provider mode: campaigns funded from the merchant's own order money, and each partner order's money
still frozen at its sub-merchant

Revision ID: 0025_sales_funded
Revises: 0024_reconcile_sub_merchants
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0025_sales_funded"
down_revision = "0024_reconcile_sub_merchants"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("funded_from_sales", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("frozen_fen", sa.BigInteger(), nullable=True))


def downgrade():
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("frozen_fen")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("funded_from_sales")
