"""the ledger's balance trigger looks its accounts up by key

Revision ID: 0006_ledger_trigger_by_index
Revises: 0005_hot_path

The deferred trigger that checks, at commit, that an entry's postings sum to zero in the entry's
unit joined ``ledger_accounts`` to the postings. PL/pgSQL keeps a generic plan per connection, and
for that join it chose a hash join over a sequential scan of every account: each posting of a
payment read the whole accounts table (0.4 ms per posting with 6,000 accounts, growing with every
new user). The unit is now read once from the entry and each posting's account by its primary key,
so the check costs the same whatever the number of accounts. Same checks, same errors.
"""

from alembic import op

revision = "0006_ledger_trigger_by_index"
down_revision = "0005_hot_path"
branch_labels = None
depends_on = None

BY_INDEX = """
CREATE OR REPLACE FUNCTION ledger_entry_balances() RETURNS trigger AS $$
DECLARE
    eid bigint;
    entry_unit text;
    total numeric;
    n integer;
    bad_units integer;
BEGIN
    IF TG_OP = 'DELETE' THEN eid := OLD.entry_id; ELSE eid := NEW.entry_id; END IF;
    SELECT e.unit INTO entry_unit FROM ledger_entries e WHERE e.id = eid;
    SELECT coalesce(sum(p.amount), 0), count(*),
           count(*) FILTER (WHERE (SELECT a.unit FROM ledger_accounts a WHERE a.id = p.account_id)
                                  IS DISTINCT FROM entry_unit)
      INTO total, n, bad_units
      FROM ledger_postings p
     WHERE p.entry_id = eid;
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger entry % is unbalanced: postings sum to %', eid, total
            USING ERRCODE = 'check_violation';
    END IF;
    IF n < 2 AND entry_unit IS NOT NULL THEN
        RAISE EXCEPTION 'ledger entry % has % postings; an entry needs at least two', eid, n
            USING ERRCODE = 'check_violation';
    END IF;
    IF bad_units > 0 AND entry_unit IS NOT NULL THEN
        RAISE EXCEPTION 'ledger entry % mixes units', eid USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
"""

BY_JOIN = """
CREATE OR REPLACE FUNCTION ledger_entry_balances() RETURNS trigger AS $$
DECLARE
    eid bigint;
    total numeric;
    n integer;
    bad_units integer;
BEGIN
    IF TG_OP = 'DELETE' THEN eid := OLD.entry_id; ELSE eid := NEW.entry_id; END IF;
    SELECT coalesce(sum(p.amount), 0), count(*),
           count(*) FILTER (WHERE a.unit <> e.unit)
      INTO total, n, bad_units
      FROM ledger_postings p
      JOIN ledger_accounts a ON a.id = p.account_id
      JOIN ledger_entries e ON e.id = p.entry_id
     WHERE p.entry_id = eid;
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger entry % is unbalanced: postings sum to %', eid, total
            USING ERRCODE = 'check_violation';
    END IF;
    IF n < 2 AND EXISTS (SELECT 1 FROM ledger_entries WHERE id = eid) THEN
        RAISE EXCEPTION 'ledger entry % has % postings; an entry needs at least two', eid, n
            USING ERRCODE = 'check_violation';
    END IF;
    IF bad_units > 0 THEN
        RAISE EXCEPTION 'ledger entry % mixes units', eid USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
"""


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(BY_INDEX)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(BY_JOIN)
