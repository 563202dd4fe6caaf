"""order_packets: an index by ``packet_id``, so a packet's uses are found from the packet (an audience run's uptake
counts a packet spent on a paid order as used even after a refund gave it back).

Revision ID: 0042_order_packets_by_packet
Revises: 0041_adjustment_kind
"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0042_order_packets_by_packet"
down_revision = "0041_adjustment_kind"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index(op.f("ix_order_packets_packet_id"), "order_packets", ["packet_id"])


def downgrade():
    op.drop_index(op.f("ix_order_packets_packet_id"), table_name="order_packets")
