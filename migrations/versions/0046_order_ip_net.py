"""orders: ``ip_net``, the /24 (IPv4) or /48 (IPv6) of the address the order was placed from, indexed.

A ban on an address or a network, when lifted, finds the orders whose milestones it refused by it; until now every
held order placed over IPv6 was read and tested one by one. Nothing is filled here: an ``UPDATE`` of every order
would hold the table's lock for the whole migration (the app's orders, payments and refunds waiting on it). The job
``fill_order_networks`` fills the orders written before, a batch per transaction, found by the partial index
``ix_orders_ip_net_unfilled``; until then a lift finds them by their address's text, as before.

refunds: ``ix_refunds_applied_at`` (BRIN on PostgreSQL, as ``finished_at``'s): the reports' rollup job finds the refunds
applied since its last run by it (a late one of a partner order posts no ledger entry to find it by).

Revision ID: 0046_order_ip_net
Revises: 0045_refund_wechat_times
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0046_order_ip_net"
down_revision = "0045_refund_wechat_times"
branch_labels = None
depends_on = None

UNFILLED = sa.text("ip_net IS NULL AND ip IS NOT NULL")


def upgrade():
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("ip_net", sa.String(length=49), nullable=True))
        batch.create_index("ix_orders_ip_net", ["ip_net"], unique=False)
        batch.create_index(
            "ix_orders_ip_net_unfilled", ["id"], unique=False, postgresql_where=UNFILLED, sqlite_where=UNFILLED
        )
    with op.batch_alter_table("refunds") as batch:
        batch.create_index("ix_refunds_applied_at", ["applied_at"], unique=False, postgresql_using="brin")


def downgrade():
    with op.batch_alter_table("refunds") as batch:
        batch.drop_index("ix_refunds_applied_at")
    with op.batch_alter_table("orders") as batch:
        batch.drop_index("ix_orders_ip_net_unfilled")
        batch.drop_index("ix_orders_ip_net")
        batch.drop_column("ip_net")
