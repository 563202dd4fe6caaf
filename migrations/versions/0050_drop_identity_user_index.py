"""user_identities: drop ``ix_user_identities_user_id``, which the unique ``(user_id, appid)`` index (0047) covers.

Every read of a person's identities by ``user_id`` (and the foreign key's checks when a user row is deleted) is
served by the leading column of ``uq_user_identities_user_id_appid``; the single-column index only cost every
sign-in's insert a second index write and its pages. Dropping an index holds the table's lock for an instant; on
PostgreSQL the upgrade waits at most ``LOCK_TIMEOUT`` for it rather than queueing sign-ins and payout lookups behind
a long transaction (it fails then, changing nothing, and is run again).

Revision ID: 0050_drop_identity_user_index
Revises: 0049_deposit_withdrawals
"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0050_drop_identity_user_index"
down_revision = "0049_deposit_withdrawals"
branch_labels = None
depends_on = None

LOCK_TIMEOUT = "10s"


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    op.drop_index("ix_user_identities_user_id", table_name="user_identities")


def downgrade():
    op.create_index("ix_user_identities_user_id", "user_identities", ["user_id"], unique=False)
