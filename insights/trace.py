"""The customer-service trace: why a person, an order or a red packet got, or did not get, each rebate.

Reads only, and re-evaluates nothing: the trace tells what the engine decided
when the order was paid (every ``Rebate`` row, skipped ones included, with its
``reason_code`` and the engine's own reasons), what refunds took back
(``RebateAdjustment``), what still waits for a condition and where each payout
stands. Answers are plain dicts; ``lines`` are sentences an agent can read
out, every amount in yuan with the fen beside it. ``words`` maps reason codes
and rebate statuses to plain words (the shell passes its vocabulary; a code
without words is shown as itself). Lists are bounded and newest first.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import and_, or_, select

from insights.trace_challenges import challenge_of_packet
from models import (
    AdjustmentKind,
    Campaign,
    Order,
    OrderMilestone,
    OrderPacket,
    OrderStatus,
    PacketStatus,
    Payout,
    Rebate,
    RebateAdjustment,
    RebateStatus,
    RedPacket,
    Refund,
    User,
    db,
)
from models.base import beijing
from models.triggers import TriggerKind
from money import format_yuan
from rebate.campaigns import rules_of
from rebate.rules import Form

MAX_ITEMS = 100
# What the trace shows of a payout, as columns: the outbox row carries far more than an agent needs.
PAYOUT_COLUMNS = (
    *(Payout.id, Payout.rebate_id, Payout.rail, Payout.status, Payout.held, Payout.external_no),
    *(Payout.amount_fen, Payout.attempts, Payout.last_error, Payout.created_at, Payout.finished_at),
    Payout.returned_at,
)
Words = Mapping[str, str]


# --- formatting -----------------------------------------------------------------------------------


def amount(prefix: str, fen: int | None) -> dict:
    """``{"<prefix>_fen": 400, "<prefix>_yuan": "4.00"}``."""
    return {f"{prefix}_fen": fen, f"{prefix}_yuan": None if fen is None else format_yuan(fen)}


def yuan(fen: int) -> str:
    return f"{format_yuan(fen)} yuan ({fen} fen)"


def when(at: datetime | None) -> str:
    return f"{beijing(at):%Y-%m-%d %H:%M} Beijing time" if at else "an unknown time"


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def _say(words: Words, code: str) -> str:
    return words.get(code, code.replace("_", " "))


# --- rebate decisions -----------------------------------------------------------------------------


# A reviewer's outcome is written into a rebate's reasons as "review case N (outcome): the reviewer's note"
# (rebate/reviews.py): for operators of the platform only. People and merchant staff see the outcome in plain
# words (the rebate's status), never the note, the score, the features or the rules.
REVIEW_NOTE = "review case "


def for_outsiders(reasons) -> list[str]:
    """A rebate's reasons as the person or a merchant's staff may read them: without reviewers' notes."""
    return [line for line in reasons or [] if not line.startswith(REVIEW_NOTE)]


# What a merchant's staff read instead of a reason that would tell them someone is banned.
FOR_STAFF = {"beneficiary_banned": "not_eligible"}


def for_staff(reasons) -> list[str]:
    """A rebate's reasons as a merchant's staff may read them: nothing of reviews or of anyone's ban."""
    return [line for line in for_outsiders(reasons) if "banned" not in line and "under a ban" not in line]


def describe_rebates(rebates: list[Rebate], words: Words, *, risk_details: bool = True) -> list[dict]:
    """Each rebate decision with its campaign, condition, clawbacks and payouts (a few batch queries).

    ``risk_details`` False (merchant staff): no reviewer's notes and no risk verdicts."""
    if not rebates:
        return []
    ids = [r.id for r in rebates]
    campaigns = _by_id(Campaign, {r.campaign_id for r in rebates})
    orders = _by_id(Order, {r.order_id for r in rebates})
    clawbacks = defaultdict(list)
    for adj, refund in db.session.execute(
        select(RebateAdjustment, Refund)
        .outerjoin(Refund, Refund.id == RebateAdjustment.refund_id)
        .where(RebateAdjustment.rebate_id.in_(ids))
        .order_by(RebateAdjustment.id)
    ):
        clawbacks[adj.rebate_id].append((adj, refund))
    payouts = defaultdict(list)
    for payout in db.session.execute(select(*PAYOUT_COLUMNS).where(Payout.rebate_id.in_(ids)).order_by(Payout.id)):
        payouts[payout.rebate_id].append(payout)
    met = _milestones({r.order_id for r in rebates if r.condition_deadline is not None})
    spent = _spent_on(orders.values())
    return [
        _describe(
            r,
            campaigns[r.campaign_id],
            orders[r.order_id],
            clawbacks[r.id],
            payouts[r.id],
            met,
            words,
            risk_details,
            _evaluated_as(r, orders[r.order_id], spent),
        )
        for r in rebates
    ]


def _spent_on(orders) -> set[tuple[int, int]]:
    """(order id, packet id) of every packet spent on these orders: an order may stack several (``order_packets``),
    ``orders.packet_id`` names only the first."""
    ids = [o.id for o in orders]
    if not ids:
        return set()
    stmt = select(OrderPacket.order_id, OrderPacket.packet_id).where(OrderPacket.order_id.in_(ids))
    return {(order_id, packet_id) for order_id, packet_id in db.session.execute(stmt)}


def _by_id(model, ids: set[int]) -> dict:
    return {row.id: row for row in db.session.execute(select(model).where(model.id.in_(ids))).scalars()}


def _milestones(order_ids: set[int]) -> dict[int, list[OrderMilestone]]:
    met = defaultdict(list)
    if order_ids:
        stmt = select(OrderMilestone).where(OrderMilestone.order_id.in_(order_ids)).order_by(OrderMilestone.id)
        for milestone in db.session.execute(stmt).scalars():
            met[milestone.order_id].append(milestone)
    return met


def _beneficiary(r: Rebate) -> str:
    return f"{r.beneficiary_type} #{r.beneficiary_id}" if r.beneficiary_type else "nobody"


def _headline(r: Rebate, campaign: Campaign, words: Words, code: str | None = None) -> str:
    code = code or r.reason_code
    rule = f"{r.role.capitalize()} rule of campaign “{campaign.name}” (#{campaign.id}, rules v{r.rules_version})"
    if r.status == RebateStatus.SKIPPED:
        return f"{rule}: no rebate — {_say(words, code)}."
    text = f"{rule}: {yuan(r.original_fen)} as {r.form} to {_beneficiary(r)}"
    notes = [_say(words, code)] if code != "awarded" else []
    if r.status != RebateStatus.AWARDED:
        notes.append(_say(words, r.status))
    elif r.amount_fen != r.original_fen:
        notes.append(f"{yuan(r.amount_fen)} stands after refunds")
    return f"{text}{' — ' + '; '.join(notes) if notes else ''}."


def _condition_of(r: Rebate, campaign: Campaign):
    rule = rules_of(campaign, r.rules_version).role(r.role)
    return rule.condition if rule is not None else None


def _condition(r: Rebate, campaign: Campaign, met: list[OrderMilestone]) -> tuple[dict | None, list[str]]:
    if r.condition_deadline is None:
        return None, []
    condition = _condition_of(r, campaign)
    names = list(condition.milestones) if condition else []
    done = [m.name for m in met if m.name in names]
    missing = [n for n in names if n not in done]
    info = {
        "milestones": names,
        "met": [{"name": m.name, "quality": m.quality, "reported_at": m.reported_at.isoformat()} for m in met],
        "missing": missing,
        "release": condition.release if condition else None,
        "deadline": r.condition_deadline.isoformat(),
        **amount("held", r.held_fen),
    }
    if r.held_fen:
        line = (
            f"Held: {yuan(r.held_fen)} waits for {', '.join(missing) or 'release'} until {when(r.condition_deadline)}"
        )
        lines = [line + (f"; already met: {', '.join(done)}." if done else ".")]
    elif r.status == RebateStatus.EXPIRED:
        lines = [f"The condition ({', '.join(missing)}) was not met by {when(r.condition_deadline)}; it expired."]
    else:
        lines = [f"Condition: {', '.join(names)}; met: {', '.join(done) or 'none'}."]
    return info, lines


def _clawback(adj: RebateAdjustment, refund: Refund | None) -> tuple[dict, str]:
    info = {
        "kind": adj.kind,
        "refund": refund.out_refund_no if refund else None,
        "refund_status": refund.status if refund else None,
        **amount("refund_amount", refund.amount_fen if refund else None),
        **amount("amount", adj.amount_fen),
        **amount("recovered", adj.recovered_fen),
        **amount("receivable", adj.receivable_fen),
        "reason": adj.reason,
        "at": adj.created_at.isoformat(),
    }
    source = f"refund {refund.out_refund_no} of {yuan(refund.amount_fen)}" if refund else "an adjustment"
    done = "Cancelled (held, never paid)" if adj.kind == AdjustmentKind.CANCELLED else "Clawed back"
    line = f"{done} {yuan(adj.amount_fen)} by {source} on {when(adj.created_at)}: {adj.reason}"
    if adj.receivable_fen:
        line += f" ({yuan(adj.recovered_fen)} recovered, {yuan(adj.receivable_fen)} owed back)"
    return info, line + "."


def _payout(p) -> tuple[dict, str]:
    info = {
        "id": p.id,
        "rail": p.rail,
        "status": p.status,
        "held": p.held,
        "external_no": p.external_no,
        "attempts": p.attempts,
        "last_error": p.last_error,
        "created_at": p.created_at.isoformat(),
        "finished_at": _iso(p.finished_at),
        "returned_at": _iso(p.returned_at),
        **amount("amount", p.amount_fen),
    }
    line = f"Payout #{p.id} of {yuan(p.amount_fen)} by {p.rail} ({p.external_no}): {p.status}"
    if p.held:
        line += ", held while a refund of the order is pending"
    if p.last_error:
        line += f"; last error: {p.last_error}"
    return info, line + "."


def _describe(
    r: Rebate, campaign, order, clawbacks, payouts, met, words: Words, risk_details: bool, evaluated_as: str
) -> dict:
    code = r.reason_code if risk_details else FOR_STAFF.get(r.reason_code, r.reason_code)
    lines = [_headline(r, campaign, words, code)]
    reasons = list(r.reasons or []) if risk_details else for_staff(r.reasons)
    if reasons:
        lines.append("Decided: " + "; ".join(reasons) + ".")
    verdict = risk_verdict(order, r.campaign_id) if risk_details else None
    if r.status == RebateStatus.REVIEW:
        lines.append(f"Held for review: {yuan(r.held_fen)} waits for a reviewer; nothing paid or queued.")
    if verdict and (r.status == RebateStatus.REVIEW or r.reason_code == "risk_blocked"):
        lines.append(f"Risk: {verdict}.")
    condition, condition_lines = _condition(r, campaign, met[r.order_id])
    lines += condition_lines
    claws = [_clawback(adj, refund) for adj, refund in clawbacks]
    sent = [_payout(p) for p in payouts]
    lines += [line for _, line in claws] + [line for _, line in sent]
    if r.amount_fen and not payouts and r.form in (Form.BALANCE, Form.POINTS, Form.MERCHANT_CREDIT):
        lines.append(f"Credited to the {r.form} account at once" + (f" ({r.points} points)." if r.points else "."))
    return {
        "rebate_id": r.id,
        "order_id": r.order_id,
        "out_trade_no": order.out_trade_no,
        "campaign": {"id": campaign.id, "name": campaign.name, "status": campaign.status},
        "rules_version": r.rules_version,
        "packet_id": r.packet_id,
        "evaluated_as": evaluated_as,
        "role": r.role,
        "beneficiary": {"type": r.beneficiary_type, "id": r.beneficiary_id} if r.beneficiary_type else None,
        "form": r.form,
        "status": r.status,
        "reason_code": code,
        "why": _say(words, code if r.status == RebateStatus.SKIPPED else r.status),
        **amount("original", r.original_fen),
        **amount("amount", r.amount_fen),
        **amount("held", r.held_fen),
        "points": r.points,
        "engine_reasons": reasons,
        "condition": condition,
        "clawbacks": [info for info, _ in claws],
        "payouts": [info for info, _ in sent],
        "decided_at": r.created_at.isoformat(),
        "lines": lines,
    }


def risk_verdict(order: Order, campaign_id: int) -> str | None:
    """The campaign's risk verdict on the order in words (``blocked by rule …: score 93``), for operators only."""
    found = (order.risk or {}).get("campaigns", {}).get(str(campaign_id))
    return found.get("says") if found else None


def risk_json(order: Order) -> dict | None:
    """The order's score, every contribution and each campaign's verdict, as the payment stored them."""
    risk = order.risk
    if not risk:
        return None
    return {
        "score": order.risk_score,
        "decision": order.risk_decision,
        "contributions": risk.get("features", []),
        "values": risk.get("values", {}),
        "campaigns": risk.get("campaigns", {}),
        "platform": risk.get("rules"),
        "refused": risk.get("refused", []),
    }


def risk_lines(order: Order) -> list[str]:
    """The score and why, then each campaign's verdict and any beneficiary refused for a ban."""
    risk = order.risk
    if not risk:
        return []
    said = "; ".join(f"{c['words']} (+{c['points']})" for c in risk.get("features", [])) or "nothing of note"
    lines = [f"Risk score {order.risk_score}/100, {order.risk_decision}: {said}."]
    for campaign_id, verdict in sorted(risk.get("campaigns", {}).items(), key=lambda kv: int(kv[0])):
        lines.append(f"Risk verdict for campaign #{campaign_id}: {verdict.get('says')}.")
    lines += [f"Refused {r['beneficiary']}: {r['words']}." for r in risk.get("refused", [])]
    return lines


def outsider_risk_lines(order: Order) -> list[str]:
    """What a merchant's staff learn of the risk checks: that rebates wait for a review or were refused."""
    if order.risk_decision == "review":
        return ["Risk checks: rebates of this order wait for a review."]
    if order.risk_decision == "block":
        return ["Risk checks: rebates of this order were refused."]
    return []


def _on_order(decision: dict) -> str:
    return f"On order {decision['out_trade_no']}: {decision['lines'][0]}"


def _evaluated_as(r: Rebate, order: Order, spent: set[tuple[int, int]]) -> str:
    """A rebate of a packet spent on this order (any of a stack) is the packet's; of a packet spent on an earlier
    order, an attribution; of none, a referral."""
    if r.packet_id is None:
        return "referral"
    on_this_order = r.packet_id == order.packet_id or (order.id, r.packet_id) in spent
    return "packet" if on_this_order else "attribution"


# --- orders ---------------------------------------------------------------------------------------


def order_json(o: Order, risk_details: bool = True) -> dict:
    return {
        "id": o.id,
        "out_trade_no": o.out_trade_no,
        "status": o.status,
        "user_id": o.user_id,
        "merchant_id": o.merchant_id,
        "channel": o.channel,
        "red_packet_id": o.packet_id,
        **amount("total", o.total_fen),
        **amount("discount", o.discount_fen),
        **amount("balance_used", o.balance_used_fen),
        "points_used": o.points_used,
        **amount("points_value", o.points_value_fen),
        **amount("balance_returned", o.balance_returned_fen),
        "points_returned": o.points_returned,
        **amount("payable", o.payable_fen),
        **amount("paid", o.paid_fen),
        **amount("refunded", o.refunded_fen),
        "created_at": o.created_at.isoformat(),
        "paid_at": _iso(o.paid_at),
        "review_reason": o.review_reason,
        "risk_score": o.risk_score if risk_details else None,
        "risk_decision": o.risk_decision,
        "sub_mchid": o.sub_mchid,  # service-provider mode: the sub-merchant it is paid to
        "settle_profit_sharing": o.profit_sharing,  # opened with settle_info.profit_sharing (frozen for sharing)
    }


def _order_line(o: Order) -> str:
    text = f"Order {o.out_trade_no} (#{o.id}) at merchant #{o.merchant_id} by user #{o.user_id}: {yuan(o.total_fen)}"
    if o.discount_fen:
        text += f", red packet #{o.packet_id} took {yuan(o.discount_fen)} off"
    if o.balance_used_fen:
        text += f", {yuan(o.balance_used_fen)} from the rebate balance"
    if o.points_used:
        text += f", {o.points_used} points worth {yuan(o.points_value_fen)}"
    if o.paid_at is not None:
        text += f", paid {yuan(o.paid_fen or 0)} on {when(o.paid_at)}"
        coupons = o.payable_fen - (o.paid_fen or 0)
        if coupons > 0:
            text += f" (WeChat Pay coupons paid {yuan(coupons)}"
            if o.unsettled_coupon_fen:
                unsettled = yuan(o.unsettled_coupon_fen)
                text += f", {unsettled} of it 免充值: never settled by WeChat, funded by the merchant of record"
            text += ")"
    elif o.paid_after_close:
        text += f", paid {yuan(o.paid_fen or 0)} at WeChat after it was closed (no sale: owed back to the payer)"
    if o.refunded_fen:
        text += f", {yuan(o.refunded_fen)} refunded"
    if o.balance_returned_fen or o.points_returned:
        text += f" ({yuan(o.balance_returned_fen)} and {o.points_returned} points given back to the wallet)"
    return f"{text}; now {o.status}."


def _refund_line(r: Refund) -> str:
    text = f"Refund {r.out_refund_no} of {yuan(r.amount_fen)} asked on {when(r.created_at)}: {r.status}"
    if r.status == "pending":
        text += "; the order's payouts that have not left are held until it finishes"
    return text + "."


def _no_campaign_lines(order: Order, *, platform: bool = True) -> list[str]:
    if order.paid_after_close:
        return ["This order was paid only after it was closed: no sale, so no rebate; the payment is refunded whole."]
    if order.status in (OrderStatus.CREATED, OrderStatus.CLOSED):
        return [f"This order is {order.status}, not paid: rebates are decided only when an order is paid."]
    missing = []
    if order.packet_id is None:
        missing.append("no red packet was used")
    buyer = db.session.get(User, order.user_id)
    if platform and buyer is not None and buyer.inviter_id is None:  # (whether one has: the platform's to know)
        missing.append("the buyer has no inviter, so no referral campaign applies")
    detail = f" ({'; '.join(missing)})" if missing else ""
    return [f"No campaign evaluated this order{detail}, so it earned no rebate."]


def _own_campaign(merchant_id: int):
    """A campaign the merchant funds or issues (joined as ``Campaign``)."""
    return or_(Campaign.funder_merchant_id == merchant_id, Campaign.issuer_merchant_id == merchant_id)


def merchants_own(stmt, merchant_id: int | None):
    """``stmt`` (rebates of orders at ``merchant_id``) narrowed to what its staff may see: their own campaigns'
    rebates, and those of the packets spent on the order (masked by the caller), but never who invited whom (a
    referral reward, or an inviter's share of a packet's rebate, is the platform's referral graph)."""
    if merchant_id is None:
        return stmt
    own = _own_campaign(merchant_id)
    spent = and_(Rebate.packet_id.is_not(None), Rebate.role != "inviter")
    return stmt.join(Campaign, Campaign.id == Rebate.campaign_id).where(or_(own, spent))


def trace_order(order: Order, words: Words, *, risk_details: bool = True, merchant_id: int | None = None) -> dict:
    """``risk_details`` False (merchant staff): whether the risk checks held or refused the order, never why;
    ``merchant_id`` (theirs): only their own campaigns' rebates."""
    stmt = merchants_own(select(Rebate).where(Rebate.order_id == order.id), merchant_id)
    rebates = list(db.session.execute(stmt.order_by(Rebate.id)).scalars())
    decisions = describe_rebates(rebates, words, risk_details=risk_details)
    refunds = list(db.session.execute(select(Refund).where(Refund.order_id == order.id).order_by(Refund.id)).scalars())
    issued = list(
        db.session.execute(
            select(RedPacket)
            .where(RedPacket.source == TriggerKind.ORDER_PAID, RedPacket.source_ref == order.out_trade_no)
            .order_by(RedPacket.id)
        ).scalars()
    )
    campaigns = _group_by_campaign(decisions)
    lines = [_order_line(order)]
    if order.review_reason:
        lines.append(f"Flagged for review: {order.review_reason}.")
    lines += risk_lines(order) if risk_details else outsider_risk_lines(order)
    lines += [_refund_line(r) for r in refunds]
    for campaign in campaigns:
        lines.append(
            f"Campaign “{campaign['name']}” (#{campaign['id']}, now {campaign['status']}) evaluated this order as a "
            f"{campaign['evaluated_as']} campaign: {len(campaign['decisions'])} rule(s)."
        )
        for decision in campaign["decisions"]:
            lines += decision["lines"]
    if not campaigns:
        lines += _no_campaign_lines(order, platform=merchant_id is None)
    lines += [f"This order earned red packet #{p.id} of {yuan(p.amount_fen)}, now {p.status}." for p in issued]
    return {
        "order": order_json(order, risk_details),
        "risk": risk_json(order) if risk_details else None,
        "refunds": [_refund_json(r) for r in refunds],
        "campaigns": campaigns,
        "packets_issued": [_packet_brief(p) for p in issued],
        "lines": lines,
    }


def _refund_json(r: Refund) -> dict:
    return {
        "out_refund_no": r.out_refund_no,
        "status": r.status,
        **amount("amount", r.amount_fen),
        "created_at": r.created_at.isoformat(),
        "finished_at": _iso(r.finished_at),
    }


def _group_by_campaign(decisions: list[dict]) -> list[dict]:
    grouped: dict[tuple[int, str], dict] = {}
    for d in decisions:
        key = (d["campaign"]["id"], d["evaluated_as"])
        entry = grouped.setdefault(
            key, {**d["campaign"], "rules_version": d["rules_version"], "evaluated_as": key[1], "decisions": []}
        )
        entry["decisions"].append(d)
    return list(grouped.values())


# --- packets --------------------------------------------------------------------------------------


def _packet_brief(p: RedPacket) -> dict:
    return {"id": p.id, "campaign_id": p.campaign_id, "status": p.status, **amount("amount", p.amount_fen)}


def packet_history(p: RedPacket, order: Order | None, now: datetime, merchant_id: int | None = None) -> list[dict]:
    """issued / claimed / locked / used / expired / revoked, from the packet's fields and the orders that spent it.
    ``merchant_id``: merchant staff's, who see their own merchant's orders only (``order``: None when it is
    another's; a platform packet may have been spent at another shop)."""
    events = []

    def add(event: str, at: datetime | None, line: str) -> None:
        events.append({"event": event, "at": _iso(at), "line": f"{when(at) if at else 'Now'}: {line}"})

    if p.source == "batch":
        add("generated", p.created_at, "generated in a batch, waiting for someone to claim its code.")
        if p.claimed_at is not None:
            add("claimed", p.claimed_at, f"claimed by user #{p.owner_id}.")
    else:
        source = f"{p.source}: {ref}" if (ref := shown_source_ref(p, merchant_id)) is not None else p.source
        add("issued", p.created_at, f"issued to user #{p.owner_id} (source {source}).")
    for earlier, discount in _given_back_uses(p, merchant_id):  # spent on an order a refund gave the packet back from
        add(
            "used",
            earlier.paid_at,
            f"used on order {earlier.out_trade_no} (#{earlier.id}), {yuan(discount)} off; that order was refunded "
            f"({yuan(earlier.refunded_fen)}, now {earlier.status}) and the packet given back.",
        )
    if p.status == PacketStatus.LOCKED and order is not None:
        add("locked", order.created_at, f"locked in unpaid order {order.out_trade_no} (#{order.id}).")
    if p.used_at is not None:
        where = f"order {order.out_trade_no} (#{order.id})" if order is not None else "an order"
        if order is None and merchant_id is None:
            where = f"order #{p.order_id}"
        add("used", p.used_at, f"used on {where}.")
    if p.status == PacketStatus.EXPIRED:
        add("expired", p.expires_at, "expired unused; its budget reservation was released.")
    elif p.status == PacketStatus.REVOKED:  # (revoked before migration 0010: when is not known)
        add("revoked", p.revoked_at, "revoked; its budget reservation was released.")
    elif p.status in (PacketStatus.ISSUED, PacketStatus.UNCLAIMED) and now >= p.expires_at:
        add("past_validity", p.expires_at, "past its validity; the expiry job will release it.")
    return events


def shown_source_ref(p: RedPacket, merchant_id: int | None) -> str | None:
    """The packet's ``source_ref`` as ``merchant_id``'s staff may read it (None when not): of a packet a paid order
    earned, that order's number when it was sold at their shop; of any other, its source_ref only when the packet is
    their merchant's own (a platform packet spent at their shop names others' business: a friends' challenge and its
    two people, another person's share link)."""
    if merchant_id is None:
        return p.source_ref
    if p.source == TriggerKind.ORDER_PAID:
        sold_at = db.session.execute(select(Order.merchant_id).where(Order.out_trade_no == p.source_ref)).scalar()
        return p.source_ref if sold_at == merchant_id else None
    funder = db.session.execute(select(Campaign.funder_merchant_id).where(Campaign.id == p.campaign_id)).scalar()
    return p.source_ref if merchant_id in (p.issuer_merchant_id, p.merchant_id, funder) else None


def _given_back_uses(p: RedPacket, merchant_id: int | None = None) -> list[tuple[Order, int]]:
    """The paid orders that spent ``p`` other than the one it is on now (``order_packets`` keeps a use when a refund
    gives the packet back), oldest first, with the discount each took; ``merchant_id``'s own only, when given."""
    stmt = (
        select(Order, OrderPacket.discount_fen)
        .join(OrderPacket, OrderPacket.order_id == Order.id)
        .where(OrderPacket.packet_id == p.id, Order.paid_at.is_not(None))
        .order_by(Order.paid_at, Order.id)
        .limit(MAX_ITEMS)
    )
    if p.order_id is not None:
        stmt = stmt.where(Order.id != p.order_id)
    if merchant_id is not None:
        stmt = stmt.where(Order.merchant_id == merchant_id)
    return [(o, int(discount)) for o, discount in db.session.execute(stmt)]


def trace_packet(
    packet: RedPacket, words: Words, now: datetime, *, risk_details: bool = True, merchant_id: int | None = None
) -> dict:
    campaign = db.session.get(Campaign, packet.campaign_id)
    order = db.session.get(Order, packet.order_id) if packet.order_id else None
    if order is not None and merchant_id is not None and order.merchant_id != merchant_id:
        order = None  # a platform packet spent at another shop: merchant staff see that it was used, not where
    stmt = merchants_own(select(Rebate).where(Rebate.packet_id == packet.id), merchant_id)
    if merchant_id is not None:  # rebates of orders at their shop (or of their own campaigns), not another shop's
        at_theirs = Rebate.order_id.in_(select(Order.id).where(Order.merchant_id == merchant_id))
        stmt = stmt.where(or_(at_theirs, _own_campaign(merchant_id)))
    rebates = list(db.session.execute(stmt.order_by(Rebate.id.desc()).limit(MAX_ITEMS)).scalars())
    decisions = describe_rebates(rebates, words, risk_details=risk_details)
    history = packet_history(packet, order, now, merchant_id)
    lines = [
        f"Red packet #{packet.id} of {yuan(packet.amount_fen)} from campaign “{campaign.name}” (#{campaign.id}, "
        f"now {campaign.status}), issued by {packet.issuer_type}, valid {when(packet.valid_from)} to "
        f"{when(packet.expires_at)}; now {packet.status}."
    ]
    if packet.min_spend_fen:
        lines.append(f"Usable on eligible goods of at least {yuan(packet.min_spend_fen)}.")
    if packet.reserved_fen:
        lines.append(f"It holds {yuan(packet.reserved_fen)} of the campaign budget until it is used or released.")
    challenge, challenge_lines = challenge_of_packet(packet, merchant_id)
    lines += challenge_lines
    lines += [e["line"] for e in history]
    if not decisions and packet.status == PacketStatus.USED:
        lines.append("Spending it triggered no rebate decision.")
    for d in reversed(decisions):
        lines += [_on_order(d), *d["lines"][1:]]
    shown = _packet_json(packet)
    if merchant_id is not None:  # staff: neither the order it is on nor the one that earned it, when another shop's
        shown.update(order_id=order.id if order is not None else None, source_ref=shown_source_ref(packet, merchant_id))
    return {
        "packet": shown,
        "campaign": {"id": campaign.id, "name": campaign.name, "status": campaign.status},
        "history": history,
        "challenge": challenge,
        "order": order_json(order, risk_details) if order is not None else None,
        "rebates": decisions,
        "lines": lines,
    }


def _packet_json(p: RedPacket) -> dict:
    return {
        **_packet_brief(p),
        "rules_version": p.rules_version,
        "issuer_type": p.issuer_type,
        "issuer_merchant_id": p.issuer_merchant_id,
        "issuer_user_id": p.issuer_user_id,
        "owner_id": p.owner_id,
        "merchant_id": p.merchant_id,
        "categories": p.categories,
        **amount("min_spend", p.min_spend_fen),
        **amount("reserved", p.reserved_fen),
        "source": p.source,
        "source_ref": p.source_ref,
        "order_id": p.order_id,
        "created_at": p.created_at.isoformat(),
        "claimed_at": _iso(p.claimed_at),
        "valid_from": p.valid_from.isoformat(),
        "expires_at": p.expires_at.isoformat(),
        "used_at": _iso(p.used_at),
    }
