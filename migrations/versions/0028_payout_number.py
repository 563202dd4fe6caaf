"""payouts: on PostgreSQL a payout's external number is completed from its id as the row is inserted (a BEFORE
INSERT trigger), so queuing a payout is one statement instead of an INSERT and an UPDATE

Revision ID: 0028_payout_number
Revises: 0027_share_debt_payout
"""

from alembic import op


# revision identifiers, used by Alembic.
revision = "0028_payout_number"
down_revision = "0027_share_debt_payout"
branch_labels = None
depends_on = None

# An external number sent as '#<prefix><rail tag>#<anything>' becomes '<prefix><rail tag>' + the id, zero-padded
# to 12 digits (payouts/outbox.py external_no_for, which the app compares the result with).
NUMBER_TRIGGER = """
CREATE OR REPLACE FUNCTION payouts_number_from_id() RETURNS trigger AS $$
BEGIN
    IF left(NEW.external_no, 1) = '#' THEN
        NEW.external_no := split_part(NEW.external_no, '#', 2)
            || CASE WHEN length(NEW.id::text) >= 12 THEN NEW.id::text ELSE lpad(NEW.id::text, 12, '0') END;
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS payouts_number ON payouts;
CREATE TRIGGER payouts_number BEFORE INSERT ON payouts FOR EACH ROW EXECUTE FUNCTION payouts_number_from_id();
"""


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(NUMBER_TRIGGER)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS payouts_number ON payouts")
        op.execute("DROP FUNCTION IF EXISTS payouts_number_from_id()")
