"""insights: daily rollups for the campaign effect reports

Revision ID: 0008_insights
Revises: 0007_risk

One counter row per (Beijing day, merchant, campaign, metric, dimension), the people who took part
per day (distinct counts cannot be summed across days), and the days the rollup job has built.
"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0008_insights"
down_revision = "0007_risk"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "insights_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("merchant_id", sa.BigInteger(), nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("dim", sa.String(length=64), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("fen", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "merchant_id", "campaign_id", "metric", "dim", name=op.f("pk_insights_daily")),
    )
    op.create_index("ix_insights_daily_campaign_day", "insights_daily", ["campaign_id", "day"], unique=False)
    op.create_table(
        "insights_people",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("merchant_id", sa.BigInteger(), nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("first_day", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("day", "merchant_id", "campaign_id", "user_id", name=op.f("pk_insights_people")),
    )
    op.create_index("ix_insights_people_campaign_day", "insights_people", ["campaign_id", "day"], unique=False)
    op.create_table(
        "insights_days",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("rolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_insights_days")),
    )


def downgrade():
    op.drop_table("insights_days")
    op.drop_index("ix_insights_people_campaign_day", table_name="insights_people")
    op.drop_table("insights_people")
    op.drop_index("ix_insights_daily_campaign_day", table_name="insights_daily")
    op.drop_table("insights_daily")
