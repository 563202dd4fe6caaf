"""ten indexes on one column that a unique index beginning with the same column already serves (PostgreSQL and SQLite
read the unique one for the column alone): every insert paid for both, a claim's packet and a payment's rebates among
them

Revision ID: 0037_redundant_indexes
Revises: 0036_ledger_balance_marks
"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0037_redundant_indexes"
down_revision = "0036_ledger_balance_marks"
branch_labels = None
depends_on = None

# table, column: the unique index that serves it begins with the column
REDUNDANT = (
    ("campaign_rules", "campaign_id"),  # uq_campaign_rules_campaign_id_version
    ("challenge_prizes", "challenge_id"),  # uq_challenge_prizes_challenge_id_payer_user_id_payee_user_id
    ("chat_bindings", "user_id"),  # uq_chat_bindings_user
    ("order_milestones", "order_id"),  # uq_order_milestones_order_id_name
    ("products", "merchant_id"),  # uq_products_merchant_id_name
    ("rebates", "order_id"),  # uq_rebates_order_id_campaign_id_role
    ("reconciliation_mismatches", "run_id"),  # uq_reconciliation_mismatches_run_id_subject_type_subject_ref
    ("red_packets", "campaign_id"),  # uq_red_packets_campaign_id_source_source_ref
    ("share_links", "campaign_id"),  # uq_share_links_campaign_id_user_id
    ("sign_ins", "user_id"),  # uq_sign_ins_user_id_day
)


def upgrade():
    for table, column in REDUNDANT:
        op.drop_index(f"ix_{table}_{column}", table_name=table)


def downgrade():
    for table, column in REDUNDANT:
        op.create_index(f"ix_{table}_{column}", table, [column], unique=False)
