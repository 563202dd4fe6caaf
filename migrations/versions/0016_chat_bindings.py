"""chat bindings: a chat transport's speaker linked to a user by a one-time code confirmed in the mini-program

Revision ID: 0016_chat_bindings
Revises: 0014_audiences (re-chained after 0015_challenges at merge)

A binding is unique per speaker (transport, scope, external id) and per user and transport scope; codes are
kept as HMACs, expire, and are used once; wrong codes are kept per user for the attempt limit. Robot
callbacks are recorded once per (robot, msgid) with their reply, so a retry changes nothing.
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0016_chat_bindings"
down_revision = "0015_challenges"
branch_labels = None
depends_on = None

TRANSPORT = "transport in ('wecom', 'oa', 'chattool')"


def upgrade():
    op.create_table(
        "chat_bindings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("transport", sa.String(length=16), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(TRANSPORT, name=op.f("ck_chat_bindings_transport")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_chat_bindings_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_bindings")),
        sa.UniqueConstraint("transport", "scope", "external_id", name="uq_chat_bindings_speaker"),
        sa.UniqueConstraint("user_id", "transport", "scope", name="uq_chat_bindings_user"),
    )
    with op.batch_alter_table("chat_bindings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_chat_bindings_user_id"), ["user_id"], unique=False)

    op.create_table(
        "chat_binding_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("transport", sa.String(length=16), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_by", sa.Integer(), nullable=True),
        sa.CheckConstraint(TRANSPORT, name=op.f("ck_chat_binding_codes_transport")),
        sa.ForeignKeyConstraint(["used_by"], ["users.id"], name=op.f("fk_chat_binding_codes_used_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_binding_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_chat_binding_codes_code_hash")),
    )
    with op.batch_alter_table("chat_binding_codes", schema=None) as batch_op:
        batch_op.create_index("ix_chat_binding_codes_speaker", ["transport", "scope", "external_id"], unique=False)

    op.create_table(
        "chat_binding_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_chat_binding_failures_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_binding_failures")),
    )
    with op.batch_alter_table("chat_binding_failures", schema=None) as batch_op:
        batch_op.create_index("ix_chat_binding_failures_user", ["user_id", "at"], unique=False)

    op.create_table(
        "bot_callbacks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bot_id", sa.String(length=128), nullable=False),
        sa.Column("msgid", sa.String(length=128), nullable=False),
        sa.Column("userid", sa.String(length=128), nullable=False),
        sa.Column("chatid", sa.String(length=128), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bot_callbacks")),
        sa.UniqueConstraint("bot_id", "msgid", name="uq_bot_callbacks_msgid"),
    )

    op.create_table(
        "chat_replies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transport", sa.String(length=16), nullable=False),
        sa.Column("external_id", sa.String(length=128), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("secret", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status in ('pending', 'sending', 'sent', 'failed')", name=op.f("ck_chat_replies_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_replies")),
    )
    with op.batch_alter_table("chat_replies", schema=None) as batch_op:
        batch_op.create_index("ix_chat_replies_due", ["status", "id"], unique=False)


def downgrade():
    op.drop_table("chat_replies")
    op.drop_table("bot_callbacks")
    op.drop_table("chat_binding_failures")
    op.drop_table("chat_binding_codes")
    op.drop_table("chat_bindings")
