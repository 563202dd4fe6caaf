"""``apply_payment``: the one payment intake, called by the payment callback and the order-query job.

Both hand it a transaction parsed at the edge (``wechat.transactions``), our
account (``PayAccount``) and the money settings (``MoneySettings``), both built
from the app's settings by the shell. In the caller's transaction, under the
order's row lock, it checks once whether the notification was seen, compares
mchid / appid / amount once, and then: the notification id is recorded, the
order becomes paid, its packets used, the sale posted, the rebate engine run
for every campaign that applies, rebates posted and payouts queued, and packets
issued by order-paid triggers. A repeat (same notification, or an order already
paid) changes nothing and reports success. A disagreement flags the order for
review, alerts an operator once and moves no money.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cache

from sqlalchemy import and_, bindparam, or_, select, true, union, update
from sqlalchemy.orm import aliased
from sqlalchemy.orm.attributes import set_committed_value

from ledger import AccountRef, Leg, ref
from models import (
    AccountKind,
    Campaign,
    CampaignStatus,
    Merchant,
    Order,
    OrderPacket,
    OrderStatus,
    PacketStatus,
    Rebate,
    Receivable,
    RedPacket,
    User,
    alert_once,
    db,
    raise_alert,
)
from models.base import beijing
from models.orders import NotificationKind, note_notification, notification_seen
from models.sql import write_changes
from models.triggers import TriggerKind
from payouts import MoneySettings
from payouts.profit_share import frozen_ref, own_sales_ref, release_key, release_legs
from rebate import budgets, tell, wallet
from rebate.awards import Beneficiary, Effects, record_decisions, with_lines
from rebate.campaigns import face_funder_ref, is_running, load_rules, own_price, rules_of, serves
from rebate.deposits import DepositsLeft, deposit_funded, lock_deposits, pause_refused
from rebate.errors import BudgetExhausted, BudgetMoved, DepositExhausted, Invalid, StateConflict
from rebate.fees import accrue_fee, own_fee_rate
from rebate.intake import (
    PayAccount,
    PaymentOutcome,
    PaymentTransaction,
    flag_order,
)
from rebate.orders import order_packets
from rebate.packets import issue_packet
from rebate.preferences import preferred_forms
from rebate.refunds import take_late_payment
from rebate.rules import Decision, OrderFacts, RuleSet, evaluate
from risk import scoring
from risk.bans import active_bans, refused_by, subjects
from risk.cases import open_order_case
from risk.net import net_of
from risk.profiles import note_paid_order, note_pair
from risk.rules import Verdict, decide, rules_for


def apply_payment(
    tx: PaymentTransaction,
    expected: PayAccount,
    now: datetime,
    notification_id: str | None = None,
    *,
    money: MoneySettings,
    lock_budgets: bool = False,
) -> PaymentOutcome:
    """Apply what WeChat says was paid (a notification or a query answer); flushes only.

    Under the order's row lock: a notification id already recorded is a duplicate (a concurrent
    delivery waits here, then sees it); a transaction that is not paid changes nothing; mchid,
    appid and amount are compared with ours and the order's, here and nowhere else, and any
    disagreement flags the order and alerts an operator (once) and moves nothing. The
    notification id is recorded with every accepted outcome, so a repeat is answered at once.

    Budgets: by default the campaign rows are not locked while the payment is decided and written; their
    budgets move in one conditional UPDATE at the very end, so a popular campaign's row is held only from
    that statement to the commit. An award that reserved nothing (referral, attribution) whose budget another
    payment took in between raises ``BudgetMoved`` there: the caller rolls back and calls again with
    ``lock_budgets=True``, which locks every campaign row the payment writes first (in id order) and decides
    within what is left. Deposit-funded campaigns and order-paid triggers always take the locking path.
    """
    loaded = _load(tx.out_trade_no)
    if loaded is None:
        return PaymentOutcome.NOT_OURS
    order = loaded.order
    # A notification id is recorded only with an outcome that left the order paid, refunded or closed:
    # an open order cannot have seen it (a concurrent twin waited on the lock and sees the winner's status).
    if (
        notification_id
        and order.status != OrderStatus.CREATED
        and notification_seen(notification_id, order.out_trade_no, NotificationKind.PAYMENT)
    ):
        return PaymentOutcome.DUPLICATE_NOTIFICATION
    if not tx.paid:
        return PaymentOutcome.NOT_PAID
    problems = disagreements(tx, expected, order)
    if problems:
        flag_order(order, "payment_mismatch", "; ".join(problems))
        return PaymentOutcome.MISMATCH_FLAGGED
    outcome = _apply_locked(loaded, tx, tx.success_time or now, money, lock_budgets, now)
    note_notification(notification_id, order.out_trade_no, NotificationKind.PAYMENT, outcome)
    db.session.flush()
    return outcome


def disagreements(tx: PaymentTransaction, expected: PayAccount, order: Order) -> list[str]:
    """Every way a paid transaction disagrees with our account and the order (empty: it agrees)."""
    problems = []
    if tx.mchid != expected.mchid:
        problems.append(f"mchid {tx.mchid!r} is not ours")
    if tx.appid != expected.appid:
        problems.append(f"appid {tx.appid!r} is not ours")
    if tx.sub_mchid != order.sub_mchid:  # partner mode: paid to the order's sub-merchant (None twice: direct)
        problems.append(f"paid to sub_mchid {tx.sub_mchid!r}; the order is for {order.sub_mchid!r}")
    if tx.amount.total_fen != order.payable_fen:
        problems.append(f"WeChat says {tx.amount.total_fen} fen was paid; the order asks {order.payable_fen}")
    spared = tx.amount.total_fen - buyer_paid(tx)
    if tx.amount.coupons_fen > spared:  # flagged, not refused unread: WeChat took the money, an operator looks
        problems.append(f"coupons of {tx.amount.coupons_fen} fen, more than the {spared} fen the payer was spared")
    if tx.amount.currency != "CNY":  # every order is in fen of yuan
        problems.append(f"paid in {tx.amount.currency!r}; the order is in CNY")
    return problems


def _apply_locked(
    loaded: _Loaded, tx: PaymentTransaction, paid_at: datetime, money: MoneySettings, lock_budgets: bool, now: datetime
) -> PaymentOutcome:
    order = loaded.order
    if order.status in (OrderStatus.PAID, OrderStatus.REFUNDED):
        if order.transaction_id != tx.transaction_id:
            flag_order(
                order, "second_payment", f"a second transaction {tx.transaction_id} paid order {order.out_trade_no}"
            )
        return PaymentOutcome.ALREADY_APPLIED
    if order.status == OrderStatus.CLOSED:
        return _paid_after_close(order, tx, money.number_prefix)
    spent = order_packets(order)  # read (and row-locked) before anything is written: one UPDATE of the order
    attributed = _attributing_packets(order, spent, paid_at, loaded.buyer)
    campaigns = _campaigns(loaded.campaigns, spent, attributed)
    risk = _score(order, loaded, spent, attributed, campaigns, paid_at, now)
    order.status, order.transaction_id, order.paid_at = OrderStatus.PAID, tx.transaction_id, paid_at
    order.paid_fen, order.unsettled_coupon_fen = buyer_paid(tx), tx.amount.unsettled_coupon_fen
    order.risk_score, order.risk_decision, order.risk = risk.score.score, risk.decision, risk.record
    _use_packets(order, spent, paid_at)
    load_rules(
        [(c, None) for c in campaigns.values()] + [(campaigns[p.campaign_id], p.rules_version) for p, _ in spent]
    )
    _note_attribution(loaded.buyer, spent, campaigns, paid_at)
    written = _written_campaigns(order, spent, attributed, campaigns, paid_at)
    locked = _lock_deposit_funded(campaigns, written)
    lock_deposits(list(campaigns.values()))
    effects = Effects(money, clean=loaded.clean, refused=risk.refused, risk=risk.held_or_blocked)
    _post_sale(order, spent, campaigns, effects)
    fee_bps = money.platform_fee_bps if loaded.fee_bps is None else loaded.fee_bps
    accrue_fee(order, fee_bps, effects.batch)  # the platform's service fee, with the sale
    if any(deposit_funded(c) for c in campaigns.values()):
        effects.batch.post()  # a deposit's balance, read next, must see this sale's discounts
    deposits = DepositsLeft(_reserved_by_funder(spent, campaigns))  # read after the sale: discounts came out first
    attributing = {packet.campaign_id for packet in attributed}
    settles, unreserved = _run_rebates(order, spent, campaigns, paid_at, deposits, effects, attributing)
    unreserved += _run_attribution(order, attributed, campaigns, paid_at, deposits, effects, unreserved)
    write_changes([order, *(packet for packet, _ in spent)])  # paid, and its packets used (both rows locked)
    if locked or lock_budgets or _triggers(order, campaigns, paid_at):
        if not locked:  # every campaign row written from here on, at once and in id order: no circle of waits
            budgets.lock_in_order(written)
        _commit_unreserved(unreserved, _settlements(settles), deposits, effects)
        effects.write()
    else:  # the budgets last, in one statement: a popular campaign's row is held from here to the commit only
        effects.write()
        moved = budgets.commit_many(_amounts(unreserved), _settlements(settles))
        if moved:
            raise BudgetMoved(f"the budgets of campaigns {sorted(moved)} moved since they were read")
    _open_case(order, risk, effects, now)
    issued = _issue_triggered_packets(order, campaigns, paid_at, risk.blocked)
    _note_profile(order, spent, risk, effects, paid_at)
    effects.notices += [tell.packet_received(packet) for packet in issued]
    effects.tell()  # every notice of the payment in one statement, none when there is nothing to tell
    return PaymentOutcome.APPLIED


@dataclass
class _Loaded:
    order: Order
    buyer: User
    inviter: User | None  # kept here: the session's identity map holds rows only while they are referenced
    campaigns: list[Campaign]
    clean: set[tuple[str, int]]  # beneficiaries who owe nothing back (no outstanding receivable)
    fee_bps: int | None = None  # the merchant's own service fee (None: PLATFORM_FEE_BPS)


def buyer_paid(tx: PaymentTransaction) -> int:
    """What the buyer paid of what WeChat charged (``payer_total``: less when a WeChat Pay coupon paid the rest)."""
    total, payer_total = tx.amount.total_fen, tx.amount.payer_total_fen
    return total if payer_total is None else min(payer_total, total)


def _paid_after_close(order: Order, tx: PaymentTransaction, prefix: str) -> PaymentOutcome:
    """The buyer paid as the order's close went out: the payment is booked as owed back and refunded whole
    (``refunds.take_late_payment``), and an operator told once."""
    if order.transaction_id is None:
        refund = take_late_payment(
            order, tx.transaction_id, tx.amount.total_fen, buyer_paid(tx), prefix, tx.amount.unsettled_coupon_fen
        )
        flag_order(
            order,
            "paid_after_close",
            f"order {order.out_trade_no} was paid ({tx.amount.total_fen} fen, {tx.transaction_id}) after it was "
            f"closed; refund {refund.out_refund_no} of all of it begun",
        )
    elif order.transaction_id != tx.transaction_id:
        flag_order(order, "second_payment", f"a second transaction {tx.transaction_id} paid order {order.out_trade_no}")
    return PaymentOutcome.PAID_AFTER_CLOSE


def _load(out_trade_no: str) -> _Loaded | None:
    """The order, row-locked, with its buyer and inviter, whether they (and its merchant) owe anything back,
    and every campaign that can apply to it: one statement.

    The campaigns are read without a lock: their budgets are committed by conditional UPDATEs at the end.
    They are those serving this merchant or every merchant (``ix_campaigns_serving``) whose trigger is a paid
    order this one reaches, or, for an invited buyer, a referral campaign; and those of the order's packets.
    """
    rows = db.session.execute(_load_statement(), {"out_trade_no": out_trade_no}).all()
    if not rows:
        return None
    order, buyer_row, inviter_row, buyer_owes, inviter_owes, merchant_owes, _, fee_bps = rows[0]
    clean = set()
    if not buyer_owes:
        clean.add(("user", buyer_row.id))
    if inviter_row is not None and not inviter_owes:
        clean.add(("user", inviter_row.id))
    if not merchant_owes:
        clean.add(("merchant", order.merchant_id))
    found = {row[6].id: row[6] for row in rows if row[6] is not None}
    return _Loaded(order, buyer_row, inviter_row, [found[i] for i in sorted(found)], clean, fee_bps)


@cache
def _load_statement():
    """``_load``'s statement, built once per process (building it costs more than running it): the order
    number is its one bound parameter."""
    out_trade_no = bindparam("out_trade_no", type_=Order.out_trade_no.type)
    buyer, inviter = aliased(User), aliased(User)
    o, u, c = aliased(Order), aliased(User), aliased(Campaign)

    def of_order(column):
        return select(column).where(o.out_trade_no == out_trade_no).correlate(None).scalar_subquery()

    invited = (
        select(u.id)
        .join(o, o.user_id == u.id)
        .where(o.out_trade_no == out_trade_no, u.inviter_id.is_not(None))
        .correlate(None)
        .exists()
    )
    applies = or_(
        and_(c.trigger_kind == TriggerKind.ORDER_PAID.value, c.trigger_min_order_fen <= of_order(o.total_fen)),
        and_(c.trigger_kind != TriggerKind.ORDER_PAID.value, c.applies_to == "referral", invited),
    )
    active = c.status == CampaignStatus.ACTIVE.value
    candidates = union(
        select(c.id).where(active, c.serves_merchant_id == of_order(o.merchant_id), applies),
        select(c.id).where(active, c.serves_merchant_id.is_(None), applies),
        select(RedPacket.campaign_id)
        .join(OrderPacket, OrderPacket.packet_id == RedPacket.id)
        .where(OrderPacket.order_id == of_order(o.id)),
    )
    campaign = aliased(Campaign, select(Campaign).where(Campaign.id.in_(candidates)).subquery())
    return (
        select(
            Order,
            buyer,
            inviter,
            _owes("user", buyer.id),
            _owes("user", inviter.id),
            _owes("merchant", Order.merchant_id),
            campaign,
            own_fee_rate(Order.merchant_id),
        )
        .join(buyer, buyer.id == Order.user_id)
        .outerjoin(inviter, inviter.id == buyer.inviter_id)
        .outerjoin(campaign, true())
        .where(Order.out_trade_no == out_trade_no)
        .with_for_update(of=Order)
        .execution_options(populate_existing=True)  # after waiting on the lock, see the winner's writes
    )


def _owes(beneficiary_type: str, beneficiary_id):
    return (
        select(Receivable.id)
        .where(
            Receivable.beneficiary_type == beneficiary_type,
            Receivable.beneficiary_id == beneficiary_id,
            Receivable.outstanding_fen > 0,
        )
        .exists()
    )


def _use_packets(order: Order, spent: list[tuple[RedPacket, int]], now: datetime) -> None:
    """The order's packets (read with their discounts by ``order_packets``), marked used."""
    for packet, _ in spent:
        packet.status, packet.used_at, packet.order_id = PacketStatus.USED, now, order.id


def _reserved_by_funder(spent: list[tuple[RedPacket, int]], campaigns: dict[int, Campaign]) -> dict[int, int]:
    """What the packets spent on this order reserved against each funding merchant's deposit."""
    reserved: dict[int, int] = {}
    for packet, _ in spent:
        campaign = campaigns[packet.campaign_id]
        if deposit_funded(campaign):
            merchant_id = campaign.funder_merchant_id
            reserved[merchant_id] = reserved.get(merchant_id, 0) + packet.reserved_fen
    return reserved


def _attributing_packets(
    order: Order, spent: list[tuple[RedPacket, int]], now: datetime, buyer: User
) -> list[RedPacket]:
    """Packets this buyer spent earlier whose campaign attributes later orders at this merchant to them.

    Looked for only while the buyer's ``attribution_until`` hint is ahead (set when such a packet is used).
    """
    if buyer.attribution_until is None or now >= buyer.attribution_until:
        return []
    at_this_merchant = or_(
        RedPacket.merchant_id == order.merchant_id,
        and_(RedPacket.merchant_id.is_(None), RedPacket.issuer_merchant_id == order.merchant_id),
    )
    used = db.session.execute(
        select(RedPacket)
        .where(
            RedPacket.owner_id == order.user_id,
            RedPacket.status == PacketStatus.USED,
            RedPacket.order_id != order.id,
            RedPacket.issuer_type == "merchant",
            at_this_merchant,
            RedPacket.campaign_id.not_in([packet.campaign_id for packet, _ in spent]),
        )
        .order_by(RedPacket.used_at.desc())
    ).scalars()
    found: dict[int, RedPacket] = {}
    for p in used:
        if p.campaign_id in found:
            continue
        days = rules_of(_campaign(p.campaign_id), p.rules_version).attribution_days
        if days and now < p.used_at + timedelta(days=days):
            found[p.campaign_id] = p
    return list(found.values())


def _campaign(campaign_id: int) -> Campaign:
    return db.session.get(Campaign, campaign_id)


def _campaigns(
    candidates: list[Campaign], spent: list[tuple[RedPacket, int]], attributed: list[RedPacket]
) -> dict[int, Campaign]:
    """The campaigns this payment touches, in id order: those read with the order, and the attributing
    packets' (the rare path: read by primary key when not already loaded)."""
    found = {c.id: c for c in candidates}
    for packet in attributed:
        found.setdefault(packet.campaign_id, _campaign(packet.campaign_id))
    missing = {packet.campaign_id for packet, _ in spent} - set(found)
    if missing:  # cannot happen: the load reads the packets' campaigns
        raise LookupError(f"campaigns {sorted(missing)} of the order's packets were not read")
    return {cid: found[cid] for cid in sorted(found)}


def _written_campaigns(
    order: Order,
    spent: list[tuple[RedPacket, int]],
    attributed: list[RedPacket],
    campaigns: dict[int, Campaign],
    now: datetime,
) -> list[int]:
    """Every campaign whose budget row this payment may write, in id order (a superset: a trigger that then
    finds the buyer's order is not the first still counts): the spent packets' (settled), the referral and
    attributing campaigns' (committed) and the order-paid triggers' (a packet taken)."""
    own = {packet.campaign_id for packet, _ in spent}
    referral = {cid for cid, c in campaigns.items() if cid not in own and rules_of(c).applies_to == "referral"}
    attributing = {packet.campaign_id for packet in attributed}
    triggered = {c.id for c in campaigns.values() if _may_trigger(order, c, now)}
    return sorted(own | referral | attributing | triggered)


def _lock_deposit_funded(campaigns: dict[int, Campaign], written: list[int]) -> bool:
    """Merchant-deposit funded campaigns keep their row lock, then the deposit's, for the whole payment: the
    deposit may never go below the live reservations, and claims lock in this order too (campaign, then
    deposit). The one path that costs more statements (and holds a lock across the payment). Every campaign
    the payment writes is locked with them, in the same id-ordered statement: a later lock of a lower id while
    holding these would wait in a circle with a payment doing the reverse. Returns whether it locked."""
    funded = {c.id for c in campaigns.values() if deposit_funded(c)}
    if not funded:
        return False
    db.session.execute(
        select(Campaign)
        .where(Campaign.id.in_(sorted(funded | set(written))))
        .order_by(Campaign.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return True


def _note_attribution(
    buyer: User, spent: list[tuple[RedPacket, int]], campaigns: dict[int, Campaign], now: datetime
) -> None:
    """A merchant's packet whose rules attribute later orders: the buyer's hint moves to its end, never back.

    One conditional UPDATE: the buyer's row is read unlocked with the order, and a payment of another order of
    theirs at once (another shop's trial packet) may have moved the hint meanwhile; written from what was read,
    a shorter end had overwritten a longer one, and the later orders it attributes earned nothing."""
    ends = [
        now + timedelta(days=days)
        for packet, _ in spent
        if packet.issuer_type == "merchant"
        and (days := rules_of(campaigns[packet.campaign_id], packet.rules_version).attribution_days)
    ]
    if not ends:
        return
    until = max(ends)
    later = or_(User.attribution_until.is_(None), User.attribution_until < until)
    db.session.execute(
        update(User)
        .where(User.id == buyer.id, later)
        .values(attribution_until=until)
        .execution_options(synchronize_session=False)
    )
    if buyer.attribution_until is None or buyer.attribution_until < until:
        set_committed_value(buyer, "attribution_until", until)


def _post_sale(
    order: Order, spent: list[tuple[RedPacket, int]], campaigns: dict[int, Campaign], effects: Effects
) -> None:
    """The buyer's payment, each packet's funder and the buyer's wallet (``rebate.wallet``) together pay the
    merchant the order total; the wallet's points are redeemed.

    A partner order (service-provider mode) was paid to the merchant's own account at WeChat, never the
    platform's: the payment is the merchant's frozen order money (``merchant_frozen_sales``) and the merchant's
    claim on it (``merchant_own_sales``), which its own rebates come out of by profit sharing; without profit
    sharing WeChat settles it to the merchant at once (released in the same batch)."""
    funded: dict[str, tuple[AccountRef, int]] = {}
    own_discount = 0  # a partner order's packets its merchant funds (from sales or deposit): it charged less
    for packet, discount in spent:
        campaign = campaigns[packet.campaign_id]
        if order.sub_mchid and own_price(campaign, order.merchant_id):
            own_discount += discount
            continue
        funder = face_funder_ref(campaign)
        funded[funder.code] = (funder, funded.get(funder.code, (funder, 0))[1] + discount)
    settled, unsettled = order.payable_fen - order.unsettled_coupon_fen, order.unsettled_coupon_fen
    if order.sub_mchid:  # service-provider mode: paid to the merchant's own sub-merchant account
        own = own_sales_ref(order.merchant_id)
        received = [Leg(frozen_ref(order.merchant_id), -settled), Leg(own, order.total_fen - own_discount - unsettled)]
    else:  # a 免充值 coupon's part never reaches us: the platform, the merchant of record at WeChat, funded it
        received = [
            Leg(ref(AccountKind.WECHAT_SETTLEMENT), -settled),
            Leg(ref(AccountKind.MERCHANT_PAYABLE, "merchant", order.merchant_id), order.total_fen),
        ]
        if unsettled:
            received.append(Leg(ref(AccountKind.PLATFORM_MARKETING_FUND), -unsettled))
    legs = [*received, *(Leg(funder, -amount) for funder, amount in funded.values()), *wallet.sale_legs(order)]
    legs = [leg for leg in legs if leg.amount]  # (a 免充值 coupon may leave a side nothing)
    if legs:  # (or everything: a merchant's own packet and its own 免充值 coupon paid the whole order)
        effects.batch.add(f"order:{order.id}:sale", f"sale {order.out_trade_no}", legs)
    wallet.spend_points(order, effects.batch)
    if order.sub_mchid:
        order.frozen_fen = settled
        if not order.profit_sharing and settled:  # not frozen at WeChat: the merchant has it at once
            effects.batch.add(
                release_key(order.id),
                f"sale {order.out_trade_no} settled to its merchant (no profit sharing)",
                release_legs(order.merchant_id, settled),
            )
            order.frozen_fen = 0


def _referral_ends(consumer: User, referral_days: int | None) -> datetime | None:
    """When the inviter stops earning on this buyer (None: never, as long as the rule applies)."""
    if referral_days is None:
        return None
    return (consumer.invited_at or consumer.created_at) + timedelta(days=referral_days)


def _who(order: Order, packet: RedPacket | None, referral_days: int | None, now: datetime):
    consumer = db.session.get(User, order.user_id)
    inviter = None
    if consumer.inviter_id is not None:
        ends = _referral_ends(consumer, referral_days)
        if ends is None or now < ends:
            inviter = Beneficiary("user", consumer.inviter_id)
    issuer = None
    if packet is not None and packet.issuer_type == "merchant":
        issuer = Beneficiary("merchant", packet.issuer_merchant_id)
    elif packet is not None and packet.issuer_type == "user":
        issuer = Beneficiary("user", packet.issuer_user_id)
    return {"issuer": issuer, "consumer": Beneficiary("user", consumer.id), "inviter": inviter}


def _evaluate(
    order, packet, campaign, version, budget_left, cash_room, now, deposit_left=None
) -> tuple[list[Decision], dict]:
    rules = rules_of(campaign, version)
    who = _who(order, packet, rules.referral_days, now)
    facts = OrderFacts(
        order_total_fen=order.total_fen,
        paid_fen=order.paid_fen,
        paid_at=now,
        has_issuer=who["issuer"] is not None,
        has_inviter=who["inviter"] is not None,
    )
    if not is_running(campaign, now) and not _still_awards(campaign, packet, now):
        return [
            Decision(r.role, 0, r.form, "campaign_not_running", ("the campaign was paused or had ended",))
            for r in rules.roles
        ], who
    if _sales_unreachable(campaign, order):
        return [
            Decision(r.role, 0, r.form, "campaign_funded_from_sales", (SALES_UNREACHABLE,)) for r in rules.roles
        ], who
    facts = with_lines(facts, rules, order)  # category rates read the lines, chosen forms the preferences
    forms = preferred_forms(who) if rules.offers_forms else None
    decisions = evaluate(
        rules, facts, budget_left_fen=budget_left, cash_room_fen=cash_room, deposit_left_fen=deposit_left, forms=forms
    )
    return [_explain_expired_referral(d, order, rules.referral_days) for d in decisions], who


SALES_UNREACHABLE = (
    "the campaign is paid from its merchant's sales by profit sharing, and this order was paid to the platform "
    "(FUND_FLOW=direct): there is no order money of the merchant's to share it from"
)


def _sales_unreachable(campaign: Campaign, order: Order) -> bool:
    """A campaign funded from its merchant's sales (activated in service-provider mode) on an order that is not a
    partner order (paid after the switch back to direct mode): it has no deposit and no frozen money to pay from."""
    return campaign.funded_from_sales and order.sub_mchid is None


def _still_awards(campaign: Campaign, packet: RedPacket | None, now: datetime) -> bool:
    """A campaign paused only because its deposit ran dry still awards the packets it issued before: their claims
    reserved the rebate in the deposit (the deposit's limit still applies to the award)."""
    return (
        campaign.status == CampaignStatus.PAUSED
        and campaign.paused_for_deposit
        and packet is not None
        and packet.campaign_id == campaign.id
        and not (campaign.ends_at and now >= campaign.ends_at)
    )


def _explain_expired_referral(decision: Decision, order: Order, referral_days: int | None) -> Decision:
    """An inviter whose earning period is over is not "no inviter": say which period ended."""
    consumer = db.session.get(User, order.user_id)
    if decision.role != "inviter" or decision.reason_code != "no_beneficiary" or consumer.inviter_id is None:
        return decision
    ended = _referral_ends(consumer, referral_days or 0)
    why = f"the referral period of {referral_days} days ended on {beijing(ended):%Y-%m-%d}"
    return Decision("inviter", 0, decision.form, "referral_period_over", (why,))


@dataclass
class _Unreserved:
    """Awards of a campaign that had no reservation (referral, attribution): committed at the end, conditionally.

    ``decide(budget_left)`` decides the campaign again within what is left (its rebates into the effects)."""

    campaign: Campaign
    decide: Callable[[int | None], list[Rebate]]
    rebates: list[Rebate]

    @property
    def awarded(self) -> int:
        return sum(r.original_fen for r in self.rebates)


def _run_rebates(
    order: Order,
    spent: list[tuple[RedPacket, int]],
    campaigns: dict[int, Campaign],
    now: datetime,
    deposits: DepositsLeft,
    effects: Effects,
    attributing: set[int],
) -> tuple[list[tuple[int, int, int, bool]], list[_Unreserved]]:
    """Decide and record every campaign's rebates. Returns the packet campaigns' settlements (campaign id,
    reserved, actual, limited) and the unreserved awards, both committed by the caller.

    A referral campaign that also attributes this order (``attributing``) leaves its issuer role to the
    attribution: one rebate per (order, campaign, role)."""
    cash_room = order.paid_fen
    settles, unreserved = [], []
    by_campaign: dict[int, list[tuple[RedPacket, int]]] = {}
    for packet, discount in spent:
        by_campaign.setdefault(packet.campaign_id, []).append((packet, discount))
    for campaign_id in sorted(campaigns):
        campaign, own = campaigns[campaign_id], by_campaign.get(campaign_id, [])
        if own:
            reserved, discount = sum(p.reserved_fen for p, _ in own), sum(d for _, d in own)
            # Unbudgeted: no limit. Budgeted: what the claims reserved beyond the discounts (never negative).
            budget_left = None if campaign.budget_limit_fen is None else reserved - discount
            if budget_left is not None and budget_left < 0:
                raise BudgetExhausted(f"packets of campaign {campaign_id} reserved less than their discount")
            first, version = own[0][0], own[0][0].rules_version
        elif rules_of(campaign).applies_to == "referral":
            budget_left, version, first = campaign.budget_available_fen, campaign.rules_version, None
        else:
            continue

        # A referral campaign never pays another campaign's packet issuer: it sees no packet.
        def decide(budget_left, campaign=campaign, first=first, version=version, room=cash_room):
            deposit_left = deposits.of(campaign)
            decisions, who = _evaluate(order, first, campaign, version, budget_left, room, now, deposit_left)
            if first is None and campaign.id in attributing:
                decisions = [d for d in decisions if d.role != "issuer"]
            packet_id = first.id if first else None
            rebates = record_decisions(order, campaign, version, packet_id, decisions, who, now, effects.money, effects)
            deposits.spend(campaign, sum(r.original_fen for r in rebates))
            paid_cash = {d.role for d in decisions if d.pays_cash}
            return rebates, sum(r.original_fen for r in rebates if r.role in paid_cash)

        rebates, paid_cash_fen = decide(budget_left)
        cash_room -= paid_cash_fen
        if own:
            awarded = sum(r.original_fen for r in rebates)
            settles.append((campaign_id, reserved, discount + awarded, campaign.budget_limit_fen is not None))
            for packet, _ in own:
                packet.reserved_fen = 0
        else:
            unreserved.append(_Unreserved(campaign, lambda left, d=decide: d(left)[0], rebates))
    return settles, unreserved


def _run_attribution(
    order: Order,
    packets: list[RedPacket],
    campaigns: dict[int, Campaign],
    now: datetime,
    deposits: DepositsLeft,
    effects: Effects,
    decided: list[_Unreserved],
) -> list[_Unreserved]:
    """The issuer of a packet that brought the customer earns on their later orders (the trial story).

    A referral campaign that also attributes was decided already (``decided``): this decision sees what is
    left after that one, so the two fit the budget together."""
    unreserved = []
    for packet in sorted(packets, key=lambda p: p.campaign_id):
        campaign = campaigns[packet.campaign_id]
        rules = rules_of(campaign, packet.rules_version)
        issuer_rule = rules.role("issuer")
        if issuer_rule is None:
            continue

        def decide(budget_left, campaign=campaign, packet=packet, issuer_rule=issuer_rule):
            facts = OrderFacts(order_total_fen=order.total_fen, paid_fen=order.paid_fen, paid_at=now, has_issuer=True)
            facts = with_lines(facts, RuleSet(roles=(issuer_rule,)), order)
            if _sales_unreachable(campaign, order):
                decisions = [
                    Decision("issuer", 0, issuer_rule.form, "campaign_funded_from_sales", (SALES_UNREACHABLE,))
                ]
            elif is_running(campaign, now):
                decisions = evaluate(
                    RuleSet(roles=(issuer_rule,)),
                    facts,
                    budget_left_fen=budget_left,
                    deposit_left_fen=deposits.of(campaign),
                )
            else:
                why = ("the campaign was paused",)
                decisions = [Decision("issuer", 0, issuer_rule.form, "campaign_not_running", why)]
            attributed = f"attributed to red packet {packet.id} used on {packet.used_at:%Y-%m-%d}"
            decisions = [replace(d, reasons=(attributed, *d.reasons)) for d in decisions]
            who = {"issuer": Beneficiary("merchant", packet.issuer_merchant_id)}
            rebates = record_decisions(
                order, campaign, packet.rules_version, packet.id, decisions, who, now, effects.money, effects
            )
            deposits.spend(campaign, sum(r.original_fen for r in rebates))
            return rebates

        unreserved.append(_Unreserved(campaign, decide, decide(_left(campaign, decided))))
    return unreserved


def _left(campaign: Campaign, decided: list[_Unreserved]) -> int | None:
    """The campaign's budget left as read, less what this payment's earlier decisions of it awarded."""
    available = campaign.budget_available_fen
    if available is None:
        return None
    return max(0, available - sum(u.awarded for u in decided if u.campaign.id == campaign.id))


MAX_REDECIDE = 5


def _settlements(settles: list[tuple[int, int, int, bool]]) -> dict[int, tuple[int, int]]:
    """The packet campaigns' settlements as ``budgets.commit_many`` takes them (reserved, actual)."""
    for campaign_id, reserved, actual, limited in settles:
        if limited and actual > reserved:
            raise ValueError(f"settling {actual} fen of campaign {campaign_id} against a reservation of {reserved}")
    return {campaign_id: (reserved, actual) for campaign_id, reserved, actual, _ in settles}


def _commit_unreserved(
    unreserved: list[_Unreserved], settles: dict[int, tuple[int, int]], deposits: DepositsLeft, effects: Effects
) -> None:
    """Commit the unreserved awards, and settle the spent packets' reservations (``settles``), with one
    conditional UPDATE. A campaign whose budget someone else took since it was read is read again and decided
    again within what is left (nothing of it is written yet), and committed again: never more than its limit.
    Decisions of one campaign share what is left.

    The order is paid whatever happens here (WeChat has the buyer's money): when the budgets still move after
    ``MAX_REDECIDE`` tries, the last decision is made with nothing left, so its awards are recorded as
    refused for the budget, with their reason, and nothing is committed."""
    pending = list(unreserved)
    with db.session.no_autoflush:  # its rebates are not written until every budget fits
        for attempt in range(MAX_REDECIDE + 1):
            failed = budgets.commit_many(_amounts(pending), settles)
            if not failed:
                return
            settles = {cid: s for cid, s in settles.items() if cid in failed}  # the others moved
            pending = [u for u in pending if u.campaign.id in failed]
            for u in pending:
                _forget(u, deposits, effects)
            for campaign_id in sorted(failed):
                db.session.execute(
                    select(Campaign).where(Campaign.id == campaign_id).execution_options(populate_existing=True)
                )
            gave_up = attempt >= MAX_REDECIDE - 1
            decided: list[_Unreserved] = []
            for u in pending:
                u.rebates = u.decide(0 if gave_up else _left(u.campaign, decided))
                decided.append(u)
    raise BudgetExhausted("a decision with no budget left still awarded something")  # cannot happen


def _amounts(unreserved: list[_Unreserved]) -> dict[int, int]:
    """What the unreserved awards take from each campaign's budget."""
    amounts: dict[int, int] = {}
    for u in unreserved:
        amounts[u.campaign.id] = amounts.get(u.campaign.id, 0) + u.awarded
    return amounts


def _triggers(order: Order, campaigns: dict[int, Campaign], now: datetime) -> bool:
    """An order-paid trigger may issue a packet: its campaign row is taken after the budgets (the locking path)."""
    return any(_may_trigger(order, c, now) for c in campaigns.values())


def _forget(u: _Unreserved, deposits: DepositsLeft, effects: Effects) -> None:
    """Undo a campaign's decision before anything of it was written."""
    gone = {id(r) for r in u.rebates}
    effects.to_pay = [item for item in effects.to_pay if id(item[0]) not in gone]
    effects.rebates = [rebate for rebate in effects.rebates if id(rebate) not in gone]
    effects.reviewed = [rebate for rebate in effects.reviewed if id(rebate) not in gone]
    if deposits.of(u.campaign) is not None:
        deposits.left[u.campaign.funder_merchant_id] += u.awarded


def _may_trigger(order: Order, campaign: Campaign, now: datetime) -> bool:
    """The campaign issues a packet when this order is paid (but for a first-order-only trigger's question)."""
    trigger = campaign.issue_trigger
    if trigger.kind != TriggerKind.ORDER_PAID or not campaign.packet_amount_fen or not is_running(campaign, now):
        return False
    if not serves(campaign, order.merchant_id) or order.total_fen < trigger.min_order_fen:
        return False
    return campaign.packet_merchant_id is None or campaign.packet_merchant_id == order.merchant_id


def _issue_triggered_packets(
    order: Order, campaigns: dict[int, Campaign], now: datetime, blocked: set[int] = frozenset()
) -> list[RedPacket]:
    """Packets of order-paid triggers (returned: the buyer is told of each). A campaign whose risk rules blocked
    the order issues none (the order earns nothing from it); one that sent it to review still issues (a packet
    is only spendable value on a later order, which is scored in its turn, and a reviewer who revokes revokes
    the person's unused packets)."""
    issued: list[RedPacket] = []
    buyer = db.session.get(User, order.user_id)
    if not buyer.is_active:  # banned after ordering: the payment stands, no new packet
        return issued
    first_order = None  # asked only when a campaign cares
    for campaign in campaigns.values():
        if campaign.id in blocked or not _may_trigger(order, campaign, now):
            continue
        if campaign.issue_trigger.first_order_only:
            first_order = _is_first_paid_order(order.user_id) if first_order is None else first_order
            if not first_order:
                continue
        try:
            with db.session.begin_nested():
                packet = issue_packet(
                    campaign,
                    buyer,
                    source=TriggerKind.ORDER_PAID,
                    source_ref=order.out_trade_no,
                    now=now,
                )
            issued.append(packet)
        except DepositExhausted:
            pause_refused(campaign.id)
        except BudgetExhausted:
            raise_alert(
                "budget_exhausted",
                f"campaign {campaign.id}",
                f"no packet issued for order {order.out_trade_no}: budget exhausted",
            )
        except (StateConflict, Invalid) as refused:
            # paused, ended or banned since it was read, or the buyer outside its regions, its days or its packets'
            # validity: no packet, the payment stands (as every other trigger, ``rebate.triggers._issue_one``); a
            # refusal of the campaign itself (its rules, its kind) is an operator's to see
            if refused.code not in NOT_THIS_BUYERS:
                alert_once(
                    "order_paid_packet_refused",
                    f"campaign {campaign.id}",
                    text=f"no packet issued for order {order.out_trade_no}: {refused.code}: {refused}",
                )
    return issued


# Why an order-paid packet is not this buyer's now (nothing wrong with the campaign): no alert.
NOT_THIS_BUYERS = frozenset(
    {"campaign_not_running", "outside_region", "wrong_channel", "outside_window", "packet_validity_over"}
)


def _is_first_paid_order(user_id: int) -> bool:
    """This payment (already marked paid) is the buyer's only paid order."""
    paid = select(Order.id).where(Order.user_id == user_id, Order.status.in_([OrderStatus.PAID, OrderStatus.REFUNDED]))
    return len(db.session.execute(paid.limit(2)).all()) == 1


# --- risk: the score, each campaign's verdict, who earns nothing -------------------------------------------------

STRICTNESS = {"allow": 0, "review": 1, "block": 2}


@dataclass
class _Risk:
    """The payment's risk verdict: the score, each campaign's verdict, the beneficiaries refused and why."""

    score: scoring.Score
    verdicts: dict[int, Verdict]
    platform: Verdict
    refused: dict[tuple[str, int], str]
    issuer: tuple[str, int] | None  # the spent packet's issuer (user or merchant), for the triangle pair

    @property
    def decision(self) -> str:
        """The strictest campaign verdict (block > review > allow); the platform's when no campaign applies."""
        actions = [v.action for v in self.verdicts.values()] or [self.platform.action]
        return max(actions, key=STRICTNESS.__getitem__)

    @property
    def held_or_blocked(self) -> dict[int, str]:
        return {cid: v.action for cid, v in self.verdicts.items() if v.action != "allow"}

    @property
    def blocked(self) -> set[int]:
        return {cid for cid, v in self.verdicts.items() if v.action == "block"}

    @property
    def record(self) -> dict:
        """What the order keeps (``orders.risk``): the operator's trace reads it; the person never sees it."""
        score = self.score.score
        return {
            "score": score,
            "decision": self.decision,
            "features": self.score.contributions,
            "values": self.score.values,
            "campaigns": {
                str(cid): {**v.to_json(), "says": verdict_words(v, score)} for cid, v in self.verdicts.items()
            },
            "rules": {**self.platform.to_json(), "says": verdict_words(self.platform, score)},
            "refused": [{"beneficiary": f"{t} #{i}", "words": words} for (t, i), words in self.refused.items()],
        }


def verdict_words(verdict: Verdict, score: int) -> str:
    """``blocked by rule block_very_high_score (block when score >= 90): score 93``."""
    if verdict.rule is None:
        return f"allowed: no rule matched (score {score})"
    done = {"allow": "allowed", "block": "blocked", "review": "sent to review"}[verdict.action]
    return f"{done} by {verdict.words}: score {score}"


def _first_packet(order: Order, spent: list[tuple[RedPacket, int]]) -> RedPacket | None:
    """The order's packet (``orders.packet_id``, the first of a stack) among those spent."""
    return next((p for p, _ in spent if p.id == order.packet_id), spent[0][0] if spent else None)


def _issuer(packet: RedPacket | None) -> tuple[str, int] | None:
    if packet is None:
        return None
    if packet.issuer_type == "merchant" and packet.issuer_merchant_id is not None:
        return "merchant", packet.issuer_merchant_id
    if packet.issuer_type == "user" and packet.issuer_user_id is not None:
        return "user", packet.issuer_user_id
    return None


def _threshold(packet: RedPacket, total_fen: int) -> int:
    """The minimum spend the order cleared: the packet's, or the highest tier at or below the total."""
    tiers = [t["min_spend_fen"] for t in packet.tiers or [] if t.get("min_spend_fen", 0) <= total_fen]
    return max([packet.min_spend_fen or 0, *tiers])


def _score(
    order: Order,
    loaded: _Loaded,
    spent: list[tuple[RedPacket, int]],
    attributed: list[RedPacket],
    campaigns: dict[int, Campaign],
    paid_at: datetime,
    now: datetime,
) -> _Risk:
    """Score the order (one statement, which also asks whether any beneficiary's subject is banned), decide
    each campaign with its rules (held in memory, ``risk.rules.rules_for``) and find who earns nothing."""
    buyer = loaded.buyer
    first = _first_packet(order, spent)
    issuer = _issuer(first)
    issuers = {i for i in (_issuer(p) for p in [*(p for p, _ in spent), *attributed]) if i is not None}
    pairs = subjects(user_id=buyer.id, device=order.device, ip=order.ip)
    if buyer.inviter_id is not None:
        pairs += subjects(user_id=buyer.inviter_id)
    for kind, who in sorted(issuers):
        pairs += subjects(user_id=who) if kind == "user" else subjects(merchant_id=who)
    facts = scoring.OrderFacts(
        user_id=buyer.id,
        merchant_id=order.merchant_id,
        total_fen=order.total_fen,
        paid_at=paid_at,
        device=order.device,
        net=net_of(order.ip),
        packet=None
        if first is None
        else scoring.PacketFacts(
            issuer_type=first.issuer_type,
            issuer_id=issuer[1] if issuer else None,
            claimed_at=first.claimed_at,
            min_spend_fen=_threshold(first, order.total_fen),
        ),
        bans=pairs,
        ban_at=now,
    )
    scored = scoring.score_order(facts)
    refused = _refusals(buyer.id, issuers, issuer, scored, pairs, now)
    rules = rules_for(list(campaigns))
    values = {**scored.values, "score": scored.score}
    verdicts = {cid: decide(rules[cid], values) for cid in campaigns}
    return _Risk(scored, verdicts, decide(rules[None], values), refused, issuer)


def _refusals(
    buyer_id: int,
    issuers: set[tuple[str, int]],
    first_issuer: tuple[str, int] | None,
    scored: scoring.Score,
    pairs: list[tuple[str, str]],
    now: datetime,
) -> dict[tuple[str, int], str]:
    """Beneficiaries who earn nothing, with the words why: a suspended merchant issuer, and every active ban on
    a person, a merchant, or the order's device or network (the consumer's). The bans are read only when the
    scoring read saw one (``scored.any_ban``)."""
    refused: dict[tuple[str, int], str] = {}
    for kind, merchant_id in sorted(issuers):
        if kind != "merchant":
            continue
        if (kind, merchant_id) == first_issuer:
            status = scored.issuer_merchant_status
        else:  # another packet's or an attributing packet's issuer: the rare path, by primary key
            status = db.session.get(Merchant, merchant_id).status
        if status == "suspended":
            refused[("merchant", merchant_id)] = f"merchant {merchant_id} is suspended"
    if scored.any_ban:
        for key, words in refused_by(active_bans(pairs, now), buyer_id).items():
            refused.setdefault(key, words)
    return refused


def _open_case(order: Order, risk: _Risk, effects: Effects, now: datetime) -> None:
    """One review case for an order whose rebates are held for review (none when nothing is held)."""
    held = sum(r.held_fen for r in effects.reviewed)
    if not held:
        return
    score = risk.score.score
    reasons = [
        f"campaign #{cid}: {verdict_words(v, score)}" for cid, v in risk.verdicts.items() if v.action == "review"
    ]
    reasons += [c["words"] for c in risk.score.contributions]
    open_order_case(order.id, order.user_id, order.merchant_id, held, score, reasons, now)


def _note_profile(
    order: Order, spent: list[tuple[RedPacket, int]], risk: _Risk, effects: Effects, at: datetime
) -> None:
    """The buyer's profile and the triangle pair, after every campaign row the payment took (the refund's order)."""
    rebated = any(r.original_fen > 0 for r in effects.written)
    night = bool(risk.score.values.get("night_order"))
    note_paid_order(order.user_id, at, packet=bool(spent), rebated=rebated, night=night)
    if risk.issuer is not None:
        note_pair(risk.issuer[0], risk.issuer[1], order.user_id, order.merchant_id, at)
