"""challenge posts: a group's WeCom webhook (key encrypted), daily leaderboard and final result posts claimed
once per (challenge, kind, Beijing day), and a chat-tool group challenge's card state

Revision ID: 0017_challenge_posts
Revises: 0016_chat_bindings
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0017_challenge_posts"
down_revision = "0016_chat_bindings"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "group_webhooks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transport", sa.String(length=16), nullable=False),
        sa.Column("group_id", sa.String(length=128), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("set_by", sa.Integer(), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["set_by"], ["users.id"], name=op.f("fk_group_webhooks_set_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_group_webhooks")),
        sa.UniqueConstraint("transport", "group_id", name="uq_group_webhooks_group"),
    )
    op.create_table(
        "challenge_posts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("challenge_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint("kind in ('daily', 'final')", name=op.f("ck_challenge_posts_kind")),
        sa.CheckConstraint(
            "status in ('pending', 'sending', 'sent', 'failed')", name=op.f("ck_challenge_posts_status")
        ),
        sa.ForeignKeyConstraint(
            ["challenge_id"], ["challenges.id"], name=op.f("fk_challenge_posts_challenge_id_challenges")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_challenge_posts")),
        sa.UniqueConstraint("challenge_id", "kind", "day", name="uq_challenge_posts_once"),
    )
    with op.batch_alter_table("challenge_posts", schema=None) as batch_op:
        batch_op.create_index("ix_challenge_posts_due", ["status", "id"], unique=False)
    op.create_table(
        "chattool_cards",
        sa.Column("challenge_id", sa.Integer(), nullable=False),
        sa.Column("activity_id", sa.String(length=128), nullable=True),
        sa.Column("activity_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("shown_participants", sa.Integer(), nullable=False),
        sa.Column("shown_state", sa.Integer(), nullable=False),
        sa.Column("busy_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["challenge_id"], ["challenges.id"], name=op.f("fk_chattool_cards_challenge_id_challenges")
        ),
        sa.PrimaryKeyConstraint("challenge_id", name=op.f("pk_chattool_cards")),
    )


def downgrade():
    op.drop_table("chattool_cards")
    with op.batch_alter_table("challenge_posts", schema=None) as batch_op:
        batch_op.drop_index("ix_challenge_posts_due")
    op.drop_table("challenge_posts")
    op.drop_table("group_webhooks")
