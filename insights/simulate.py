"""What-if replay: a draft rule set over the past N days of paid orders, in memory, writing nothing.

``load_rows`` reads the order facts a campaign's current rules applied to in
ONE query of plain columns (its packet orders; for a referral campaign the
orders the payment decides it on: those of people with an inviter, or for one
issuing on paid orders every order reaching its trigger's minimum). ``project``
is pure: rows and a ``RuleSet`` in, a projection out, each order evaluated by
``rebate.rules.evaluate`` as the payment and any refund since left it.
``simulate`` replays the draft and the current version over the same rows and
answers the change.

Assumptions, stated in every answer: amounts are net of partial refunds; the
budget starts full at the window's start and runs out on the Beijing date of
the first order whose cost (packet value + rebates) no longer fits; held
awards count in full, as if every condition were met; rebates are not cut by
the budget, so the figures are what the rules would ask for; later orders
attributed to a packet are not replayed. Rules with category rates read the
orders' lines too (a second query, only then): each order's net base is shared
out over its lines by their value, as at payment and refund.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import replace
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import and_, case, func, or_, select, type_coerce

from models import Campaign, Order, OrderLine, OrderPacket, OrderStatus, Rebate, RedPacket, User, UTCDateTime, db
from models.base import beijing
from models.sql import reading_apart
from models.triggers import TriggerKind
from money import format_yuan, left_after_refunds
from rebate.campaigns import merchant_of, rules_of
from rebate.rules import CASH_FORMS, Decision, Form, Line, OrderFacts, RuleSet, evaluate

ISSUING = frozenset({"merchant", "user"})  # platform issuers receive no rebates
ASSUMPTIONS = (
    "amounts are net of partial refunds; fully refunded orders are left out",
    "the budget starts full at the window's start; it runs out on the Beijing date of the first order "
    "whose cost no longer fits",
    "held awards count in full, as if every condition were met",
    "rebates are what the rules ask for, not cut by the budget",
    "later orders attributed to a packet are not replayed",
    "category rates share each order's net base out over its lines in proportion to their value",
    "rebates are replayed in each rule's default form (people's chosen forms are not read)",
)


class ReplayRow(NamedTuple):
    """One paid order's facts, as plain values."""

    order_id: int
    paid_at: datetime
    order_total_fen: int  # goods value, net of refunds in proportion
    paid_fen: int  # what the buyer paid, net of refunds
    packet_value_fen: int  # the discounts of the campaign's own packets on the order, paid by the funder
    issuer_type: str | None  # of the campaign's (first) packet the order spent
    invited_since: datetime | None  # when the buyer was bound to an inviter, if they have one
    lines: tuple[Line, ...] = ()  # the order's lines (read only for rules with category rates)
    # as paid, before any refund (None: nothing refunded): a refund only ever lowers what the payment awarded
    total_at_payment_fen: int | None = None
    paid_at_payment_fen: int | None = None
    # what the cash rebates of campaigns decided before this one on the order (lower ids) left of the payment for
    # this one's (``rebate.payments._run_rebates``); None: all of it
    cash_room_fen: int | None = None


def _amount(prefix: str, fen: int) -> dict:
    return {f"{prefix}_fen": fen, f"{prefix}_yuan": format_yuan(fen)}


# --- loading ---------------------------------------------------------------------------------------


def replay_query(campaign: Campaign, rules: RuleSet, since: datetime, until: datetime):
    """The one statement: columns only, oldest first."""
    invited_since = case((User.inviter_id.is_not(None), func.coalesce(User.invited_at, User.created_at)))

    # The campaign's own packets an order spent (``order_packets``: an order may stack packets of several
    # campaigns, this one's not necessarily first): their discounts are its cost, its first packet's issuer the
    # issuer the engine pays (``rebate.payments._run_rebates``); another campaign's packet is none of its business.
    # Asked per order of the window (``ix_orders_paid_at``) by the order's key: each a lookup, whatever the
    # planner's statistics say (a join to an aggregate of them was planned as a loop over every row of it).
    def of_own_packets(*columns):
        return (
            select(*columns)
            .select_from(OrderPacket)
            .join(RedPacket, RedPacket.id == OrderPacket.packet_id)
            .where(OrderPacket.order_id == Order.id, RedPacket.campaign_id == campaign.id)
            .correlate(Order)
        )

    discount = of_own_packets(func.coalesce(func.sum(OrderPacket.discount_fen), 0)).scalar_subquery()
    # The payment decides the order's campaigns in id order, each one's cash rebates within what the earlier ones
    # left of the payment: what those took (``original_fen``, as awarded) is this one's cash room's due.
    cash_before = (
        select(func.coalesce(func.sum(Rebate.original_fen), 0))
        .where(
            Rebate.order_id == Order.id,
            Rebate.campaign_id < campaign.id,
            Rebate.form.in_([f.value for f in CASH_FORMS]),
        )
        .correlate(Order)
        .scalar_subquery()
    )
    issuer = of_own_packets(RedPacket.issuer_type).order_by(OrderPacket.packet_id).limit(1).scalar_subquery()
    stmt = (
        select(
            Order.id,
            Order.paid_at,
            Order.total_fen,
            Order.paid_fen,
            Order.payable_fen,
            Order.refunded_fen,
            discount,
            issuer,
            type_coerce(invited_since, UTCDateTime),
            cash_before,
        )
        .join(User, User.id == Order.user_id)
        .where(Order.status == OrderStatus.PAID, Order.paid_at >= since, Order.paid_at < until)
        .order_by(Order.paid_at, Order.id)
    )
    spent_own = of_own_packets(OrderPacket.packet_id).exists()
    if rules.applies_to == "referral":
        # The orders the payment decides it on (``rebate.payments._load_statement``): a campaign issuing on paid
        # orders on every order reaching its trigger's minimum, invited buyer or not; any other on the orders of
        # invited buyers; a merchant's only on its own orders; and on any order spending its own packets.
        if campaign.trigger_kind == TriggerKind.ORDER_PAID.value:
            reached = Order.total_fen >= campaign.trigger_min_order_fen
        else:
            reached = User.inviter_id.is_not(None)
        owner = merchant_of(campaign)
        served = reached if owner is None else and_(reached, Order.merchant_id == owner)
        return stmt.where(or_(served, spent_own))
    return stmt.where(spent_own)


def to_row(
    order_id, paid_at, total, paid, charged, refunded, discount, issuer_type, invited_since, cash_before=0
) -> ReplayRow:
    net_paid = left_after_refunds(paid, charged, refunded)  # as ``Order.net_paid_fen``
    net_total = left_after_refunds(total, charged, refunded)  # as ``Order.net_total_fen``
    refunds = refunded > 0
    return ReplayRow(
        order_id,
        paid_at,
        net_total,
        net_paid,
        int(discount),  # a SUM
        issuer_type,
        invited_since,
        total_at_payment_fen=total if refunds else None,
        paid_at_payment_fen=paid if refunds else None,
        cash_room_fen=max(0, paid - int(cash_before)) if cash_before else None,
    )


def load_rows(
    campaign: Campaign, rules: RuleSet, since: datetime, until: datetime, *, lines: bool = False, apart: bool = False
) -> list[ReplayRow]:
    """The rows; with ``lines`` (rules rating by category) each with its order's lines, in one more query.
    ``apart``: read on a connection of their own after the caller's transaction is ended (it must have written
    nothing: ``models.sql.reading_apart``; on SQLite a replay of a year of a busy campaign held every other
    request for as long), the campaign's rows expired with it."""
    stmt = replay_query(campaign, rules, since, until)
    with reading_apart() if apart else nullcontext(db.session) as reader:
        rows = [row for row in (to_row(*r) for r in reader.execute(stmt)) if row.paid_fen > 0]
        if not lines or not rows:
            return rows
        ids = stmt.with_only_columns(Order.id).order_by(None).scalar_subquery()
        by_order: dict[int, list[Line]] = defaultdict(list)
        read = select(OrderLine.order_id, OrderLine.category, OrderLine.line_total_fen)
        for order_id, category, total in reader.execute(read.where(OrderLine.order_id.in_(ids)).order_by(OrderLine.id)):
            by_order[order_id].append(Line(category, total))
    return [row._replace(lines=tuple(by_order.get(row.order_id, ()))) for row in rows]


# --- projecting (pure) -----------------------------------------------------------------------------


def facts_of(row: ReplayRow, referral: timedelta | None) -> OrderFacts:
    since = row.invited_since
    has_inviter = since is not None and (referral is None or row.paid_at < since + referral)
    return OrderFacts(
        row.order_total_fen, row.paid_fen, row.paid_at, row.issuer_type in ISSUING, has_inviter, lines=row.lines
    )


def decide(rules: RuleSet, row: ReplayRow, referral: timedelta | None) -> list[Decision]:
    """Each role's decision on the order as it stands, as the engine leaves it: at payment within the cash room
    earlier campaigns left, then after a refund ``rebate.rules.entitlement_after_refund`` (the rules on the net
    amounts, never more than the payment awarded)."""
    facts = facts_of(row, referral)
    if row.total_at_payment_fen is None and row.cash_room_fen is None:
        return evaluate(rules, facts)
    paid_facts = replace(
        facts,
        order_total_fen=row.order_total_fen if row.total_at_payment_fen is None else row.total_at_payment_fen,
        paid_fen=row.paid_fen if row.paid_at_payment_fen is None else row.paid_at_payment_fen,
    )
    at_payment = evaluate(rules, paid_facts, cash_room_fen=row.cash_room_fen)
    if row.total_at_payment_fen is None:
        return at_payment
    return [
        paid if paid.amount_fen < net.amount_fen else net
        for net, paid in zip(evaluate(rules, facts), at_payment, strict=True)
    ]


def project(rows: Iterable[ReplayRow], rules: RuleSet, *, budget_limit_fen: int | None = None) -> dict:
    """Replay ``rules`` over ``rows`` (oldest first): rebates per role and form, cost, budget run-out day."""
    referral = timedelta(days=rules.referral_days) if rules.referral_days else None
    by_role: dict[str, int] = dict.fromkeys((r.role for r in rules.roles), 0)
    awarded: Counter[str] = Counter()
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    by_form: Counter[str] = Counter()
    orders = packet_value = held = cost = 0
    runs_out: ReplayRow | None = None
    for row in rows:
        orders += 1
        order_cost = row.packet_value_fen
        for d in decide(rules, row, referral):
            outcomes[d.role][d.reason_code] += 1
            if d.amount_fen:
                awarded[d.role] += 1
                by_role[d.role] += d.amount_fen
                merchant = d.role == "issuer" and row.issuer_type == "merchant"
                by_form[Form.MERCHANT_CREDIT if merchant else d.form] += d.amount_fen
                held += d.amount_fen if d.condition is not None else 0
                order_cost += d.amount_fen
        packet_value += row.packet_value_fen
        cost += order_cost
        if runs_out is None and budget_limit_fen is not None and cost > budget_limit_fen:
            runs_out = row
    rebates = sum(by_role.values())
    return {
        "orders": orders,
        "by_role": {
            role: {**_amount("amount", fen), "orders_awarded": awarded[role], "outcomes": dict(outcomes[role])}
            for role, fen in by_role.items()
        },
        "by_form": {form: _amount("amount", fen) for form, fen in sorted(by_form.items())},
        **_amount("rebates", rebates),
        **_amount("held", held),
        **_amount("packet_value", packet_value),
        **_amount("total_cost", cost),
        "budget": _budget(budget_limit_fen, cost, runs_out),
    }


def _budget(limit_fen: int | None, cost_fen: int, runs_out: ReplayRow | None) -> dict | None:
    if limit_fen is None:
        return None
    return {
        **_amount("limit", limit_fen),
        "runs_out": runs_out is not None,
        "runs_out_on": beijing(runs_out.paid_at).date().isoformat() if runs_out else None,
        "runs_out_at_order_id": runs_out.order_id if runs_out else None,
        **_amount("shortfall", max(0, cost_fen - limit_fen)),
    }


# --- comparing -------------------------------------------------------------------------------------


def percent_change(before: int, after: int) -> str | None:
    """``"+60.00"``: exact to the hundredth of a percent, truncated toward zero; None from nothing."""
    if before == 0:
        return None
    change = after - before
    hundredths = abs(change) * 10_000 // before
    sign = "-" if change < 0 else "+"
    return f"{sign}{hundredths // 100}.{hundredths % 100:02d}"


def _delta(current: int, draft: int) -> dict:
    return {
        **_amount("current", current),
        **_amount("draft", draft),
        **_amount("change", draft - current),
        "change_percent": percent_change(current, draft),
    }


def compare(current: dict, draft: dict) -> dict:
    roles = list(dict.fromkeys([*current["by_role"], *draft["by_role"]]))

    def role_fen(projection: dict, role: str) -> int:
        return projection["by_role"].get(role, {}).get("amount_fen", 0)

    return {
        "by_role": {role: _delta(role_fen(current, role), role_fen(draft, role)) for role in roles},
        "rebates": _delta(current["rebates_fen"], draft["rebates_fen"]),
        "total_cost": _delta(current["total_cost_fen"], draft["total_cost_fen"]),
    }


def simulate(
    campaign: Campaign,
    draft: RuleSet,
    *,
    days: int,
    now: datetime,
    budget_limit_fen: int | None,
    apart: bool = False,
) -> dict:
    """Replay the draft and the current rules over the same past ``days`` of orders. Reads only. ``apart``: the
    orders are read apart from the caller's transaction (``load_rows``)."""
    current = rules_of(campaign)
    since = now - timedelta(days=days)
    limit = budget_limit_fen if budget_limit_fen is not None else campaign.budget_limit_fen
    campaign_id, version = campaign.id, campaign.rules_version  # read before a read apart expires the row
    rows = load_rows(campaign, current, since, now, lines=current.by_category or draft.by_category, apart=apart)
    projected = project(rows, draft, budget_limit_fen=limit)
    baseline = project(rows, current, budget_limit_fen=limit)
    return {
        "campaign_id": campaign_id,
        "current_version": version,
        "applies_to": current.applies_to,
        "window": {"days": days, "from": since.isoformat(), "to": now.isoformat()},
        "draft": projected,
        "current": baseline,
        "change": compare(baseline, projected),
        "assumptions": list(ASSUMPTIONS),
    }
