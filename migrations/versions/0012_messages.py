"""messages: WeChat message push (inbound queue), official-account followers, card payout events

Revision ID: 0012_messages
Revises: 0011_notices

``inbound_messages`` records each pushed message once (unique dedupe key) for the worker to apply
after the answer; ``oa_followers`` keeps who follows the official account; a card payout records
when its card was redeemed or deleted from the user's package.
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0012_messages"
down_revision = "0011_notices"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "inbound_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=False),
        sa.Column("msg_type", sa.String(length=32), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=True),
        sa.Column("openid", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("source in ('oa', 'mp')", name=op.f("ck_inbound_messages_source")),
        sa.CheckConstraint(
            "status in ('queued', 'done', 'failed', 'ignored')", name=op.f("ck_inbound_messages_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_messages")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_inbound_messages_dedupe_key")),
    )
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.create_index("ix_inbound_messages_due", ["status", "next_attempt_at"], unique=False)
        batch_op.create_index("ix_inbound_messages_openid", ["openid", "received_at"], unique=False)
    op.create_table(
        "oa_followers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("appid", sa.String(length=32), nullable=False),
        sa.Column("openid", sa.String(length=64), nullable=False),
        sa.Column("unionid", sa.String(length=64), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("following", sa.Boolean(), nullable=False),
        sa.Column("followed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("unfollowed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_oa_followers_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oa_followers")),
        sa.UniqueConstraint("appid", "openid", name=op.f("uq_oa_followers_appid_openid")),
    )
    with op.batch_alter_table("oa_followers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_oa_followers_unionid"), ["unionid"], unique=False)
        batch_op.create_index(batch_op.f("ix_oa_followers_user_id"), ["user_id"], unique=False)
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("card_consumed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("card_deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.drop_column("card_deleted_at")
        batch_op.drop_column("card_consumed_at")
    with op.batch_alter_table("oa_followers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_oa_followers_user_id"))
        batch_op.drop_index(batch_op.f("ix_oa_followers_unionid"))
    op.drop_table("oa_followers")
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_inbound_messages_openid")
        batch_op.drop_index("ix_inbound_messages_due")
    op.drop_table("inbound_messages")
