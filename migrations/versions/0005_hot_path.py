"""the payment hot path: campaigns selected by index, attribution hint on users

Revision ID: 0005_hot_path
Revises: 0004_campaign_controls

The payment reads only the campaigns that can apply to an order: by the merchant they serve
(None: every merchant's), their trigger's kind and minimum order, and their rules' applies_to,
all denormalised onto the campaign row (kept in step by the model's mapper events). A buyer's
``attribution_until`` says whether a packet they spent may still attribute their orders.
Existing rows are filled in here.
"""

import json
from datetime import datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0005_hot_path"
down_revision = "0004_campaign_controls"
branch_labels = None
depends_on = None


def _json(value):
    return json.loads(value) if isinstance(value, str) else (value or {})


def upgrade():
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("serves_merchant_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("trigger_kind", sa.String(length=24), server_default="manual", nullable=False))
        batch_op.add_column(sa.Column("trigger_min_order_fen", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("applies_to", sa.String(length=16), server_default="packet", nullable=False))
        batch_op.create_index("ix_campaigns_serving", ["status", "serves_merchant_id"], unique=False)
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attribution_until", sa.DateTime(timezone=True), nullable=True))

    bind = op.get_bind()
    campaigns = bind.execute(
        sa.text(
            "SELECT c.id, c.funder_type, c.funder_merchant_id, c.issuer_merchant_id, c.trigger, r.rules "
            "FROM campaigns c LEFT JOIN campaign_rules r ON r.campaign_id = c.id AND r.version = c.rules_version"
        )
    ).all()
    for cid, funder_type, funder_merchant_id, issuer_merchant_id, trigger, rules in campaigns:
        trigger, rules = _json(trigger), _json(rules)
        bind.execute(
            sa.text(
                "UPDATE campaigns SET serves_merchant_id = :m, trigger_kind = :k, trigger_min_order_fen = :mo, "
                "applies_to = :a WHERE id = :id"
            ),
            {
                "m": funder_merchant_id if funder_type == "merchant_deposit" else issuer_merchant_id,
                "k": trigger.get("kind") or "manual",
                "mo": int(trigger.get("min_order_fen") or 0),
                "a": rules.get("applies_to") or "packet",
                "id": cid,
            },
        )
    used = bind.execute(
        sa.text(
            "SELECT p.owner_id, p.used_at, r.rules FROM red_packets p JOIN campaign_rules r "
            "ON r.campaign_id = p.campaign_id AND r.version = p.rules_version "
            "WHERE p.status = 'used' AND p.issuer_type = 'merchant' AND p.used_at IS NOT NULL"
        )
    ).all()
    sqlite = bind.dialect.name == "sqlite"
    until = {}
    for owner_id, used_at, rules in used:
        days = _json(rules).get("attribution_days")
        if not days or owner_id is None:
            continue
        if isinstance(used_at, str):  # SQLite hands text back here: naive UTC
            used_at = datetime.fromisoformat(used_at)
        ends = used_at + timedelta(days=int(days))
        until[owner_id] = max(until.get(owner_id, ends), ends)
    for owner_id, ends in until.items():
        if sqlite:
            ends = ends.replace(tzinfo=None).isoformat(sep=" ")  # as the app's UTCDateTime stores it there
        bind.execute(sa.text("UPDATE users SET attribution_until = :u WHERE id = :id"), {"u": ends, "id": owner_id})


def downgrade():
    # Plain ALTER TABLE … DROP COLUMN (SQLite 3.35+ has it): a batch copy of users would trip its foreign keys.
    op.drop_column("users", "attribution_until")
    op.drop_index("ix_campaigns_serving", table_name="campaigns")
    for column in ("applies_to", "trigger_min_order_fen", "trigger_kind", "serves_merchant_id"):
        op.drop_column("campaigns", column)
