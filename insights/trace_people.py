"""The trace of a person: their orders, packets, rebate decisions, what they owe back and refused claims.

Shares the formatting and rebate descriptions of ``insights.trace``; reads only.
"""

from __future__ import annotations

from sqlalchemy import exists, or_, select

from insights.trace import (
    MAX_ITEMS,
    Words,
    _iso,
    _on_order,
    _order_line,
    _packet_json,
    amount,
    describe_rebates,
    merchants_own,
    order_json,
    when,
    yuan,
)
from models import Campaign, ClaimRefusal, Order, OrderPacket, Rebate, Receivable, RedPacket, User, db


def trace_user(user: User, words: Words, *, limit: int = 20, merchant_id: int | None = None) -> dict:
    """A person's packets, orders and rebate decisions, newest first; ``merchant_id`` narrows to one shop (a
    merchant's staff: no reviewers' notes, risk verdicts or ban reasons)."""
    limit = max(1, min(limit, MAX_ITEMS))
    orders = list(
        db.session.execute(
            _at_merchant(select(Order).where(Order.user_id == user.id), merchant_id)
            .order_by(Order.id.desc())
            .limit(limit)
        ).scalars()
    )
    packets = list(db.session.execute(_user_packets(user.id, merchant_id).limit(limit)).scalars())
    rebates = list(db.session.execute(_user_rebates(user.id, merchant_id).limit(limit)).scalars())
    decisions = describe_rebates(rebates, words, risk_details=merchant_id is None)
    owed = db.session.execute(
        select(Receivable).where(
            Receivable.beneficiary_type == "user", Receivable.beneficiary_id == user.id, Receivable.outstanding_fen > 0
        )
    ).scalars()
    receivables = (
        [] if merchant_id is not None else [{"kind": r.kind, **amount("outstanding", r.outstanding_fen)} for r in owed]
    )
    lines = [_user_line(user, reason=merchant_id is None)]
    lines += [_order_line(o) for o in orders]
    lines += [f"Red packet #{p.id} of {yuan(p.amount_fen)} (campaign #{p.campaign_id}): {p.status}." for p in packets]
    lines += [_on_order(d) for d in decisions]
    lines += [f"Owes back {yuan(r['outstanding_fen'])} of {r['kind']} after refunds." for r in receivables]
    refusals = [
        (r, *_refusal_shown(r, staff=merchant_id is not None)) for r in _claim_refusals(user.id, merchant_id, limit)
    ]
    lines += [
        f"Claim from campaign #{r.campaign_id} refused {when(r.created_at)}: limit hit — {message}."
        for r, _, message in refusals
    ]
    return {
        "user": {
            "id": user.id,
            "status": user.status if merchant_id is None else ("active" if user.is_active else "restricted"),
            "banned_reason": user.banned_reason if merchant_id is None else None,
            # who invited whom is the platform's (its referral graph), not a shop's
            "inviter_id": user.inviter_id if merchant_id is None else None,
            "invited_at": _iso(user.invited_at) if merchant_id is None else None,
            "created_at": user.created_at.isoformat(),
        },
        "limit": limit,
        "orders": [order_json(o, merchant_id is None) for o in orders],
        "packets": [_packet_json(p) for p in packets],
        "rebates": decisions,
        "receivables": receivables,
        "claim_refusals": [
            {"campaign_id": r.campaign_id, "code": code, "message": message, "at": _iso(r.created_at)}
            for r, code, message in refusals
        ],
        "lines": lines,
    }


# a claim refused by a ban, as a merchant's staff read it: never that a ban exists, nor of what (README, "never why")
STAFF_REFUSALS = {"banned": ("not_eligible", "refused by the platform's checks")}


def _refusal_shown(refusal: ClaimRefusal, *, staff: bool) -> tuple[str, str]:
    if staff and refusal.code in STAFF_REFUSALS:
        return STAFF_REFUSALS[refusal.code]
    return refusal.code, refusal.message


def _claim_refusals(user_id: int, merchant_id: int | None, limit: int) -> list[ClaimRefusal]:
    stmt = select(ClaimRefusal).where(ClaimRefusal.user_id == user_id)
    if merchant_id is not None:
        stmt = stmt.join(Campaign, Campaign.id == ClaimRefusal.campaign_id).where(
            Campaign.funder_merchant_id == merchant_id
        )
    return list(db.session.execute(stmt.order_by(ClaimRefusal.id.desc()).limit(limit)).scalars())


def _user_line(user: User, reason: bool = True) -> str:
    status = user.status if reason else ("active" if user.is_active else "restricted")
    text = f"User #{user.id} ({status}), joined {when(user.created_at)}"
    if user.inviter_id is not None and reason:
        text += f", invited by user #{user.inviter_id} on {when(user.invited_at or user.created_at)}"
    if user.banned_reason and reason:
        text += f"; banned: {user.banned_reason}"
    return text + "."


def _at_merchant(stmt, merchant_id: int | None):
    return stmt if merchant_id is None else stmt.where(Order.merchant_id == merchant_id)


def _user_packets(user_id: int, merchant_id: int | None):
    stmt = select(RedPacket).where(RedPacket.owner_id == user_id).order_by(RedPacket.id.desc())
    if merchant_id is None:
        return stmt
    return stmt.join(Campaign, Campaign.id == RedPacket.campaign_id).where(_packet_of_merchant(merchant_id))


def _user_rebates(user_id: int, merchant_id: int | None):
    mine = (Rebate.beneficiary_type == "user") & (Rebate.beneficiary_id == user_id)
    stmt = select(Rebate).join(Order, Order.id == Rebate.order_id).where(or_(Order.user_id == user_id, mine))
    return _at_merchant(merchants_own(stmt, merchant_id), merchant_id).order_by(Rebate.id.desc())


# --- what merchant staff may see ------------------------------------------------------------------


def _packet_of_merchant(merchant_id: int):
    """Issued by, funded by or only usable at the merchant (the caller joins Campaign)."""
    return or_(
        RedPacket.issuer_merchant_id == merchant_id,
        RedPacket.merchant_id == merchant_id,
        Campaign.funder_merchant_id == merchant_id,
    )


def merchant_sees_packet(packet: RedPacket, merchant_id: int) -> bool:
    own = select(RedPacket.id).join(Campaign, Campaign.id == RedPacket.campaign_id)
    own = own.where(RedPacket.id == packet.id, _packet_of_merchant(merchant_id))
    spent_here = (  # any packet of a stack spent on one of the merchant's orders, not only the first
        select(OrderPacket.order_id)
        .join(Order, Order.id == OrderPacket.order_id)
        .where(OrderPacket.packet_id == packet.id, Order.merchant_id == merchant_id)
        .exists()
    )
    return db.session.execute(select(exists(own) | spent_here)).scalar_one()


def merchant_sees_user(user_id: int, merchant_id: int) -> bool:
    """Merchant staff see the people who ordered from them."""
    return db.session.execute(
        select(exists().where(Order.user_id == user_id, Order.merchant_id == merchant_id))
    ).scalar_one()
