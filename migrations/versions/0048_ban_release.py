"""risk_bans: the release of a lifted ban's held rebates, by a job in batches (``rebate.ban_ops.release_batch``).

A lift of a ban on a busy merchant, device or network replayed every order it held inside the request: tens of
thousands of orders, past the web server's timeout, every order locked meanwhile. Now the lift ends the ban at once
and a job walks the orders a batch per transaction: ``release_state`` (``running``, ``done``, ``stopped``: the same
ban put back), ``release_after`` (the last order id walked), ``release_orders`` (orders walked), ``release_paid_fen``
and ``release_moved_at`` (the last batch: a release that stops moving is alerted). The partial index
``ix_risk_bans_releasing`` finds the running ones. Bans lifted before this revision have no release state (theirs was
done inline).

Revision ID: 0048_ban_release
Revises: 0047_identity_user_appid
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0048_ban_release"
down_revision = "0047_identity_user_appid"
branch_labels = None
depends_on = None

RUNNING = sa.text("release_state = 'running'")


def upgrade():
    with op.batch_alter_table("risk_bans") as batch:
        batch.add_column(sa.Column("release_state", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("release_after", sa.BigInteger(), server_default="0", nullable=False))
        batch.add_column(sa.Column("release_orders", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("release_paid_fen", sa.BigInteger(), server_default="0", nullable=False))
        batch.add_column(sa.Column("release_moved_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_check_constraint(
            op.f("ck_risk_bans_release_state"), sa.text("release_state in ('running', 'done', 'stopped')")
        )
        batch.create_index(
            "ix_risk_bans_releasing", ["id"], unique=False, postgresql_where=RUNNING, sqlite_where=RUNNING
        )


def downgrade():
    with op.batch_alter_table("risk_bans") as batch:
        batch.drop_index("ix_risk_bans_releasing")
        batch.drop_constraint(op.f("ck_risk_bans_release_state"), type_="check")
        batch.drop_column("release_moved_at")
        batch.drop_column("release_paid_fen")
        batch.drop_column("release_orders")
        batch.drop_column("release_after")
        batch.drop_column("release_state")
