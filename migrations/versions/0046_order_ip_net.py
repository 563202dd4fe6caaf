"""orders: ``ip_net``, the /24 (IPv4) or /48 (IPv6) of the address the order was placed from, indexed.

A ban on an address or a network, when lifted, finds the orders whose milestones it refused by it; until now every
held order placed over IPv6 was read and tested one by one. Filled here for the orders a lift can still concern
(those with a rebate held for its milestones or in review before its deadline); older ones stay NULL (and are still
found by their address's text).

Revision ID: 0046_order_ip_net
Revises: 0045_refund_wechat_times
"""

import ipaddress

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0046_order_ip_net"
down_revision = "0045_refund_wechat_times"
branch_labels = None
depends_on = None

BATCH = 1000


def _net(ip):
    """``risk.net.net_of`` as of this revision."""
    try:
        address = ipaddress.ip_address((ip or "").strip())
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def upgrade():
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("ip_net", sa.String(length=49), nullable=True))
        batch.create_index("ix_orders_ip_net", ["ip_net"], unique=False)
    fill(op.get_bind())


def fill(bind) -> None:
    """``ip_net`` of the orders with a rebate still held or in review, a thousand at a time."""
    held = sa.text(
        "SELECT DISTINCT o.id, o.ip FROM orders o JOIN rebates r ON r.order_id = o.id "
        "WHERE o.ip IS NOT NULL AND o.id > :after AND r.held_fen > 0 AND r.status IN ('held', 'review') "
        "ORDER BY o.id LIMIT :n"
    )
    write = sa.text("UPDATE orders SET ip_net = :net WHERE id = :id")
    after = 0
    while True:
        rows = bind.execute(held, {"after": after, "n": BATCH}).all()
        if not rows:
            break
        nets = [{"id": order_id, "net": _net(ip)} for order_id, ip in rows]
        nets = [n for n in nets if n["net"] is not None]
        if nets:
            bind.execute(write, nets)
        after = rows[-1][0]


def downgrade():
    with op.batch_alter_table("orders") as batch:
        batch.drop_index("ix_orders_ip_net")
        batch.drop_column("ip_net")
