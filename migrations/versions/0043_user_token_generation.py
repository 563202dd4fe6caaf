"""users.token_generation: "sign out everywhere" (``POST /api/v1/auth/sign-out-everywhere``) moves it on, and a
token carrying another generation is refused (401 ``token_revoked``): a person whose phone was lost ends every
other session at once instead of waiting out the token's lifetime.

Revision ID: 0043_user_token_generation
Revises: 0042_order_packets_by_packet
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0043_user_token_generation"
down_revision = "0042_order_packets_by_packet"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("token_generation", sa.Integer(), nullable=False, server_default="0"))


def downgrade():
    with op.batch_alter_table("users") as batch:
        batch.drop_column("token_generation")
