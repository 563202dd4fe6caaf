"""JSON shapes shared by the user and admin APIs, and plain-words reasons for rebates."""

from __future__ import annotations

from sqlalchemy import select

from insights.trace import for_outsiders
from models import AdjustmentKind, Order, OrderPacket, PacketStatus, RedPacket, db, utcnow
from money import format_yuan
from rebate.rules import Form

# a rebate's form as a person reads it in an explanation ("Consumer rebate of 9.50 yuan as WeChat change")
FORM_WORDS = {
    Form.WECHAT_CHANGE: "WeChat change",
    Form.CASH_RED_PACKET: "a WeChat cash red packet",
    Form.WECHAT_COUPON: "a WeChat Pay coupon",
    Form.CARD_COUPON: "a WeChat card coupon",
    Form.BALANCE: "balance credit",
    Form.POINTS: "reward points",
    Form.MERCHANT_CREDIT: "merchant credit",
}

PLAIN_REASONS = {
    "awarded": "paid in full",
    "below_minimum": "the order was below the rule's minimum",
    "cap_reached": "reduced to the rule's cap",
    "budget_exhausted": "the campaign's budget ran out",
    "paid_cap": "cash rebates cannot exceed what was paid",
    "zero_amount": "the rebate rounded down to nothing",
    "no_beneficiary": "nobody to receive it",
    "campaign_not_running": "the campaign was paused or had ended",
    "outside_window": "outside the campaign's time window",
    "held": "held until its condition is met",
    "clawed_back": "taken back by a refund",
    "expired": "its condition was not met in time",
    "review": "under review",
    "risk_blocked": "not paid: the order did not pass our checks",
    "revoked": "revoked after a review",
    "not_eligible": "not eligible for this rebate",
    "beneficiary_banned": "not eligible: the account is restricted",
    "campaign_funded_from_sales": "the campaign is paid from the merchant's own sales, which this order was not",
}


def shown_status(p: RedPacket) -> str:
    """A packet's state as the person may act on it: one past its expiry is ``expired`` already, though the expiry
    job (every few minutes) has not reached it yet: an order refuses it (``packet_expired``) from that instant."""
    if p.status in (PacketStatus.ISSUED, PacketStatus.UNCLAIMED) and p.expires_at <= utcnow():
        return PacketStatus.EXPIRED
    return p.status


def packet_json(p: RedPacket) -> dict:
    return {
        "id": p.id,
        "campaign_id": p.campaign_id,
        "status": shown_status(p),
        "amount_fen": p.amount_fen,
        "min_spend_fen": p.min_spend_fen,
        "categories": p.categories,
        "merchant_id": p.merchant_id,
        "issuer_type": p.issuer_type,
        "valid_from": p.valid_from.isoformat(),
        "expires_at": p.expires_at.isoformat(),
    }


def order_json(o: Order) -> dict:
    return {
        "id": o.id,
        "out_trade_no": o.out_trade_no,
        "status": o.status,
        "merchant_id": o.merchant_id,
        "total_fen": o.total_fen,
        "discount_fen": o.discount_fen,
        "payable_fen": o.payable_fen,
        "wallet": wallet_json(o),
        "paid_fen": o.paid_fen,
        "refunded_fen": o.refunded_fen,
        "red_packet_id": o.packet_id,
        "time_expire": o.time_expire.isoformat(),
        "paid_at": o.paid_at.isoformat() if o.paid_at else None,
        "lines": [
            {
                "product_id": li.product_id,
                "quantity": li.quantity,
                "unit_price_fen": li.unit_price_fen,
                "line_total_fen": li.line_total_fen,
            }
            for li in o.lines
        ],
        "red_packets": [
            {"id": packet_id, "discount_fen": discount}
            for packet_id, discount in db.session.execute(
                select(OrderPacket.packet_id, OrderPacket.discount_fen)
                .where(OrderPacket.order_id == o.id)
                .order_by(OrderPacket.packet_id)
            )
        ],
    }


def wallet_json(o: Order) -> dict:
    """What the buyer's wallet paid for the order (rebate balance, points and their value at order time), and
    what refunds gave back of it."""
    return {
        "balance_fen": o.balance_used_fen,
        "points_count": o.points_used,
        "points_value_fen": o.points_value_fen,
        "returned_balance_fen": o.balance_returned_fen,
        "returned_points_count": o.points_returned,
    }


def explain(rebate, adjustments=()) -> str:
    """One sentence a customer-service agent can read out."""
    if rebate.status == "skipped":
        text = f"No {rebate.role} rebate: {PLAIN_REASONS.get(rebate.reason_code, rebate.reason_code)}."
    else:
        form = FORM_WORDS.get(rebate.form, rebate.form)
        text = f"{rebate.role.capitalize()} rebate of {format_yuan(rebate.original_fen)} yuan as {form}"
        if rebate.reason_code != "awarded":
            text += f" ({PLAIN_REASONS.get(rebate.reason_code, rebate.reason_code)})"
        if rebate.status in ("review", "revoked"):  # that it waits or was revoked, never the score or the rules
            text += f" ({PLAIN_REASONS[rebate.status]})"
        text += "."
    for adj in adjustments:
        done = "cancelled (held, never paid)" if adj.kind == AdjustmentKind.CANCELLED else "clawed back"
        text += f" {format_yuan(adj.amount_fen)} yuan {done}: {adj.reason}."
    return text


def rebate_json(r, order: Order | None = None, adjustments=(), viewer_id: int | None = None, *, person=True) -> dict:
    """A rebate as the person (``person``: without reviewers' notes) or as the platform's operators see it."""
    body = {
        "id": r.id,
        "order_id": r.order_id,
        "campaign_id": r.campaign_id,
        "role": r.role,
        "form": r.form,
        "status": r.status,
        "original_fen": r.original_fen,
        "amount_fen": r.amount_fen,
        "points": r.points,
        "reason_code": r.reason_code,
        "reasons": for_outsiders(r.reasons) if person else r.reasons,
        "explanation": explain(r, adjustments),
    }
    if order is not None:
        body["out_trade_no"] = order.out_trade_no
    if viewer_id is not None:
        body["mine"] = r.beneficiary_type == "user" and r.beneficiary_id == viewer_id
    return body
