"""Refunds: hold while pending, claw back at ``REFUND.SUCCESS``, release on failure.

``apply_refund_notice`` is the one intake of what WeChat says of a refund
(callback, refund job, refund API): it checks once whether the notification was
seen and compares mchid / order / amount once (the latter two in ``apply_refund``).

Clawback is cumulative: each rebate's entitlement is recomputed on the
order's new net amounts (rounded down, never above what was awarded) and only
the difference is taken. Money that has not left is taken back from the
payout; money that has left is recovered from the beneficiary's balance as
far as it goes, and the rest becomes a receivable netted against their next
rebate of the same kind. Budgets get back only what was recovered. Points
are valued with the ``MoneySettings`` the shell passes in. The balance and
points the buyer's wallet paid come back in proportion (``rebate.wallet``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, or_, select, union

from ledger import AccountRef, Leg, account, account_id, post, post_entry, ref
from models import (
    AccountKind,
    Campaign,
    LedgerEntry,
    LedgerPosting,
    Order,
    OrderPacket,
    OrderStatus,
    PacketStatus,
    Payout,
    PayoutStatus,
    ProfitShare,
    Rebate,
    RebateStatus,
    RedPacket,
    Refund,
    RefundStatus,
    ShareKind,
    ShareStatus,
    alert_once,
    db,
    raise_alert,
)
from models.orders import OPEN_REFUNDS, NotificationKind, note_notification, notification_seen
from models.payouts import Rail
from money import unsettled_share
from payouts import (
    MoneySettings,
    hold_order_payouts,
    release_order_payouts,
)
from payouts.profit_share import frozen_ref, own_sales_ref
from payouts.reconcile import reconciled_long_ago
from rebate import budgets
from rebate.awards import cancel_held, with_lines
from rebate.campaigns import face_funder_ref, own_price, rules_of
from rebate.clawbacks import take_back
from rebate.covered_debts import settle_covered
from rebate.deposits import cover_reservation, lock_deposits
from rebate.errors import DepositExhausted, Invalid, NotFound, RebateError, StateConflict
from rebate.fees import reduce_fee
from rebate.intake import PayAccount, RefundOutcome, RefundState, flag_order
from rebate.orders import earned_by, lock_order, order_packets, still_earned
from rebate.packets import release_packet, reservation_for
from rebate.rules import OrderFacts, entitlement_after_refund
from rebate.wallet import give_back
from risk.profiles import note_refunded_after_rebate

log = logging.getLogger(__name__)
# WeChat's clock and ours: a success_time later than our now by more than this is not believed (our clock is kept)
CLOCKS_APART = timedelta(minutes=5)


def _pending_total(order_id: int, exclude: int | None = None) -> int:
    """What the order's open refunds (``OPEN_REFUNDS``) may still take: not refundable again meanwhile."""
    stmt = select(func.coalesce(func.sum(Refund.amount_fen), 0)).where(
        Refund.order_id == order_id, Refund.status.in_(OPEN_REFUNDS)
    )
    if exclude is not None:
        stmt = stmt.where(Refund.id != exclude)
    return int(db.session.execute(stmt).scalar_one())


def begin_refund(order: Order, out_refund_no: str, amount_fen: int, reason: str | None = None) -> Refund:
    """Record a refund we are about to ask WeChat for, and hold the order's unsent payouts."""
    order = lock_order(order.out_trade_no)
    existing = db.session.execute(select(Refund).where(Refund.out_refund_no == out_refund_no)).scalar_one_or_none()
    if existing is not None:
        if existing.order_id != order.id or existing.amount_fen != amount_fen:
            raise StateConflict("this refund number was used for another refund", code="refund_no_reused")
        return existing
    if order.status != OrderStatus.PAID and not order.paid_after_close:
        raise StateConflict(f"a {order.status} order cannot be refunded", code="order_not_refundable")
    # up to what WeChat charged (``payable_fen``): a WeChat Pay coupon's part is refunded too (to the coupon)
    left = order.payable_fen - order.refunded_fen
    if not 0 < amount_fen <= left:
        raise Invalid(f"refund must be 1 to {left} fen", code="refund_amount")
    pending = _pending_total(order.id)
    if amount_fen > left - pending:  # the rest is taken by refunds still under way: a state, not a bad amount
        raise StateConflict(
            f"refunds of {pending} fen of this order are under way: {left - pending} fen can be refunded now",
            code="refund_in_progress",
        )
    refund = Refund(order_id=order.id, out_refund_no=out_refund_no, amount_fen=amount_fen, reason=reason)
    db.session.add(refund)
    hold_order_payouts(order.id)
    db.session.flush()
    return refund


def fail_refund(out_refund_no: str, status: RefundStatus, now: datetime, why: str | None = None) -> Refund:
    """WeChat closed the refund, it went abnormal, or WeChat refused it (``why``): nothing moves and an operator is
    told once. Closed or refused is final: the hold is released and the amount may be refunded again (a payment
    after close is still owed back: they refund it again). Abnormal is not: WeChat may still finish it (after the
    merchant resolves it at WeChat), so its amount stays reserved and the order's payouts held."""
    refund = db.session.execute(select(Refund).where(Refund.out_refund_no == out_refund_no)).scalar_one_or_none()
    if refund is None:
        raise NotFound(f"no refund {out_refund_no}", code="unknown_refund")
    order = db.session.get(Order, refund.order_id)
    lock_order(order.out_trade_no)
    if refund.status not in OPEN_REFUNDS or refund.status == status:
        return refund
    refund.status, refund.finished_at, refund.applied_at = status, now, now  # WeChat gives no time for these
    text = f"refund {out_refund_no} of order {order.out_trade_no} is {status}" + (f": {why}" if why else "")
    raise_alert(f"refund_{status}", out_refund_no, text[:2000])
    if _pending_total(order.id) == 0:
        release_order_payouts(order.id)
    db.session.flush()
    return refund


def apply_refund(
    out_trade_no: str,
    out_refund_no: str,
    amount_fen: int,
    now: datetime,
    refund_id: str | None = None,
    *,
    money: MoneySettings,
    succeeded_at: datetime | None = None,
) -> Refund:
    """Apply a successful refund once per ``out_refund_no``. A refund of another order, or of another amount
    than we asked, raises :class:`StateConflict` (``apply_refund_notice`` flags it); nothing is applied.

    ``succeeded_at``: WeChat's success_time, the refund's ``finished_at`` (the day the reports count it on);
    ``now`` (our clock, ``applied_at``) when not given."""
    order = lock_order(out_trade_no)
    if order is None:
        raise NotFound(f"no order {out_trade_no}", code="unknown_order")
    refund = _refund_of(order, out_refund_no)
    if refund is None:  # started outside this app (the merchant platform, say)
        refund = begin_refund(order, out_refund_no, amount_fen)
    if refund.status == RefundStatus.SUCCEEDED and refund.amount_fen == amount_fen:
        return refund  # told again
    if refund.status in (RefundStatus.CLOSED, RefundStatus.FAILED):  # ended: its amount may have been refunded anew
        raise StateConflict(
            f"WeChat says refund {out_refund_no} succeeded; it was {refund.status} before", code="refund_state_mismatch"
        )
    if refund.amount_fen != amount_fen:
        raise StateConflict(
            f"WeChat refunded {amount_fen} fen on {out_refund_no}; we asked {refund.amount_fen}",
            code="refund_amount_mismatch",
        )
    if order.refunded_fen + amount_fen > order.payable_fen:  # (a refund begun elsewhere is checked when begun)
        raise Invalid(
            f"refund {out_refund_no} of {amount_fen} fen would refund more than the {order.payable_fen} fen paid",
            code="refund_amount",
        )
    refund.status, refund.refund_id = RefundStatus.SUCCEEDED, refund_id
    refund.finished_at, refund.applied_at = succeeded_at or now, now
    if order.paid_after_close:  # a payment given back: no sale, rebate, fee or packet to undo
        order.refunded_fen += amount_fen
        _post_late_refund(order, refund)
        db.session.flush()
        return refund
    first_refund = order.refunded_fen == 0
    order.refunded_fen += amount_fen
    _lock_funding(order)
    _post_refund(order, refund)
    given = give_back(order, refund)  # first: a clawback below then finds the balance given back to recover from
    reduce_fee(order, refund)  # the service fee on what is left of the order
    earned = _claw_back(order, refund, money)
    if (
        first_refund and earned and order.risk is not None
    ):  # once per order; after the campaign rows (the payment's order)
        note_refunded_after_rebate(order.user_id)
    if order.refunded_fen == order.payable_fen:
        order.status = OrderStatus.REFUNDED
        _void_discount(order, refund)
    _revoke_unearned_packets(order)
    if given.fen:  # the buyer's balance came back up: what it covers of what they owed is settled
        settle_covered(order.user_id, money.point_value_fen)
    if _pending_total(order.id) == 0:
        release_order_payouts(order.id)
    db.session.flush()
    return refund


LATE_REFUND_REASON = "paid after the order was closed"


def late_refund_no(order: Order, prefix: str) -> str:
    """The one refund that gives a late payment back: one number per order, so a repeat finds it, after the
    environment's prefix (``WECHAT_NUMBER_PREFIX``: staging and production often share a merchant id)."""
    return f"{prefix}L{order.id}"


def take_late_payment(
    order: Order, transaction_id: str, amount_fen: int, paid_fen: int, prefix: str, unsettled_fen: int = 0
) -> Refund:
    """WeChat took ``amount_fen`` for ``order`` after it was closed here (the buyer paid while the close went out):
    no sale. The money is booked as owed back to the payer and a refund of all of it begun, which the refund job
    sends (``jobs.orders.query_stuck_refunds``: a refund WeChat has never heard of is sent under its number);
    the order stays closed, its packets and balance as the close left them. Flushes only; the order is locked.

    Direct mode: WeChat settled the money to us, ``wechat_settlement`` to ``payments_to_return`` (key
    ``order:<id>:paid_after_close``). Service-provider mode: it went to the merchant's own account at WeChat, outside
    the platform's books, and the refund comes from there: nothing is posted, the refund is begun all the same."""
    order.transaction_id, order.paid_fen = transaction_id, paid_fen  # the buyer's part, as for any payment
    order.unsettled_coupon_fen = unsettled_fen  # a 免充值 coupon's part: never settled, so never owed back by us
    db.session.flush()  # before ``begin_refund`` reads the order again (locked already: no wait)
    if not order.sub_mchid and amount_fen > unsettled_fen:
        post(
            f"order:{order.id}:paid_after_close",
            f"paid after close {order.out_trade_no}: owed back to the payer",
            [
                Leg(ref(AccountKind.WECHAT_SETTLEMENT), -(amount_fen - unsettled_fen)),
                Leg(ref(AccountKind.PAYMENTS_TO_RETURN), amount_fen - unsettled_fen),
            ],
        )
    return begin_refund(order, late_refund_no(order, prefix), amount_fen, LATE_REFUND_REASON)


def _post_late_refund(order: Order, refund: Refund) -> None:
    settled = refund.amount_fen - _unsettled_part(order, refund)  # a 免充值 coupon's part goes back to the coupon
    if order.sub_mchid or settled <= 0:
        return  # refunded from the merchant's own account: never in the platform's books (``take_late_payment``)
    post(
        f"refund:{refund.id}",
        f"refund {refund.out_refund_no}: a payment after close given back",
        [
            Leg(ref(AccountKind.PAYMENTS_TO_RETURN), -settled),
            Leg(ref(AccountKind.WECHAT_SETTLEMENT), settled),
        ],
    )


def _check_settlement_refund(order: Order, notice: RefundState, now: datetime) -> None:
    """WeChat's ``settlement_refund`` (in refund API answers) against the books' split of a refund just applied: what
    it took back of what it settled is the refund less a 免充值 coupon's share. They differ only by WeChat rounding a
    coupon's share otherwise: an operator is told once (the books keep their split; a full refund evens it)."""
    told = notice.settlement_refund_fen
    if told is None:  # notifications never say it: no read for them
        return
    refund = _refund_of(order, notice.out_refund_no)
    if refund is None or refund.applied_at != now:  # applied before (told again)
        return
    ours = refund.amount_fen - _unsettled_part(order, refund)
    if told != ours:
        alert_once(
            "refund_split_differs",
            refund.out_refund_no,
            text=f"refund {refund.out_refund_no}: WeChat took back {told} fen of what it settled, the books {ours} fen "
            f"(order {order.out_trade_no}, 免充值 coupons {order.unsettled_coupon_fen} fen)",
        )


def _unsettled_part(order: Order, refund: Refund) -> int:
    """What of ``refund`` (already counted in ``order.refunded_fen``) goes back to a 免充值 coupon, not from what
    WeChat settled to us (``money.unsettled_share``)."""
    return unsettled_share(order.unsettled_coupon_fen, order.payable_fen, order.refunded_fen, refund.amount_fen)


def _revoke_unearned_packets(order: Order) -> None:
    """Packets an order-paid trigger gave for this order, once the order no longer earns them (``still_earned``).
    An unspent one is revoked (its reservation back to the budget); one already in an order or spent cannot be,
    and an operator is alerted once (the refund itself stands; that order's close or refund will not give it back)."""
    packets = db.session.execute(  # row-locked by _lock_funding already
        select(RedPacket).where(*earned_by(order)).order_by(RedPacket.id).execution_options(populate_existing=True)
    ).scalars()
    for packet in packets:
        if still_earned(packet, order):
            continue
        if packet.status in (PacketStatus.ISSUED, PacketStatus.UNCLAIMED):
            release_packet(packet, PacketStatus.REVOKED)
        elif packet.status in (PacketStatus.LOCKED, PacketStatus.USED):
            alert_once(
                "earned_packet_spent",
                f"packet {packet.id}",
                text=f"red packet {packet.id}, earned by order {order.out_trade_no}, is {packet.status} although "
                f"that order was refunded ({order.refunded_fen} of {order.payable_fen} fen): it could not be revoked",
            )


def _lock_funding(order: Order) -> None:
    """Lock every campaign row this refund may move (its rebates' and its packets' campaigns), in id order, then
    the deposits funding them: the order payments and claims take them in (campaign, then deposit). Without it a
    refund posted to a deposit before releasing its campaign's budget, and released several campaigns in rebate
    order: both could wait in a circle with a payment of the same campaigns. The packets first, in one id-ordered
    statement: those it spent (``_void_discount`` reads them again) and those it earned (``_revoke_unearned_packets``).
    Every path takes a packet before its campaign's row (a payment, a claim, a close, the expiry job, and a refund of
    the order that spent a packet this one earned): taking either kind after the campaigns waited in a circle."""
    spent = select(OrderPacket.packet_id).where(OrderPacket.order_id == order.id)
    db.session.execute(
        select(RedPacket.id)
        .where(RedPacket.id.in_(spent) | and_(*earned_by(order)))
        .order_by(RedPacket.id)
        .with_for_update()
    )
    ids = set(
        db.session.execute(
            union(
                select(Rebate.campaign_id).where(Rebate.order_id == order.id),
                select(RedPacket.campaign_id)
                .join(OrderPacket, OrderPacket.packet_id == RedPacket.id)
                .where(OrderPacket.order_id == order.id),
                select(RedPacket.campaign_id).where(*earned_by(order)),  # packets this order earned
            )
        ).scalars()
    )
    if not ids:
        return
    budgets.lock_in_order(ids, even_one=True)
    lock_deposits([db.session.get(Campaign, campaign_id) for campaign_id in sorted(ids)])


def _refund_of(order: Order, out_refund_no: str) -> Refund | None:
    """Our refund of this number, if any; one of another order is a conflict."""
    refund = db.session.execute(select(Refund).where(Refund.out_refund_no == out_refund_no)).scalar_one_or_none()
    if refund is not None and refund.order_id != order.id:
        raise StateConflict(f"refund {out_refund_no} belongs to another order", code="refund_order_mismatch")
    return refund


def _post_refund(order: Order, refund: Refund) -> None:
    if order.frozen_fen is not None:  # a partner order booked as the merchant's own money (not one paid before)
        _post_partner_refund(order, refund)
        return
    coupon = _unsettled_part(order, refund)  # back to the 免充值 coupon the platform funded, not out of WeChat's
    legs = [
        Leg(account(AccountKind.MERCHANT_PAYABLE, "merchant", order.merchant_id), -refund.amount_fen),
        Leg(account(AccountKind.WECHAT_SETTLEMENT), refund.amount_fen - coupon),
    ]
    legs.append(Leg(account(AccountKind.PLATFORM_MARKETING_FUND), coupon))
    post_entry(f"refund:{refund.id}", f"refund {refund.out_refund_no}", [leg for leg in legs if leg.amount])


def _post_partner_refund(order: Order, refund: Refund) -> None:
    """Service-provider mode: WeChat refunds the buyer from the merchant's own account. While the order's money
    is frozen, from that (in our books: ``merchant_frozen_sales`` and the merchant's claim on it, key
    ``refund:<id>``); once released to the merchant, outside the platform's books: nothing is posted. Released
    means from the moment WeChat accepted the order's share or unfreeze (``unfreeze_unsplit``: what is not shared
    goes to the merchant then), though our books release it when the share finishes (as the statement reads it)."""
    if _released_at_wechat(order.id):
        return
    in_flight = db.session.execute(  # shares handed to WeChat, not yet answered: that money is leaving
        select(func.coalesce(func.sum(Payout.amount_fen), 0)).where(
            Payout.order_id == order.id,
            Payout.rail == Rail.PROFIT_SHARING,
            Payout.status.in_([PayoutStatus.SENDING, PayoutStatus.UNKNOWN]),
        )
    ).scalar_one()
    # a 免充值 coupon's part was never frozen: the merchant's own coupon goes back to it at WeChat
    take = min(refund.amount_fen - _unsettled_part(order, refund), order.frozen_fen - int(in_flight))
    if take <= 0:
        return
    post(
        f"refund:{refund.id}",
        f"refund {refund.out_refund_no}, from the merchant's frozen order money",
        [Leg(_discounted(order), -take), Leg(frozen_ref(order.merchant_id), take)],
    )
    order.frozen_fen -= take


def _released_at_wechat(order_id: int) -> bool:
    """WeChat accepted the order's share or unfreeze (it answered with its number, or we have asked after it
    since): the order's money not shared is the merchant's. A share refused outright, or not yet sent, is not."""
    accepted = or_(
        ProfitShare.wechat_order_id.is_not(None),
        ProfitShare.status.in_([ShareStatus.PROCESSING, ShareStatus.FINISHED]),
    )
    kinds = [ShareKind.SHARE, ShareKind.UNFREEZE]
    found = select(ProfitShare.id).where(ProfitShare.order_id == order_id, ProfitShare.kind.in_(kinds), accepted)
    return db.session.execute(found.limit(1)).first() is not None


def _discounted(order: Order) -> AccountRef:
    """The account a packet's value was paid into at the sale: what the platform owes the merchant, or for a
    partner order the merchant's own claim on its order money."""
    if order.frozen_fen is not None:
        return own_sales_ref(order.merchant_id)
    return ref(AccountKind.MERCHANT_PAYABLE, "merchant", order.merchant_id)


def _discount_moved(order: Order, campaign: Campaign, funder: AccountRef) -> bool:
    """Whether the sale paid a packet's value from ``funder``: not for a partner order's packet its own merchant
    funds (``own_price``), except from its deposit in a sale booked before that was so (the sale's entry says)."""
    if order.frozen_fen is None or not own_price(campaign, order.merchant_id):
        return True
    if funder.kind != AccountKind.MERCHANT_MARKETING_DEPOSIT:
        return False
    debited = db.session.execute(
        select(LedgerPosting.id)
        .join(LedgerEntry, LedgerEntry.id == LedgerPosting.entry_id)
        .where(LedgerEntry.idempotency_key == f"order:{order.id}:sale", LedgerPosting.account_id == account_id(funder))
        .limit(1)
    ).first()
    return debited is not None


def _void_discount(order: Order, refund: Refund) -> None:
    """A fully refunded order: each packet's funder gets its value back; packets are restored if their campaign
    says so and their whole reservation fits again — in the budget and in the funder's deposit (so a later
    payment can never settle above it, nor the deposit go below zero)."""
    for packet, discount in order_packets(order):
        campaign = db.session.get(Campaign, packet.campaign_id)
        funder = face_funder_ref(campaign)
        merchant = _discounted(order)
        if _discount_moved(order, campaign, funder):  # (a partner merchant's own packet: it charged less)
            post(
                f"refund:{refund.id}:discount:{packet.id}",
                f"packet {packet.id} value of {order.out_trade_no} returns to its funder",
                [Leg(merchant, -discount), Leg(funder, discount)],
            )
        budgets.release_committed(campaign.id, discount)
        restorable = refund.applied_at < packet.expires_at and still_earned(packet) and packet.revoked_at is None
        if not (campaign.restore_packet_on_refund and restorable):
            continue  # (a packet whose own earning order was refunded stays spent; so does one a review revoked)
        # by the rules it earns under (its own version): the current ones may cap lower, and its next payment was
        # then cut to "budget exhausted" below what its version promises
        reserve_fen = reservation_for(campaign, packet.amount_fen, version=packet.rules_version)
        try:
            with db.session.begin_nested():  # the budget and (merchant-funded) the deposit must cover it again
                if not budgets.reserve(campaign.id, reserve_fen):
                    continue
                cover_reservation(campaign, reserve_fen)
        except DepositExhausted:
            continue
        packet.status, packet.order_id, packet.used_at, packet.reserved_fen = (
            PacketStatus.ISSUED,
            None,
            None,
            reserve_fen,
        )


def _net_facts(order: Order) -> OrderFacts:
    net_paid = order.net_paid_fen
    net_total = order.net_total_fen  # the goods value left, in proportion to what WeChat charged
    return OrderFacts(
        order_total_fen=net_total, paid_fen=net_paid, paid_at=order.paid_at, has_issuer=True, has_inviter=True
    )


def _claw_back(order: Order, refund: Refund, money: MoneySettings) -> bool:
    """Take back what the refund removes from each rebate; returns whether the order still had rebates (paid,
    held for a condition or held for review) when the refund came."""
    facts = _net_facts(order)
    owed = (Rebate.amount_fen > 0) | (Rebate.held_fen > 0)
    stmt = select(Rebate).where(Rebate.order_id == order.id, owed).order_by(Rebate.id).with_for_update()
    rebates = db.session.execute(stmt).scalars().all()
    for rebate in rebates:
        campaign = db.session.get(Campaign, rebate.campaign_id)
        current = rebate.amount_fen + rebate.held_fen
        rules = rules_of(campaign, rebate.rules_version)
        net = with_lines(facts, rules, order)  # category rates: the lines keep their shares of the net base
        entitled = entitlement_after_refund(rules, net, rebate.role, current, rebate.form)
        from_held = min(current - entitled, rebate.held_fen)
        if from_held:
            _release_held(rebate, campaign, from_held, refund)
        if current - entitled - from_held:
            _take_back(rebate, campaign, current - entitled - from_held, refund, money)
    return bool(rebates)


def _release_held(rebate: Rebate, campaign: Campaign, amount: int, refund: Refund) -> None:
    """Money still waiting, for its condition or for a risk review, simply stops waiting: nothing was paid, and
    its budget goes back. A rebate held for review that the refund takes whole ends ``clawed_back`` (reduced to
    zero by a refund, as a held one does; the review case is left to the reviewer, with nothing to release);
    taken in part, it stays in review holding the rest. A conditional one whose held part is cancelled to the last
    fen keeps what its milestones released: ``awarded``, as the release of its last part leaves it."""
    waiting = "held for review" if rebate.status == RebateStatus.REVIEW else "still held"
    rebate.held_fen -= amount
    if rebate.held_fen == 0 and rebate.amount_fen == 0:
        rebate.status = RebateStatus.CLAWED_BACK
    elif rebate.held_fen == 0 and rebate.status == RebateStatus.HELD:
        rebate.status = RebateStatus.AWARDED
    cancel_held(rebate, amount, f"refund {refund.out_refund_no}: the part {waiting} is cancelled", refund_id=refund.id)
    db.session.flush()


def _take_back(rebate: Rebate, campaign: Campaign, delta: int, refund: Refund, money: MoneySettings) -> None:
    what = f"refund {refund.out_refund_no}"
    take_back(rebate, campaign, delta, f"clawback:{rebate.id}:{refund.id}", what, money, refund_id=refund.id)


# raised by apply_refund / _refund_of / _apply_refund_state: flagged for an operator, nothing moves
DISAGREEMENTS = ("refund_amount_mismatch", "refund_order_mismatch", "refund_state_mismatch")


def apply_refund_notice(
    notice: RefundState,
    expected: PayAccount,
    now: datetime,
    notification_id: str | None = None,
    *,
    money: MoneySettings,
    requested_at: datetime | None = None,
    unreadable_time: str | None = None,
) -> RefundOutcome:
    """Apply what WeChat says of a refund (a notification, a refund answer or a query); flushes only.

    The one refund intake, for the callback, the refund job and the refund API. Under the order's
    row lock: a notification id already recorded is a duplicate; an mchid not ours, a refund of
    another order or another amount than we asked flags the order and moves nothing, as does a
    refund our rules refuse; SUCCESS claws back (``apply_refund``), CLOSED / ABNORMAL release the
    hold, anything else waits. The notification id is recorded with every accepted outcome.

    Times are WeChat's: a success is finished at its ``success_time`` (``_succeeded_at``; ``unreadable_time``: the
    text of one the caller could not read, dropped from the notice), and ``requested_at`` (WeChat's create_time, or
    the notice's own ``create_time`` when it has one) is noted on the refund once, with any accepted outcome.
    """
    order = lock_order(notice.out_trade_no)
    if order is None:
        return RefundOutcome.NOT_OURS
    if notification_id and notification_seen(notification_id, order.out_trade_no, NotificationKind.REFUND):
        return RefundOutcome.DUPLICATE_NOTIFICATION
    if notice.mchid is not None and notice.mchid != expected.mchid:
        flag_order(order, "refund_mismatch", f"refund {notice.out_refund_no} is for mchid {notice.mchid!r}")
        return RefundOutcome.MISMATCH_FLAGGED
    if notice.sub_mchid is not None and notice.sub_mchid != order.sub_mchid:  # partner mode: named when told
        flag_order(order, "refund_mismatch", f"refund {notice.out_refund_no} is for sub_mchid {notice.sub_mchid!r}")
        return RefundOutcome.MISMATCH_FLAGGED
    if notice.total_fen is not None and notice.total_fen != order.payable_fen:
        why = (
            f"refund {notice.out_refund_no} names an order total of {notice.total_fen} fen; ours is {order.payable_fen}"
        )
        flag_order(order, "refund_mismatch", why)
        return RefundOutcome.MISMATCH_FLAGGED
    if notice.transaction_id and order.transaction_id and notice.transaction_id != order.transaction_id:
        why = f"refund {notice.out_refund_no} names payment {notice.transaction_id}; ours is {order.transaction_id}"
        flag_order(order, "refund_mismatch", why)
        return RefundOutcome.MISMATCH_FLAGGED
    why = _refund_id_disagrees(notice)
    if why:
        flag_order(order, "refund_mismatch", why)
        return RefundOutcome.MISMATCH_FLAGGED
    try:
        with db.session.begin_nested():  # a refusal undoes only what this notice began
            outcome = _apply_refund_state(order, notice, now, money, unreadable_time)
    except RebateError as exc:
        if exc.code in DISAGREEMENTS:
            flag_order(order, exc.code, str(exc))
            return RefundOutcome.MISMATCH_FLAGGED
        flag_order(order, "refund_refused", f"refund {notice.out_refund_no} could not be applied: {exc}")
        return RefundOutcome.REFUSED
    if outcome == RefundOutcome.SUCCESS:
        _check_settlement_refund(order, notice, now)
    if outcome.accepted:
        note_notification(notification_id, order.out_trade_no, NotificationKind.REFUND, outcome)
        found = select(Refund).where(Refund.out_refund_no == notice.out_refund_no, Refund.order_id == order.id)
        refund = db.session.execute(found).scalar_one_or_none()
        _note_requested(refund, requested_at or getattr(notice, "create_time", None))
        if outcome == RefundOutcome.SUCCESS:
            _tell_if_reconciled_long_ago(order, refund, now)
    db.session.flush()
    return outcome


def _tell_if_reconciled_long_ago(order: Order, refund: Refund | None, now: datetime) -> None:
    """A refund applied now whose day (the bill that lists it) was reconciled before and lies beyond the days the
    daily job reconciles again by itself: an operator is told once which day to reconcile again (its finding there
    stays open until then). A nearer day is reconciled again by the daily job (``payouts.reconcile``)."""
    if refund is None or refund.applied_at != now:  # applied before (told again)
        return
    day = reconciled_long_ago(refund, now)
    if day is None:
        return
    alert_once(
        "refund_after_reconciliation",
        refund.out_refund_no,
        text=f"refund {refund.out_refund_no} of order {order.out_trade_no} ({refund.amount_fen} fen) was applied "
        f"here at {now.isoformat()}, after the trade bill of {day} that lists it was reconciled: run "
        f"`flask jobs reconcile --date {day}` to reconcile that day again",
    )


def _note_requested(refund: Refund | None, requested_at: datetime | None) -> None:
    """WeChat's create_time of the refund, kept once: the day its trade bill lists the refund (a bill that lists it
    says so itself, ``payouts.reconcile``)."""
    if requested_at is None or requested_at.tzinfo is None:
        return
    if refund is not None and refund.requested_at is None:
        refund.requested_at = requested_at.astimezone(UTC)


def _succeeded_at(notice: RefundState, now: datetime, unreadable: str | None) -> datetime:
    """When WeChat finished a successful refund: its ``success_time`` (RFC 3339 with its offset, as the notice was
    read). Our clock (``now``) when it gave none (logged), or one we cannot believe: unreadable (``unreadable``, its
    text) or later than now by more than ``CLOCKS_APART``; then an operator is told once as well."""
    told = getattr(notice, "success_time", None)
    if told is not None and told.tzinfo is not None and told <= now + CLOCKS_APART:
        return told.astimezone(UTC)
    if told is None and unreadable is None:
        log.warning("refund %s: WeChat gave no success_time; it is finished at our clock", notice.out_refund_no)
        return now
    shown = unreadable if told is None else told.isoformat()
    alert_once(
        "refund_time_unreadable",
        notice.out_refund_no,
        text=f"refund {notice.out_refund_no}: WeChat's success_time {shown[:200]!r} is not a time it can be counted "
        f"on; it is counted at ours ({now.isoformat()})",
    )
    log.warning("refund %s: success_time %r not believed; finished at our clock", notice.out_refund_no, shown[:200])
    return now


def _refund_id_disagrees(notice: RefundState) -> str | None:
    """WeChat's refund number is its own and one per refund: a notice naming another one than the refund already
    carries, or one another refund of ours carries, is not about this refund (None: it agrees, or names none)."""
    if not notice.refund_id:
        return None
    rows = db.session.execute(
        select(Refund.out_refund_no, Refund.refund_id).where(
            or_(Refund.out_refund_no == notice.out_refund_no, Refund.refund_id == notice.refund_id)
        )
    ).all()
    for out_refund_no, refund_id in rows:
        if out_refund_no == notice.out_refund_no and refund_id and refund_id != notice.refund_id:
            return f"refund {notice.out_refund_no} is WeChat's refund {refund_id}; the notice names {notice.refund_id}"
        if out_refund_no != notice.out_refund_no:
            return f"WeChat's refund {notice.refund_id} is our refund {out_refund_no}, not {notice.out_refund_no}"
    return None


def _apply_refund_state(
    order: Order, notice: RefundState, now: datetime, money: MoneySettings, unreadable: str | None = None
) -> RefundOutcome:
    if notice.status == "SUCCESS":
        refund_id, at = notice.refund_id or None, _succeeded_at(notice, now, unreadable)
        apply_refund(
            order.out_trade_no, notice.out_refund_no, notice.refund_fen, now, refund_id, money=money, succeeded_at=at
        )
        return RefundOutcome.SUCCESS
    if notice.status not in ("CLOSED", "ABNORMAL"):
        return RefundOutcome.PROCESSING
    refund = _refund_of(order, notice.out_refund_no)
    if refund is None and notice.status == "ABNORMAL" and notice.refund_fen:
        # begun elsewhere (the merchant platform) on our order, and stuck: its amount is reserved as ours are
        refund = begin_refund(order, notice.out_refund_no, notice.refund_fen)
    elif refund is None:  # a refund begun elsewhere that WeChat closed moved nothing: told, and done
        return RefundOutcome(notice.status.lower())
    if refund.status == RefundStatus.SUCCEEDED and notice.status == "ABNORMAL":
        return RefundOutcome.LATE  # it went abnormal, then succeeded (its money moved): the first, told last
    if refund.status == RefundStatus.SUCCEEDED:  # its money moved: WeChat cannot take that back by saying so
        raise StateConflict(
            f"WeChat says refund {notice.out_refund_no} is {notice.status}; it succeeded before "
            f"({refund.amount_fen} fen)",
            code="refund_state_mismatch",
        )
    fail_refund(notice.out_refund_no, RefundStatus(notice.status.lower()), now)
    refund.refund_id = refund.refund_id or notice.refund_id or None
    return RefundOutcome(notice.status.lower())
