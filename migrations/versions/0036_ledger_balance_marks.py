"""ledger: balance marks (``ledger_balance_marks``, ``ledger_mark_progress``): an account's balance is its mark plus the
postings after it, read by ``ix_ledger_postings_account_tail`` (account, id), which replaces the index on the account
alone; on PostgreSQL postings can no longer be changed or deleted (a mark sums them once, for good)

Revision ID: 0036_ledger_balance_marks
Revises: 0035_refund_id_index
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0036_ledger_balance_marks"
down_revision = "0035_refund_id_index"
branch_labels = None
depends_on = None

NEVER_CHANGED = """
CREATE OR REPLACE FUNCTION ledger_postings_never_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ledger postings are never changed or deleted (posting %): post a reversing entry', OLD.id
        USING ERRCODE = 'check_violation';
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER ledger_postings_never_change BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_postings_never_change();
"""


def upgrade():
    op.create_table(
        "ledger_balance_marks",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("upto_posting_id", sa.BigInteger(), nullable=False),
        sa.Column("marked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ledger_accounts.id"], name=op.f("fk_ledger_balance_marks_account_id_ledger_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_ledger_balance_marks")),
    )
    op.create_table(
        "ledger_mark_progress",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("upto_posting_id", sa.BigInteger(), nullable=False),
        sa.Column("candidate_id", sa.BigInteger(), nullable=True),
        sa.Column("candidate_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("candidate_xmax", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_mark_progress")),
    )
    with op.batch_alter_table("ledger_postings") as batch_op:
        batch_op.create_index("ix_ledger_postings_account_tail", ["account_id", "id"], unique=False)
        batch_op.drop_index("ix_ledger_postings_account_id")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(NEVER_CHANGED)
        # Ids in the order they are taken: a session caching a block of them would hand out ids below others
        # already committed, long after (the marks' end rests on it). 1 is the default; said here so it stays.
        op.execute("ALTER SEQUENCE ledger_postings_id_seq CACHE 1")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS ledger_postings_never_change ON ledger_postings")
        op.execute("DROP FUNCTION IF EXISTS ledger_postings_never_change()")
    with op.batch_alter_table("ledger_postings") as batch_op:
        batch_op.create_index("ix_ledger_postings_account_id", ["account_id"], unique=False)
        batch_op.drop_index("ix_ledger_postings_account_tail")
    op.drop_table("ledger_mark_progress")
    op.drop_table("ledger_balance_marks")
