"""operators: ``confirmed_at`` / ``confirmed_by_operator_id``: an admin or finance account another admin makes works once
a second admin confirmed it; every account made before is confirmed as of its making

Revision ID: 0034_operator_confirmation
Revises: 0033_payout_needs_approval
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0034_operator_confirmation"
down_revision = "0033_payout_needs_approval"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("operators", sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("operators", sa.Column("confirmed_by_operator_id", sa.Integer(), nullable=True))
    operators = sa.table("operators", sa.column("confirmed_at"), sa.column("created_at"))
    op.execute(operators.update().values(confirmed_at=operators.c.created_at))


def downgrade():
    op.drop_column("operators", "confirmed_by_operator_id")
    op.drop_column("operators", "confirmed_at")
