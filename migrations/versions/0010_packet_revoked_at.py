"""packets: when a packet was revoked (reports count a revocation on its own day)

Revision ID: 0010_packet_revoked_at
Revises: 0009_console

Packets revoked before this revision get their issue time (the day the reports counted them on before).
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0010_packet_revoked_at"
down_revision = "0009_console"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("red_packets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_red_packets_revoked_at"), ["revoked_at"], unique=False)
    op.execute("UPDATE red_packets SET revoked_at = created_at WHERE status = 'revoked'")


def downgrade():
    with op.batch_alter_table("red_packets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_red_packets_revoked_at"))
        batch_op.drop_column("revoked_at")
