"""risk_bans: ``lift_proposed_by`` / ``lift_proposed_at`` / ``lift_proposed_reason``: a ban two operators made (a
review case's ban a second reviewer approved) is lifted by two as well: one proposes, another approves. A CHECK keeps
the proposer from being the one who lifts it. Bans made before this revision have no proposal.

Revision ID: 0040_ban_lift_proposal
Revises: 0039_order_checked_at
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0040_ban_lift_proposal"
down_revision = "0039_order_checked_at"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("risk_bans") as batch:
        batch.add_column(sa.Column("lift_proposed_by", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("lift_proposed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("lift_proposed_reason", sa.Text(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_risk_bans_lift_proposed_by_operators"), "operators", ["lift_proposed_by"], ["id"]
        )
        batch.create_check_constraint(
            op.f("ck_risk_bans_lift_four_eyes"),
            sa.text("lifted_by is null or lift_proposed_by is null or lifted_by <> lift_proposed_by"),
        )


def downgrade():
    with op.batch_alter_table("risk_bans") as batch:
        batch.drop_constraint(op.f("ck_risk_bans_lift_four_eyes"), type_="check")
        batch.drop_constraint(op.f("fk_risk_bans_lift_proposed_by_operators"), type_="foreignkey")
        batch.drop_column("lift_proposed_reason")
        batch.drop_column("lift_proposed_at")
        batch.drop_column("lift_proposed_by")
