"""rebate_adjustments: ``kind``, ``clawback`` (money taken back from a rebate paid or queued) or ``cancelled`` (money
that was still held, for milestones or a risk review, and will never be paid: revoked by a reviewer, expired, withheld
by the feedback quality, or released by a refund). The reports count a cancellation on its own day as
``rebates_cancelled``, so a campaign's net rebate cost no longer counts money it never paid. Rows made before this
revision are ``clawback`` (a refund's release of a held part among them, as they were counted then).

Revision ID: 0041_adjustment_kind
Revises: 0040_ban_lift_proposal
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0041_adjustment_kind"
down_revision = "0040_ban_lift_proposal"
branch_labels = None
depends_on = None

# a cancelled part was never paid: nothing of it is owed back
KIND = "kind in ('clawback', 'cancelled') and (kind = 'clawback' or receivable_fen = 0)"


def upgrade():
    with op.batch_alter_table("rebate_adjustments") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=16), server_default="clawback", nullable=False))
        batch.create_check_constraint(op.f("ck_rebate_adjustments_kind"), sa.text(KIND))


def downgrade():
    with op.batch_alter_table("rebate_adjustments") as batch:
        batch.drop_constraint(op.f("ck_rebate_adjustments_kind"), type_="check")
        batch.drop_column("kind")
