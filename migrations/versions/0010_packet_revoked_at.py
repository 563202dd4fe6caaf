"""reports: when a packet was revoked, and the time indexes the daily rollups read

Revision ID: 0010_packet_revoked_at
Revises: 0009_console

A revocation counts on its own day: packets revoked before this revision get their issue time (the day
the reports counted them on before). The rollup job reads one Beijing day of packets, rebates,
adjustments, refunds and payouts at a time: BRIN indexes on PostgreSQL (tiny and nearly free to keep on
append-ordered times, so the payment and the claim pay next to nothing for them), btrees on SQLite.
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0010_packet_revoked_at"
down_revision = "0009_console"
branch_labels = None
depends_on = None

TIME_INDEXES = (
    ("red_packets", "created_at"),
    ("red_packets", "claimed_at"),
    ("red_packets", "used_at"),
    ("rebates", "created_at"),
    ("rebate_adjustments", "created_at"),
    ("refunds", "finished_at"),
    ("payouts", "finished_at"),
)


def upgrade():
    with op.batch_alter_table("red_packets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_red_packets_revoked_at"), ["revoked_at"], unique=False)
    op.execute("UPDATE red_packets SET revoked_at = created_at WHERE status = 'revoked'")
    for table, column in TIME_INDEXES:
        op.create_index(f"ix_{table}_{column}", table, [column], unique=False, postgresql_using="brin")


def downgrade():
    for table, column in reversed(TIME_INDEXES):
        op.drop_index(f"ix_{table}_{column}", table_name=table)
    with op.batch_alter_table("red_packets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_red_packets_revoked_at"))
        batch_op.drop_column("revoked_at")
