"""merchant billing: per-merchant platform fee rates, each paid order's fee, monthly fee invoices (one per
merchant and Beijing month), and deposit top-up proposals awaiting a second operator

Revision ID: 0021_merchant_billing
Revises: 0020_preferences
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0021_merchant_billing"
down_revision = "0020_preferences"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "fee_invoices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("fee_fen", sa.BigInteger(), nullable=False),
        sa.Column("credit_applied_fen", sa.BigInteger(), nullable=False),
        sa.Column("due_fen", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "credit_applied_fen >= 0 and due_fen = fee_fen - credit_applied_fen", name=op.f("ck_fee_invoices_due")
        ),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_fee_invoices_merchant_id_merchants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fee_invoices")),
        sa.UniqueConstraint("merchant_id", "month", name=op.f("uq_fee_invoices_merchant_id_month")),
    )
    op.create_table(
        "deposit_proposals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("proposed_by", sa.Integer(), nullable=False),
        sa.Column("proposed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.Integer(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_reason", sa.String(length=200), nullable=True),
        sa.CheckConstraint("status in ('pending', 'approved', 'rejected')", name=op.f("ck_deposit_proposals_status")),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_deposit_proposals_amount_positive")),
        sa.CheckConstraint(
            "decided_by is null or decided_by <> proposed_by", name=op.f("ck_deposit_proposals_four_eyes")
        ),
        sa.ForeignKeyConstraint(
            ["decided_by"], ["operators.id"], name=op.f("fk_deposit_proposals_decided_by_operators")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_deposit_proposals_merchant_id_merchants")
        ),
        sa.ForeignKeyConstraint(
            ["proposed_by"], ["operators.id"], name=op.f("fk_deposit_proposals_proposed_by_operators")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deposit_proposals")),
    )
    with op.batch_alter_table("deposit_proposals", schema=None) as batch_op:
        batch_op.create_index("ix_deposit_proposals_merchant_status", ["merchant_id", "status"], unique=False)

    op.create_table(
        "merchant_fee_rates",
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("rate_bps", sa.Integer(), nullable=False),
        sa.Column("updated_by", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("rate_bps >= 0 and rate_bps <= 10000", name=op.f("ck_merchant_fee_rates_rate_bps")),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_merchant_fee_rates_merchant_id_merchants")
        ),
        sa.ForeignKeyConstraint(
            ["updated_by"], ["operators.id"], name=op.f("fk_merchant_fee_rates_updated_by_operators")
        ),
        sa.PrimaryKeyConstraint("merchant_id", name=op.f("pk_merchant_fee_rates")),
    )
    op.create_table(
        "order_fees",
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("rate_bps", sa.Integer(), nullable=False),
        sa.Column("accrued_fen", sa.BigInteger(), nullable=False),
        sa.Column("fee_fen", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("fee_fen >= 0 and fee_fen <= accrued_fen", name=op.f("ck_order_fees_fee_within_accrued")),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_order_fees_merchant_id_merchants")),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_order_fees_order_id_orders")),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_order_fees")),
    )
    with op.batch_alter_table("order_fees", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_order_fees_merchant_id"), ["merchant_id"], unique=False)


def downgrade():
    with op.batch_alter_table("order_fees", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_order_fees_merchant_id"))

    op.drop_table("order_fees")
    op.drop_table("merchant_fee_rates")
    with op.batch_alter_table("deposit_proposals", schema=None) as batch_op:
        batch_op.drop_index("ix_deposit_proposals_merchant_status")

    op.drop_table("deposit_proposals")
    op.drop_table("fee_invoices")
