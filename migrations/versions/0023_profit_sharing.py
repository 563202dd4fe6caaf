"""profit sharing: one share per profit-sharing order (its out_order_no, request, ratio and result), the
receivers added at each sub-merchant, and each sub-merchant's maximum ratio as last fetched

Revision ID: 0023_profit_sharing
Revises: 0021_merchant_billing
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0023_profit_sharing"
down_revision = "0021_merchant_billing"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "profit_shares",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("sub_mchid", sa.String(length=32), nullable=False),
        sa.Column("transaction_id", sa.String(length=64), nullable=False),
        sa.Column("out_order_no", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("posted", sa.Boolean(), nullable=False),
        sa.Column("request", sa.JSON(), nullable=True),
        sa.Column("ratio_bps", sa.Integer(), nullable=True),
        sa.Column("shared_fen", sa.BigInteger(), nullable=False),
        sa.Column("held_fen", sa.BigInteger(), nullable=False),
        sa.Column("wechat_order_id", sa.String(length=64), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status in ('pending', 'sending', 'processing', 'finished', 'needs_operator')",
            name=op.f("ck_profit_shares_status"),
        ),
        sa.CheckConstraint(
            "kind is null or kind in ('share', 'unfreeze', 'nothing')", name=op.f("ck_profit_shares_kind")
        ),
        sa.CheckConstraint("shared_fen >= 0 and held_fen >= 0", name=op.f("ck_profit_shares_amounts")),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_profit_shares_merchant_id_merchants")),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_profit_shares_order_id_orders")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profit_shares")),
        sa.UniqueConstraint("order_id", name=op.f("uq_profit_shares_order_id")),
        sa.UniqueConstraint("out_order_no", name=op.f("uq_profit_shares_out_order_no")),
    )
    with op.batch_alter_table("profit_shares", schema=None) as batch_op:
        batch_op.create_index("ix_profit_shares_due", ["status", "next_attempt_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_profit_shares_merchant_id"), ["merchant_id"], unique=False)
    op.create_table(
        "profit_share_receivers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sub_mchid", sa.String(length=32), nullable=False),
        sa.Column("type", sa.String(length=24), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("appid", sa.String(length=32), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profit_share_receivers")),
        sa.UniqueConstraint("sub_mchid", "type", "account", name="uq_profit_share_receivers_once"),
    )
    op.create_table(
        "profit_share_configs",
        sa.Column("sub_mchid", sa.String(length=32), nullable=False),
        sa.Column("max_ratio_bps", sa.Integer(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("max_ratio_bps >= 0 and max_ratio_bps <= 10000", name=op.f("ck_profit_share_configs_ratio")),
        sa.PrimaryKeyConstraint("sub_mchid", name=op.f("pk_profit_share_configs")),
    )


def downgrade():
    op.drop_table("profit_share_configs")
    op.drop_table("profit_share_receivers")
    with op.batch_alter_table("profit_shares", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_profit_shares_merchant_id"))
        batch_op.drop_index("ix_profit_shares_due")
    op.drop_table("profit_shares")
