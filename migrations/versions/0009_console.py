"""console: server-side sessions of the operator console

Revision ID: 0009_console
Revises: 0008_insights

The browser's cookie carries only the session's id and CSRF secret; signing out, revoking the token
signed in with, or disabling the operator ends the session here.
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0009_console"
down_revision = "0008_insights"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("operator_id", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["operator_id"], ["operators.id"], name=op.f("fk_console_sessions_operator_id_operators")),
        sa.ForeignKeyConstraint(["token_id"], ["operator_tokens.id"], name=op.f("fk_console_sessions_token_id_operator_tokens")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_sessions")),
    )
    with op.batch_alter_table("console_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_console_sessions_operator_id"), ["operator_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_console_sessions_token_id"), ["token_id"], unique=False)


def downgrade():
    with op.batch_alter_table("console_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_console_sessions_token_id"))
        batch_op.drop_index(batch_op.f("ix_console_sessions_operator_id"))
    op.drop_table("console_sessions")
