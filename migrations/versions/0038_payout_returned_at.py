"""payouts: ``returned_at``, when WeChat gave a payout's money back (a cash red packet nobody opened, refunded after
24 h: gethbinfo's ``refund_time``); the fund-flow bill of that day lists the return as income and reconciliation
matches it. Packets returned before this revision are dated by the check that found them (their refund time was
not kept).

Revision ID: 0038_payout_returned_at
Revises: 0037_redundant_indexes
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0038_payout_returned_at"
down_revision = "0037_redundant_indexes"
branch_labels = None
depends_on = None

NOT_NULL = sa.text("returned_at IS NOT NULL")


def upgrade():
    with op.batch_alter_table("payouts") as batch:
        batch.add_column(sa.Column("returned_at", sa.DateTime(timezone=True), nullable=True))
    payouts = sa.table("payouts", sa.column("id", sa.Integer()), sa.column("returned_at", sa.DateTime(timezone=True)))
    checks = sa.table(
        "payout_attempts",
        sa.column("payout_id", sa.Integer()),
        sa.column("action", sa.String()),
        sa.column("outcome", sa.String()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    unclaimed = (checks.c.payout_id == payouts.c.id, checks.c.action == "claim_check", checks.c.outcome == "unclaimed")
    found = sa.select(sa.func.min(checks.c.created_at)).where(*unclaimed).scalar_subquery()
    op.execute(payouts.update().where(sa.exists().where(*unclaimed)).values(returned_at=found))
    op.create_index(
        "ix_payouts_returned_at", "payouts", ["returned_at"], postgresql_where=NOT_NULL, sqlite_where=NOT_NULL
    )


def downgrade():
    op.drop_index("ix_payouts_returned_at", table_name="payouts")
    with op.batch_alter_table("payouts") as batch:
        batch.drop_column("returned_at")
