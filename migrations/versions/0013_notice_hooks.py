"""notice hooks: the partial index the "packet expiring" scan reads

Revision ID: 0013_notice_hooks
Revises: 0012_messages

The expiring-packets job (jobs/expiring.py) reads the packets people still hold (status ``issued``) by
expiry, a day ahead, in (expires_at, id) keyset batches: a partial index holds those packets only (used,
expired and revoked ones, the bulk of the table, are not in it), so the scan and its upkeep stay small.
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0013_notice_hooks"
down_revision = "0012_messages"
branch_labels = None
depends_on = None

WHERE = sa.text("status = 'issued'")


def upgrade():
    op.create_index(
        "ix_red_packets_issued_expiry",
        "red_packets",
        ["expires_at", "id"],
        unique=False,
        postgresql_where=WHERE,
        sqlite_where=WHERE,
    )


def downgrade():
    op.drop_index("ix_red_packets_issued_expiry", table_name="red_packets")
