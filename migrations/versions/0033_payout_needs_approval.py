"""payouts: ``needs_approval``, a manual payout held for a second operator's approval when it was made (at or above
``MANUAL_PAYOUT_APPROVAL_FEN``, or adding up to it): only such a payout is approved; one made below the limit went
out at once and, back with an operator after a try, is resent or resolved, never approved after the fact

Revision ID: 0033_payout_needs_approval
Revises: 0032_paused_for_deposit
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0033_payout_needs_approval"
down_revision = "0032_paused_for_deposit"
branch_labels = None
depends_on = None

HELD = "waiting for a second operator's approval"  # what manual_payout wrote on a payout it held


def upgrade():
    op.add_column("payouts", sa.Column("needs_approval", sa.Boolean(), nullable=False, server_default=sa.false()))
    payouts = sa.table(
        "payouts",
        sa.column("needs_approval", sa.Boolean()),
        sa.column("created_by_operator_id", sa.Integer()),
        sa.column("approved_by_operator_id", sa.Integer()),
        sa.column("status", sa.String()),
        sa.column("last_error", sa.Text()),
    )
    # approved ones were held for it; of those not approved, the ones still held (cancelled ones are over either way)
    op.execute(
        payouts.update()
        .where(
            payouts.c.created_by_operator_id.is_not(None),
            sa.or_(
                payouts.c.approved_by_operator_id.is_not(None),
                sa.and_(payouts.c.status == "needs_operator", payouts.c.last_error == HELD),
            ),
        )
        .values(needs_approval=True)
    )


def downgrade():
    op.drop_column("payouts", "needs_approval")
