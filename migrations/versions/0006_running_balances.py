"""a running balance on merchant deposit accounts

Revision ID: 0006_running_balances
Revises: 0005_hot_path

A merchant's marketing deposit is read by every claim and payment of the campaigns it funds, and
its postings grow with every packet and rebate: summing them each time made those paths slower
with history. Deposit accounts now keep ``balance``, moved in the transaction that posts to them
(``ledger.Batch``); existing deposits are summed once here. ``ledger.check_ledger`` compares it
with the postings.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_running_balances"
down_revision = "0005_hot_path"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("ledger_accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("balance", sa.BigInteger(), server_default="0", nullable=False))
    op.get_bind().execute(
        sa.text(
            "UPDATE ledger_accounts SET balance = (SELECT COALESCE(SUM(p.amount), 0) FROM ledger_postings p "
            "WHERE p.account_id = ledger_accounts.id) WHERE kind = 'merchant_marketing_deposit'"
        )
    )


def downgrade():
    with op.batch_alter_table("ledger_accounts", schema=None) as batch_op:
        batch_op.drop_column("balance")
