"""users.region_set_at: when the person last said their region (``PUT /api/v1/me/region``). A campaign limited to
regions takes only people whose region is one of them; a person changes theirs at most once every 30 days after
setting it, so nobody hops from region to region collecting each region's packets. A region set before this
revision (by hand) has no date: the person's first change of it is free.

Revision ID: 0044_user_region_set_at
Revises: 0043_user_token_generation
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0044_user_region_set_at"
down_revision = "0043_user_token_generation"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("region_set_at", sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table("users") as batch:
        batch.drop_column("region_set_at")
