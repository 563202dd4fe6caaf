"""reconciliation per sub-merchant: a run names the sub-merchant whose trade bill it read ("" for our own
merchant number's bills), and a day has one run per bill kind and sub-merchant

Revision ID: 0024_reconcile_sub_merchants
Revises: 0023_profit_sharing
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0024_reconcile_sub_merchants"
down_revision = "0023_profit_sharing"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("reconciliation_runs") as batch:
        batch.add_column(sa.Column("sub_mchid", sa.String(length=32), server_default="", nullable=False))
        batch.drop_constraint(batch.f("uq_reconciliation_runs_bill_date_kind"), type_="unique")
        batch.create_unique_constraint(
            batch.f("uq_reconciliation_runs_bill_date_kind_sub_mchid"), ["bill_date", "kind", "sub_mchid"]
        )


def downgrade():
    # The old key (bill_date, kind) cannot hold a day reconciled per sub-merchant; its runs and the
    # operators' resolutions are not dropped silently: delete them by hand first if that is meant.
    per_sub = op.get_bind().execute(sa.text("SELECT count(*) FROM reconciliation_runs WHERE sub_mchid <> ''"))
    if per_sub.scalar_one():
        raise RuntimeError("reconciliation runs per sub-merchant exist; the old schema cannot hold them")
    with op.batch_alter_table("reconciliation_runs") as batch:
        batch.drop_constraint(batch.f("uq_reconciliation_runs_bill_date_kind_sub_mchid"), type_="unique")
        batch.create_unique_constraint(batch.f("uq_reconciliation_runs_bill_date_kind"), ["bill_date", "kind"])
        batch.drop_column("sub_mchid")
