"""refunds: ``ix_refunds_refund_id``: every refund notice asks whether WeChat's refund number is another refund's
(not unique: rows of older versions may repeat one; the notice's check flags a repeat for an operator)

Revision ID: 0035_refund_id_index
Revises: 0034_operator_confirmation
"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0035_refund_id_index"
down_revision = "0034_operator_confirmation"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_refunds_refund_id", "refunds", ["refund_id"])


def downgrade():
    op.drop_index("ix_refunds_refund_id", table_name="refunds")
