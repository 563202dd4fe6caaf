"""audiences: definitions over purchase history, batch runs with a holdout, their members

Revision ID: 0014_audiences
Revises: 0013_notice_hooks

An audience is an operator's definition (JSON clauses, optionally scoped to one merchant); a run issues a
campaign's packets to it in chunks, keeping a random holdout that gets nothing; its members (unique per run
and person) record each one's packet or refusal, so a resumed run never issues twice.
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0014_audiences"
down_revision = "0013_notice_hooks"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "audiences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["created_by"], ["operators.id"], name=op.f("fk_audiences_created_by_operators")),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_audiences_merchant_id_merchants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audiences")),
    )
    with op.batch_alter_table("audiences", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audiences_merchant_id"), ["merchant_id"], unique=False)

    op.create_table(
        "audience_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("audience_id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("holdout_bps", sa.Integer(), nullable=False),
        sa.Column("seed", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("treated", sa.Integer(), nullable=False),
        sa.Column("holdout", sa.Integer(), nullable=False),
        sa.Column("issued", sa.Integer(), nullable=False),
        sa.Column("refused", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status in ('pending', 'issuing', 'done')", name=op.f("ck_audience_runs_status")),
        sa.CheckConstraint(
            "holdout_bps >= 0 and holdout_bps <= 5000", name=op.f("ck_audience_runs_holdout_share")
        ),
        sa.ForeignKeyConstraint(
            ["audience_id"], ["audiences.id"], name=op.f("fk_audience_runs_audience_id_audiences")
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_audience_runs_campaign_id_campaigns")
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["operators.id"], name=op.f("fk_audience_runs_created_by_operators")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audience_runs")),
    )
    with op.batch_alter_table("audience_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audience_runs_audience_id"), ["audience_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_audience_runs_campaign_id"), ["campaign_id"], unique=False)
        batch_op.create_index("ix_audience_runs_open", ["status"], unique=False)

    op.create_table(
        "audience_members",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("holdout", sa.Boolean(), nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("packet_id", sa.BigInteger(), nullable=True),
        sa.Column("refusal", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["audience_runs.id"], name=op.f("fk_audience_members_run_id_audience_runs")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_audience_members_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audience_members")),
        sa.UniqueConstraint("run_id", "user_id", name=op.f("uq_audience_members_run_id_user_id")),
    )
    with op.batch_alter_table("audience_members", schema=None) as batch_op:
        batch_op.create_index("ix_audience_members_todo", ["run_id", "done"], unique=False)


def downgrade():
    with op.batch_alter_table("audience_members", schema=None) as batch_op:
        batch_op.drop_index("ix_audience_members_todo")
    op.drop_table("audience_members")
    with op.batch_alter_table("audience_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_audience_runs_open")
        batch_op.drop_index(batch_op.f("ix_audience_runs_campaign_id"))
        batch_op.drop_index(batch_op.f("ix_audience_runs_audience_id"))
    op.drop_table("audience_runs")
    with op.batch_alter_table("audiences", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audiences_merchant_id"))
    op.drop_table("audiences")
