"""What the engine tells a person, as notice drafts (``notices.Draft``) written in the event's own transaction.

The engine's events each name their notice by a key built from the row and the step, so a retried
operation or a second node writes nothing more (``notices.enqueue_many``: ``INSERT … ON CONFLICT DO
NOTHING``): ``packet:<id>:received``, ``<ledger key>:landed`` (``rebate:<id>:landed`` for a payment's
balance or points credit, ``rebate:<id>:review_release:landed`` …), ``rebate:<id>:held``,
``<clawback ledger key>:told``. Only people are told (a merchant's credit is not a notice). Facts carry
amounts in fen and times in ISO-8601 UTC, never a score, a rule or why a review holds something
(docs/architecture.md §14). The payouts' own events (landed on WeChat, a transfer to confirm, a failed
payout back in the balance) are written by the watcher in ``notices/watch.py``.
"""

from __future__ import annotations

from collections.abc import Iterable

from models import IssuerType, Merchant, Order, Rebate, RedPacket, User, db
from notices import Draft, NoticeEvent, enqueue_many
from rebate.rules import Form

PLATFORM = "平台"  # the issuer a person reads for the platform's own packets
FRIEND = "好友"  # an issuing person with no nickname
# Plain words for why money was taken back (``reason``): never a fraud detail, a score or a rule.
REASONS = {
    "order_refunded": "订单退款",
    "review_declined": "订单审核未通过",
    "share_returned": "微信未能分账到账",
}
# Where a packet comes from when its owner did not take it themselves: told when it is issued. A packet the
# person claimed in the mini-program (self-serve ``claim``, a claim code, a friend's ``share`` link, the daily
# sign-in) is shown in the answer to their own request, and telling them again would be spam.
TOLD_SOURCES = frozenset({"order_paid", "registration", "referral_bind", "share_reward"})


def issuer_name(packet: RedPacket) -> str:
    """Who gave the packet, as the person reads it: the issuing person's nickname, the merchant's name, or 平台.
    By primary key (the session's identity map first): a payment's merchant and buyer are loaded already."""
    if packet.issuer_user_id is not None:
        person = db.session.get(User, packet.issuer_user_id)
        return (person.nickname if person is not None else None) or FRIEND
    if packet.issuer_type == IssuerType.MERCHANT and packet.issuer_merchant_id is not None:
        merchant = db.session.get(Merchant, packet.issuer_merchant_id)
        return merchant.name if merchant is not None else PLATFORM
    return PLATFORM


def packet_received(packet: RedPacket) -> Draft:
    """``packet:<id>:received``: someone else issued the person this packet."""
    return Draft(
        user_id=packet.owner_id,
        event=NoticeEvent.PACKET_RECEIVED,
        key=f"packet:{packet.id}:received",
        facts={
            "packet_id": packet.id,
            "amount_fen": packet.amount_fen,
            "issuer": issuer_name(packet),
            "expires_at": packet.expires_at.isoformat(),
        },
    )


def packets_received(packets: Iterable[RedPacket | None]) -> int:
    """Tell each owner of ``packets`` (None: nothing issued) in one statement; how many notices were new.

    For every path that issues a packet to a person who did not ask for it (triggers, an operator's or an
    audience's batch): call it in the same transaction, after the packets are flushed."""
    return enqueue_many([packet_received(p) for p in packets if p is not None and p.owner_id is not None])


def packet_expiring(packet_id: int, owner_id: int, amount_fen: int, expires_at) -> Draft:
    """``packet:<id>:expiring``: an unused packet expires within a day (``jobs/packet_notices.py``)."""
    return Draft(
        user_id=owner_id,
        event=NoticeEvent.PACKET_EXPIRING,
        key=f"packet:{packet_id}:expiring",
        facts={"packet_id": packet_id, "amount_fen": amount_fen, "expires_at": expires_at.isoformat()},
    )


def landed_in_app(rebate: Rebate, amount_fen: int, key: str, form: str, points: int = 0) -> Draft | None:
    """Money credited in the app (``form`` balance or points) under ledger key ``key``; None for a merchant."""
    if rebate.beneficiary_type != "user" or amount_fen <= 0:
        return None
    facts = {"rebate_id": rebate.id, "amount_fen": amount_fen, "form": str(form)}
    if form == Form.POINTS:
        if points <= 0:
            return None
        facts["points"] = points
    return Draft(rebate.beneficiary_id, NoticeEvent.REBATE_LANDED, f"{key}:landed", facts)


def held(rebate: Rebate) -> Draft | None:
    """``rebate:<id>:held``: held for review. The id and the amount only: never why, a score or a rule."""
    if rebate.beneficiary_type != "user" or rebate.held_fen <= 0:
        return None
    facts = {"rebate_id": rebate.id, "amount_fen": rebate.held_fen}
    return Draft(rebate.beneficiary_id, NoticeEvent.REBATE_HELD, f"rebate:{rebate.id}:held", facts)


def clawed_back(rebate: Rebate, amount_fen: int, key: str, reason_code: str, points: int = 0) -> Draft | None:
    """Money taken back from a person under ledger key ``key`` (or a held rebate revoked), with plain words."""
    if rebate.beneficiary_type != "user" or amount_fen <= 0:
        return None
    facts = {
        "rebate_id": rebate.id,
        "amount_fen": amount_fen,
        "form": rebate.form,
        "reason": REASONS[reason_code],
        "reason_code": reason_code,
    }
    if points:
        facts["points"] = points
    return Draft(rebate.beneficiary_id, NoticeEvent.REBATE_CLAWED_BACK, f"{key}:told", facts)


# Why an order's balance and points came back, in plain words.
RETURNED = {"closed_unpaid": "未支付已关闭", "refunded": "已退款"}


def wallet_returned(order: Order, cash_fen: int, points: int, key: str, why: str) -> Draft | None:
    """``<ledger key>:told``: the balance and points an order used came back to the person (None: nothing did).
    ``points_value_fen``: what the points are worth (at the order's point value), told with the balance as the
    subscribe message's amount (a points-only return is not "¥0.00")."""
    if cash_fen <= 0 and points <= 0:
        return None
    worth = points * (order.points_value_fen // order.points_used) if points and order.points_used else 0
    facts = {
        "order_id": order.id,
        "out_trade_no": order.out_trade_no,
        "amount_fen": cash_fen,
        "points": points,
        "points_value_fen": worth,
        "reason": RETURNED[why],
        "reason_code": why,
    }
    return Draft(order.user_id, NoticeEvent.WALLET_RETURNED, f"{key}:told", facts)


def tell(drafts: Iterable[Draft | None]) -> int:
    """Write the drafts that are notices (None: nothing to tell) in one statement; none: no statement."""
    return enqueue_many([d for d in drafts if d is not None])
