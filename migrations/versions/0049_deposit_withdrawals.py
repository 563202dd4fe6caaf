"""deposit_proposals: withdrawals of unspent deposit money, and the bank transfer's reference that records one
transfer once.

``purpose`` may now be ``withdrawal`` (money paid back to the merchant by bank transfer, four eyes, never what its
live packets and held rebates are promised: ``rebate.deposit_ops``). ``transfer_ref`` is the external reference of
the bank transfer a proposal records (required for new top-ups and withdrawals by the API, optional for fee
payments; proposals made before this revision have none). ``uq_deposit_proposals_transfer_ref`` holds one
proposal per merchant, purpose and reference among those not rejected, so two operators (or one with two
idempotency keys) cannot both record, and both have approved, one transfer; a rejected one frees its reference.

Revision ID: 0049_deposit_withdrawals
Revises: 0048_ban_release
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0049_deposit_withdrawals"
down_revision = "0048_ban_release"
branch_labels = None
depends_on = None

LIVE = sa.text("transfer_ref IS NOT NULL AND status <> 'rejected'")


def upgrade():
    with op.batch_alter_table("deposit_proposals") as batch:
        batch.add_column(sa.Column("transfer_ref", sa.String(length=64), nullable=True))
        batch.drop_constraint(op.f("ck_deposit_proposals_purpose"), type_="check")
        batch.create_check_constraint(
            op.f("ck_deposit_proposals_purpose"), sa.text("purpose in ('deposit', 'fees', 'withdrawal')")
        )
    op.create_index(
        "uq_deposit_proposals_transfer_ref",
        "deposit_proposals",
        ["merchant_id", "purpose", "transfer_ref"],
        unique=True,
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )


def downgrade():
    op.drop_index("uq_deposit_proposals_transfer_ref", table_name="deposit_proposals")
    made = op.get_bind().execute(sa.text("SELECT count(*) FROM deposit_proposals WHERE purpose = 'withdrawal'"))
    if made.scalar():  # their approvals moved money the ledger keeps: never deleted to go back
        raise RuntimeError("0049: withdrawal proposals exist (the ledger holds their money); nothing was changed")
    with op.batch_alter_table("deposit_proposals") as batch:
        batch.drop_constraint(op.f("ck_deposit_proposals_purpose"), type_="check")
        batch.create_check_constraint(op.f("ck_deposit_proposals_purpose"), sa.text("purpose in ('deposit', 'fees')"))
        batch.drop_column("transfer_ref")
