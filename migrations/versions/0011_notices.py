"""notices: the user-notification outbox

Revision ID: 0011_notices
Revises: 0010_packet_revoked_at

One row per notice, written in the transaction of the event it tells of (unique key: once per event),
sent later by the notices dispatcher and always kept in the person's in-app inbox.
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0011_notices"
down_revision = "0010_packet_revoked_at"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "notices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=160), nullable=False),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("page", sa.String(length=256), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=True),
        sa.Column("template_id", sa.String(length=64), nullable=True),
        sa.Column("wechat_msgid", sa.String(length=64), nullable=True),
        sa.Column("delivery", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status in ('pending', 'sending', 'sent', 'inbox', 'cancelled')", name=op.f("ck_notices_status")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_notices_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notices")),
        sa.UniqueConstraint("key", name=op.f("uq_notices_key")),
    )
    with op.batch_alter_table("notices", schema=None) as batch_op:
        batch_op.create_index("ix_notices_due", ["status", "next_attempt_at"], unique=False)
        batch_op.create_index("ix_notices_user", ["user_id", "created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_notices_wechat_msgid"), ["wechat_msgid"], unique=False)
    op.create_table(
        "notice_consents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("template_id", sa.String(length=64), nullable=False),
        sa.Column("remaining", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("remaining >= 0", name=op.f("ck_notice_consents_remaining")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_notice_consents_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notice_consents")),
        sa.UniqueConstraint("user_id", "template_id", name=op.f("uq_notice_consents_user_id_template_id")),
    )
    op.create_table(
        "notice_consent_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("template_id", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("ref", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=True),
        sa.Column("counted", sa.Boolean(), nullable=False),
        sa.Column("paired_with", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_notice_consent_reports_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notice_consent_reports")),
        sa.UniqueConstraint(
            "user_id", "source", "ref", "template_id", name=op.f("uq_notice_consent_reports_user_id_source_ref_template_id")
        ),
    )
    with op.batch_alter_table("notice_consent_reports", schema=None) as batch_op:
        batch_op.create_index(
            "ix_notice_consent_reports_pairing", ["user_id", "template_id", "created_at"], unique=False
        )


def downgrade():
    with op.batch_alter_table("notice_consent_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_notice_consent_reports_pairing")
    op.drop_table("notice_consent_reports")
    op.drop_table("notice_consents")
    with op.batch_alter_table("notices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notices_wechat_msgid"))
        batch_op.drop_index("ix_notices_user")
        batch_op.drop_index("ix_notices_due")
    op.drop_table("notices")
