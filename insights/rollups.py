"""What one Beijing day adds to the rollups, read from the tables (the job in ``jobs.insights`` stores it).

Basis (docs/architecture.md §11): every event counts on the Beijing day it happened:

- ``sales`` (count, paid fen) and ``discounts`` on the day an order was paid; ``refunds`` on the day a
  refund succeeded (so net sales = sales − refunds, each on its own day); ``category`` the same two,
  split over the order's lines in proportion to their goods value (rounded down per line);
- ``influenced`` / ``influenced_refunds``: paid orders that used a campaign's packet or earned one of
  its rebates, per campaign and (campaign 0) across campaigns, each order once;
- ``discounts_returned``: the packets' discounts a full refund gave back to their funders and budgets, on the day
  the refund that completed it (the order's refund applied last, whatever WeChat's dates) succeeded, per campaign
  and (campaign 0) the orders' own;
- ``packets_issued`` (created), ``packets_claimed``, ``packets_used`` (spent on an order paid that day: a refund
  that restores the packet leaves the use where it was), ``packets_expired`` (on the day
  their validity ended), ``packets_revoked`` (on the day it was revoked), split by face-value bucket,
  trigger and channel (the packet's source) for issued and used;
- ``rebates_awarded`` (as first awarded), ``rebates_held`` (still held when the day was rolled up, on
  the award's day), ``rebates_paid`` (a payout that succeeded, or for the ``balance`` form the ledger's
  credit of the balance, or a coupon's payout refused and credited to the balance instead, or a cash rebate's payout
  that came back to the person's balance and was not sent again, on that day; ``points``
  are not money and count as awarded only), ``rebates_clawed_back`` (money taken back from a rebate paid or
  queued: a refund's on the day the refund succeeded, any other on its own day; of a coupon, only what a payout
  not yet sent gave back: a coupon that has left is not taken back) and ``rebates_cancelled`` (a held part that
  will never be paid: revoked by a review, expired, withheld by the feedback quality, or released by a refund,
  dated the same way), split by ``role:form``.

``merchant_id`` of a row: the order's merchant; a packet's own merchant or else its campaign's.
Only reads: a function here returns rows, it stores nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import BigInteger, and_, case, cast, func, or_, select, union
from sqlalchemy.orm import aliased

from models import (
    AccountKind,
    AdjustmentKind,
    Campaign,
    LedgerAccount,
    LedgerEntry,
    LedgerPosting,
    Order,
    OrderLine,
    OrderPacket,
    OrderStatus,
    Payout,
    PayoutStatus,
    Rebate,
    RebateAdjustment,
    RedPacket,
    Refund,
    RefundStatus,
    User,
    db,
)
from models.base import BEIJING
from rebate.rules import Form

# Face-value buckets (fen, upper bound exclusive) and their labels: ¥0–10, ¥10–20, ¥20–50, ¥50–100, ¥100+.
BUCKETS: tuple[tuple[int | None, str], ...] = (
    (10_00, "under_10"),
    (20_00, "10_to_20"),
    (50_00, "20_to_50"),
    (100_00, "50_to_100"),
    (None, "100_plus"),
)
PACKET_EVENTS = ("issued", "claimed", "used", "expired", "revoked")
REBATE_EVENTS = ("awarded", "held", "paid", "clawed_back", "cancelled")
COUPON_FORMS = (Form.WECHAT_COUPON, Form.CARD_COUPON)  # a clawback takes back only those not yet sent


def bucket_of(amount_fen: int) -> str:
    return next(label for bound, label in BUCKETS if bound is None or amount_fen < bound)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC instants a Beijing day starts and ends (end exclusive)."""
    start = datetime.combine(day, datetime.min.time(), BEIJING)
    return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)


def beijing_day(value: datetime) -> date:
    return value.astimezone(BEIJING).date()


@dataclass
class DayRollup:
    """One day's counters keyed (merchant, campaign, metric, dim) → [count, fen], and its people."""

    day: date
    counters: dict[tuple[int, int, str, str], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    people: set[tuple[int, int, int]] = field(default_factory=set)  # (merchant, campaign, user)

    def add(self, merchant: int | None, campaign: int, metric: str, dim: str, count: int, fen: int) -> None:
        cell = self.counters[(merchant or 0, campaign, metric, dim)]
        cell[0] += count
        cell[1] += fen

    def add_split(self, merchant: int | None, campaign: int, metric: str, dim: str, count: int, fen: int) -> None:
        """The total row (dim '') and the row of ``dim``."""
        self.add(merchant, campaign, metric, "", count, fen)
        self.add(merchant, campaign, metric, dim, count, fen)

    def rows(self) -> list[dict]:
        return [
            {"day": self.day, "merchant_id": m, "campaign_id": c, "metric": metric, "dim": dim, "count": n, "fen": fen}
            for (m, c, metric, dim), (n, fen) in sorted(self.counters.items())
        ]


def roll_up_day(day: date) -> DayRollup:
    """Everything the day adds, read in a handful of statements over index ranges of that day."""
    start, end = day_bounds(day)
    out = DayRollup(day)
    _sales(out, start, end)
    _influenced(out, start, end)
    _discounts_returned(out, start, end)
    _packets(out, start, end)
    _rebates(out, start, end)
    return out


def people_rows(rollup: DayRollup) -> list[dict]:
    """The day's people with the day each was first seen (their account's creation, Beijing)."""
    ids = sorted({user for _, _, user in rollup.people})
    first: dict[int, date] = {}
    for chunk in range(0, len(ids), 1000):
        stmt = select(User.id, User.created_at).where(User.id.in_(ids[chunk : chunk + 1000]))
        first.update({uid: beijing_day(created) for uid, created in db.session.execute(stmt)})
    return [
        {"day": rollup.day, "merchant_id": m, "campaign_id": c, "user_id": u, "first_day": first.get(u, rollup.day)}
        for m, c, u in sorted(rollup.people)
    ]


def _paid_in(start: datetime, end: datetime):
    return Order.paid_at >= start, Order.paid_at < end, Order.paid_fen.is_not(None)


def _buyer_part():
    """What a refund gave back of the buyer's own payment (with ``Order`` and ``Refund`` joined): all of it, or for
    an order paid partly with a WeChat Pay coupon (sales count ``paid_fen``; the coupon's part of a refund goes
    back to the coupon) what it took off the buyer's part left (``money.left_after_refunds``), rounded down on the
    running total of the order's refunds applied before it, as ``Order.net_paid_fen`` and the books are: the refunds
    of a whole order take back exactly ``paid_fen``, not a fen less per refund. Applied, not dated by WeChat: a
    refund's part never changes once it is applied (one dated earlier but learned late must not change the part of
    one already counted on a day that may be final). The products are taken only for such an order."""
    earlier = aliased(Refund)
    before = (
        select(cast(func.coalesce(func.sum(earlier.amount_fen), 0), BigInteger))  # (PostgreSQL: numeric)
        .where(
            earlier.order_id == Refund.order_id,
            earlier.status == RefundStatus.SUCCEEDED,
            _applied_before(earlier, Refund),
        )
        .correlate(Refund)
        .scalar_subquery()
    )

    def left(refunded):
        return case(
            (refunded >= Order.payable_fen, 0),
            else_=(Order.payable_fen - refunded) * Order.paid_fen // Order.payable_fen,
        )

    return case(
        (Order.paid_fen == Order.payable_fen, Refund.amount_fen),
        else_=left(before) - left(before + Refund.amount_fen),
    )


def _applied_before(first, second):
    """Refund ``first`` was applied here before refund ``second`` (our clock, ``applied_at``; a tie by id): the order
    the books took an order's refunds in (each under the order's lock), whatever WeChat dated them."""
    a, b = (func.coalesce(r.applied_at, r.finished_at) for r in (first, second))
    return or_(a < b, and_(a == b, first.id < second.id))


def _succeeded_in(start: datetime, end: datetime):
    """Refunds of sales that succeeded in the window (with ``Order`` joined): a payment taken after its order was
    closed and given back (``Order.paid_after_close``) was never a sale."""
    return (
        Refund.status == RefundStatus.SUCCEEDED,
        Refund.finished_at >= start,
        Refund.finished_at < end,
        Order.status != OrderStatus.CLOSED,
    )


def _sales(out: DayRollup, start: datetime, end: datetime) -> None:
    stmt = (
        select(
            Order.merchant_id,
            func.count(),
            func.sum(Order.paid_fen),
            func.sum(Order.discount_fen),
            func.sum(Order.balance_used_fen + Order.points_value_fen),
        )
        .where(*_paid_in(start, end))
        .group_by(Order.merchant_id)
    )
    for merchant, n, paid, discount, wallet in db.session.execute(stmt):
        out.add(merchant, 0, "sales", "", n, int(paid or 0))
        out.add(merchant, 0, "discounts", "", n, int(discount or 0))
        if wallet:  # the buyers' rebate balance and points spent on the orders (``rebate.wallet``)
            out.add(merchant, 0, "wallet", "", n, int(wallet))
    share = OrderLine.line_total_fen * Order.paid_fen // Order.total_fen
    stmt = (
        select(Order.merchant_id, OrderLine.category, func.count(), func.sum(share))
        .select_from(OrderLine)
        .join(Order, Order.id == OrderLine.order_id)
        .where(*_paid_in(start, end))
        .group_by(Order.merchant_id, OrderLine.category)
    )
    for merchant, category, n, fen in db.session.execute(stmt):
        out.add(merchant, 0, "category_sales", f"category:{category}", n, int(fen or 0))
    stmt = (
        select(Order.merchant_id, func.count(), func.sum(_buyer_part()))
        .select_from(Refund)
        .join(Order, Order.id == Refund.order_id)
        .where(*_succeeded_in(start, end))
        .group_by(Order.merchant_id)
    )
    for merchant, n, fen in db.session.execute(stmt):
        out.add(merchant, 0, "refunds", "", n, int(fen or 0))
    share = OrderLine.line_total_fen * _buyer_part() // Order.total_fen
    stmt = (
        select(Order.merchant_id, OrderLine.category, func.count(), func.sum(share))
        .select_from(Refund)
        .join(Order, Order.id == Refund.order_id)
        .join(OrderLine, OrderLine.order_id == Order.id)
        .where(*_succeeded_in(start, end))
        .group_by(Order.merchant_id, OrderLine.category)
    )
    for merchant, category, n, fen in db.session.execute(stmt):
        out.add(merchant, 0, "category_refunds", f"category:{category}", n, int(fen or 0))


def _influencing(orders):
    """(order id, campaign id) of ``orders`` (a subquery of order ids): a packet spent or a rebate earned."""
    by_packet = (
        select(OrderPacket.order_id, RedPacket.campaign_id)
        .join(RedPacket, RedPacket.id == OrderPacket.packet_id)
        .where(OrderPacket.order_id.in_(orders))
    )
    by_rebate = select(Rebate.order_id, Rebate.campaign_id).where(Rebate.order_id.in_(orders), Rebate.original_fen > 0)
    return union(by_packet, by_rebate).subquery()


def _influenced(out: DayRollup, start: datetime, end: datetime) -> None:
    paid = select(Order.id).where(*_paid_in(start, end))
    pairs = _influencing(paid)
    stmt = (
        select(pairs.c.order_id, pairs.c.campaign_id, Order.merchant_id, Order.paid_fen, Order.user_id)
        .select_from(pairs)
        .join(Order, Order.id == pairs.c.order_id)
    )
    seen: set[int] = set()
    for order_id, campaign_id, merchant, paid_fen, user_id in db.session.execute(stmt):
        out.add(merchant, campaign_id, "influenced", "", 1, paid_fen)
        out.people.add((merchant, campaign_id, user_id))
        if order_id not in seen:
            seen.add(order_id)
            out.add(merchant, 0, "influenced", "", 1, paid_fen)
    stmt = (
        select(Order.merchant_id, RedPacket.campaign_id, func.sum(OrderPacket.discount_fen))
        .select_from(OrderPacket)
        .join(RedPacket, RedPacket.id == OrderPacket.packet_id)
        .join(Order, Order.id == OrderPacket.order_id)
        .where(*_paid_in(start, end))
        .group_by(Order.merchant_id, RedPacket.campaign_id)
    )
    for merchant, campaign_id, fen in db.session.execute(stmt):
        out.add(merchant, campaign_id, "discounts", "", 0, int(fen or 0))
    refunded = select(Refund.order_id).join(Order, Order.id == Refund.order_id).where(*_succeeded_in(start, end))
    pairs = _influencing(refunded)
    stmt = (
        select(pairs.c.campaign_id, Order.merchant_id, Refund.id, _buyer_part())
        .select_from(pairs)
        .join(Order, Order.id == pairs.c.order_id)
        .join(Refund, Refund.order_id == Order.id)
        .where(*_succeeded_in(start, end))
    )
    counted: set[int] = set()
    for campaign_id, merchant, refund_id, fen in db.session.execute(stmt):
        out.add(merchant, campaign_id, "influenced_refunds", "", 1, fen)
        if refund_id not in counted:
            counted.add(refund_id)
            out.add(merchant, 0, "influenced_refunds", "", 1, fen)


def _discounts_returned(out: DayRollup, start: datetime, end: datetime) -> None:
    """The packets' discounts a full refund gave back to their funders (and budgets), on the day (WeChat's time) the
    refund that made the order refunded in full succeeded: the order's refund applied last (``rebate.refunds``
    posts ``refund:<id>:discount:<packet>`` under it), not the one WeChat dated last (one dated earlier may be
    learned days later, and it is then the one that completed the order). Per campaign, and (campaign 0) the orders'
    own discounts, each order once."""
    later = aliased(Refund)
    last = ~(
        select(later.id)
        .where(
            later.order_id == Refund.order_id,
            later.status == RefundStatus.SUCCEEDED,
            _applied_before(Refund, later),
        )
        .correlate(Refund)
        .exists()
    )
    completing = (
        select(Refund.order_id)
        .join(Order, Order.id == Refund.order_id)
        .where(*_succeeded_in(start, end), Order.status == OrderStatus.REFUNDED, last)
        .subquery()
    )
    stmt = (
        select(Order.merchant_id, RedPacket.campaign_id, func.count(), func.sum(OrderPacket.discount_fen))
        .select_from(OrderPacket)
        .join(RedPacket, RedPacket.id == OrderPacket.packet_id)
        .join(Order, Order.id == OrderPacket.order_id)
        .where(Order.id.in_(select(completing.c.order_id)))
        .group_by(Order.merchant_id, RedPacket.campaign_id)
    )
    for merchant, campaign_id, n, fen in db.session.execute(stmt):
        out.add(merchant, campaign_id, "discounts_returned", "", int(n or 0), int(fen or 0))
    stmt = (
        select(Order.merchant_id, func.count(), func.sum(Order.discount_fen))
        .where(Order.id.in_(select(completing.c.order_id)), Order.discount_fen > 0)
        .group_by(Order.merchant_id)
    )
    for merchant, n, fen in db.session.execute(stmt):
        out.add(merchant, 0, "discounts_returned", "", int(n or 0), int(fen or 0))


def _packets(out: DayRollup, start: datetime, end: datetime) -> None:
    when = {
        "issued": (RedPacket.created_at, None),
        "claimed": (RedPacket.claimed_at, None),
        "used": (None, None),
        "expired": (RedPacket.expires_at, "expired"),
        "revoked": (RedPacket.revoked_at, "revoked"),
    }
    merchant = func.coalesce(RedPacket.merchant_id, Campaign.serves_merchant_id, 0)
    for event, (column, status) in when.items():
        stmt = (
            select(
                RedPacket.campaign_id,
                merchant,
                Campaign.trigger_kind,
                RedPacket.source,
                RedPacket.amount_fen,
                RedPacket.owner_id,
            )
            .select_from(RedPacket)
            .join(Campaign, Campaign.id == RedPacket.campaign_id)
        )
        if column is None:  # used: spent on an order paid that day. The spending (``order_packets``) stays when a
            # refund restores the packet (``used_at`` cleared, the packet issued again): a day's uses must not vanish
            # when it is rebuilt after such a refund, and a packet spent twice was used twice, as its discounts say.
            stmt = stmt.join(OrderPacket, OrderPacket.packet_id == RedPacket.id).join(
                Order, Order.id == OrderPacket.order_id
            )
            stmt = stmt.where(*_paid_in(start, end))
        else:
            stmt = stmt.where(column >= start, column < end)
        if status is not None:
            stmt = stmt.where(RedPacket.status == status)
        metric = f"packets_{event}"
        for campaign_id, merchant_id, trigger, source, amount, owner in db.session.execute(stmt):
            out.add(merchant_id, campaign_id, metric, "", 1, amount)
            if event in ("issued", "used"):
                out.add(merchant_id, campaign_id, metric, f"bucket:{bucket_of(amount)}", 1, amount)
                out.add(merchant_id, campaign_id, metric, f"trigger:{trigger}", 1, amount)
                out.add(merchant_id, campaign_id, metric, f"channel:{source}", 1, amount)
            if owner is not None and event in ("issued", "claimed", "used"):
                out.people.add((merchant_id, campaign_id, owner))


def _rebates(out: DayRollup, start: datetime, end: datetime) -> None:
    stmt = (
        select(
            Rebate.campaign_id,
            Order.merchant_id,
            Rebate.role,
            Rebate.form,
            Rebate.original_fen,
            Rebate.held_fen,
            Rebate.beneficiary_type,
            Rebate.beneficiary_id,
        )
        .select_from(Rebate)
        .join(Order, Order.id == Rebate.order_id)
        .where(Rebate.created_at >= start, Rebate.created_at < end, Rebate.original_fen > 0)
    )
    for campaign_id, merchant, role, form, original, held, kind, beneficiary in db.session.execute(stmt):
        out.add_split(merchant, campaign_id, "rebates_awarded", f"{role}:{form}", 1, original)
        if held:
            out.add_split(merchant, campaign_id, "rebates_held", f"{role}:{form}", 1, held)
        if kind == "user" and beneficiary is not None:
            out.people.add((merchant, campaign_id, beneficiary))
    stmt = (
        select(Rebate.campaign_id, Order.merchant_id, Rebate.role, Rebate.form, Payout.amount_fen)
        .select_from(Payout)
        .join(Rebate, Rebate.id == Payout.rebate_id)
        .join(Order, Order.id == Rebate.order_id)
        .where(Payout.status == PayoutStatus.SUCCEEDED, Payout.finished_at >= start, Payout.finished_at < end)
    )
    for campaign_id, merchant, role, form, fen in db.session.execute(stmt):
        out.add_split(merchant, campaign_id, "rebates_paid", f"{role}:{form}", 1, fen)
    _balance_credits(out, start, end)
    # Clawed back or cancelled on the day of what took it: a refund's on the day the refund succeeded, where the
    # refund itself is deducted (its notification may be worked after midnight, or a day later); any other (a
    # review's, a share come back, a held part revoked, expired or withheld) on the day it was made. Two index
    # ranges, one per kind of cause.
    clawback = (
        select(
            Rebate.campaign_id,
            Order.merchant_id,
            Rebate.role,
            Rebate.form,
            RebateAdjustment.amount_fen,
            RebateAdjustment.recovered_fen,
            RebateAdjustment.kind,
        )
        .select_from(RebateAdjustment)
        .join(Rebate, Rebate.id == RebateAdjustment.rebate_id)
        .join(Order, Order.id == Rebate.order_id)
        .outerjoin(Refund, Refund.id == RebateAdjustment.refund_id)
    )
    by_refund = clawback.where(Refund.finished_at >= start, Refund.finished_at < end)
    by_itself = clawback.where(
        RebateAdjustment.created_at >= start,
        RebateAdjustment.created_at < end,
        or_(RebateAdjustment.refund_id.is_(None), Refund.finished_at.is_(None)),
    )
    for stmt in (by_refund, by_itself):
        for campaign_id, merchant, role, form, fen, recovered, kind in db.session.execute(stmt):
            if form in COUPON_FORMS:  # a coupon that has left is not taken back (``rebate.clawbacks``): only what
                fen = recovered  # a payout not yet sent gave back came back; the rest stays the campaign's cost
                if fen <= 0:
                    continue
            metric = "rebates_cancelled" if kind == AdjustmentKind.CANCELLED else "rebates_clawed_back"
            out.add_split(merchant, campaign_id, metric, f"{role}:{form}", 1, fen)


def _balance_credits(out: DayRollup, start: datetime, end: datetime) -> None:
    """Rebates of the ``balance`` form are paid when the ledger credits the balance (``rebate:<id>`` keys: at
    the award, at a milestone's release, at a review's release); the cash forms when their payout succeeds; a
    payout from the funder (a coupon) that falls back to the balance when the ledger credits it instead
    (``payout:<id>:to-balance``: a payout from the person's own balance posts none, its money is there already);
    and a payout from the person's own balance (a cash rebate) that came back there and was not sent again (refused,
    or its fallback keeps it in the balance: ``payout:<id>:failed`` / ``:cancelled`` crediting the person's cash,
    with no payout retrying it) when the balance has it back: the money is the person's, to withdraw. One sent again
    counts when that one is paid or comes back in turn; a payout a clawback cut before it was sent posts neither
    (``:reduce:``), and a paid red packet WeChat refunds unopened (``:unclaimed``) was counted paid already."""
    credited = func.sum(LedgerPosting.amount)
    came_back = and_(
        or_(
            LedgerEntry.idempotency_key.like("payout:%:failed"), LedgerEntry.idempotency_key.like("payout:%:cancelled")
        ),
        LedgerAccount.kind == AccountKind.USER_CASH,
    )
    stmt = (
        select(LedgerEntry.idempotency_key, credited)
        .join(LedgerPosting, LedgerPosting.entry_id == LedgerEntry.id)
        .join(LedgerAccount, LedgerAccount.id == LedgerPosting.account_id)
        .where(
            LedgerEntry.created_at >= start,
            LedgerEntry.created_at < end,
            LedgerEntry.unit == "fen",
            or_(
                LedgerEntry.idempotency_key.like("rebate:%"),
                LedgerEntry.idempotency_key.like("payout:%:to-balance"),
                came_back,
            ),
            LedgerPosting.amount > 0,
        )
        .group_by(LedgerEntry.id, LedgerEntry.idempotency_key)
    )
    by_rebate: dict[int, list[int]] = defaultdict(list)
    by_payout: dict[int, list[int]] = defaultdict(list)
    for key, fen in db.session.execute(stmt):
        kind, ident = key.split(":")[:2]
        if ident.isdecimal():
            (by_rebate if kind == "rebate" else by_payout)[int(ident)].append(int(fen or 0))
    fell_back: dict[int, list[int]] = defaultdict(list)  # by rebate, whatever its form
    ids = sorted(by_payout)
    for chunk in range(0, len(ids), 1000):
        retry = aliased(Payout)  # a retry pays the same rebate: found by its (indexed) rebate, then its parent
        retried = (
            select(retry.id)
            .where(retry.rebate_id == Payout.rebate_id, retry.retry_of_id == Payout.id)
            .correlate(Payout)
            .exists()
        )
        stmt = select(Payout.id, Payout.rebate_id).where(
            Payout.id.in_(ids[chunk : chunk + 1000]), Payout.rebate_id.is_not(None), ~retried
        )
        for payout_id, rebate_id in db.session.execute(stmt):
            fell_back[rebate_id] += by_payout[payout_id]
    if not by_rebate and not fell_back:
        return
    stmt = (
        select(Rebate.id, Rebate.campaign_id, Order.merchant_id, Rebate.role, Rebate.form)
        .select_from(Rebate)
        .join(Order, Order.id == Rebate.order_id)
        .where(
            Rebate.id.in_(sorted({*by_rebate, *fell_back})),
            or_(Rebate.form == Form.BALANCE, Rebate.id.in_(sorted(fell_back))),
        )
    )
    for rebate_id, campaign_id, merchant, role, form in db.session.execute(stmt):
        own = by_rebate.get(rebate_id, []) if form == Form.BALANCE else []
        for fen in (*own, *fell_back.get(rebate_id, [])):
            out.add_split(merchant, campaign_id, "rebates_paid", f"{role}:{form}", 1, fen)


def first_data_day() -> date | None:
    """The earliest Beijing day anything to roll up happened on (an order created, a packet issued)."""
    firsts = [
        db.session.execute(select(func.min(Order.created_at))).scalar(),
        db.session.execute(select(func.min(RedPacket.created_at))).scalar(),
    ]
    found = [beijing_day(f if f.tzinfo else f.replace(tzinfo=UTC)) for f in firsts if f is not None]
    return min(found) if found else None
