"""operators: ``username_key``, the username as people read it (NFKC, then case-folded), unique, so two
operators whose names differ only in case or in full-width letters cannot both exist, whatever two concurrent
creates do (the app's own check reads before it writes)

And ``created_by_operator_id``: who created each operator from now on (the four-eyes rules refuse an approver the
proposer created recently). A plain column: SQLite cannot add a foreign key to a populated table in place.

Existing rows get their key computed here; a name that already collides with an older operator's keeps its
operator (the audit log names it) under the key ``<key>#<id>``, so the migration never fails on old data.

Revision ID: 0030_operator_key_creator
Revises: 0029_manual_payout_index
"""

import unicodedata

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0030_operator_key_creator"
down_revision = "0029_manual_payout_index"
branch_labels = None
depends_on = None


def _key(username: str) -> str:
    folded = unicodedata.normalize("NFKC", username).casefold()  # models.operators.username_key, frozen here
    return "".join(c for c in folded if unicodedata.category(c) != "Cf")


def upgrade():
    # NOT NULL needs a default for the rows already there (SQLite adds no NOT NULL column without one); every
    # insert names the key (the model's default), and PostgreSQL drops the placeholder below.
    op.add_column("operators", sa.Column("username_key", sa.Text(), nullable=False, server_default=""))
    conn = op.get_bind()
    operators = sa.table("operators", sa.column("id", sa.Integer), sa.column("username", sa.String))
    keyed = sa.table("operators", sa.column("id", sa.Integer), sa.column("username_key", sa.String))
    taken: set[str] = set()
    for operator_id, username in conn.execute(sa.select(operators.c.id, operators.c.username).order_by("id")):
        key = _key(username)
        if key in taken:
            key = f"{key}#{operator_id}"
        taken.add(key)
        conn.execute(sa.update(keyed).where(keyed.c.id == operator_id).values(username_key=key))
    if conn.dialect.name == "postgresql":
        op.alter_column("operators", "username_key", server_default=None)
    op.create_index("uq_operators_username_key", "operators", ["username_key"], unique=True)
    op.add_column("operators", sa.Column("created_by_operator_id", sa.Integer(), nullable=True))


def downgrade():
    op.drop_column("operators", "created_by_operator_id")
    op.drop_index("uq_operators_username_key", table_name="operators")
    op.drop_column("operators", "username_key")  # SQLite 3.35+ drops a column in place
