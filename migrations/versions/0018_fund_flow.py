"""fund flow: a merchant's sub-merchant number and appid (service-provider mode), and on each order the
sub-merchant it was paid to and whether it was opened for profit sharing

Revision ID: 0018_fund_flow
Revises: 0017_challenge_posts
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0018_fund_flow"
down_revision = "0017_challenge_posts"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("merchants") as batch:
        batch.add_column(sa.Column("sub_mchid", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("sub_appid", sa.String(length=32), nullable=True))
        batch.create_unique_constraint(batch.f("uq_merchants_sub_mchid"), ["sub_mchid"])
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("sub_mchid", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("profit_sharing", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade():
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("profit_sharing")
        batch.drop_column("sub_mchid")
    with op.batch_alter_table("merchants") as batch:
        batch.drop_constraint(batch.f("uq_merchants_sub_mchid"), type_="unique")
        batch.drop_column("sub_appid")
        batch.drop_column("sub_mchid")
