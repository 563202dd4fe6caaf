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

from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select

from ledger import Leg, account, post_entry
from models import (
    AccountKind,
    Campaign,
    CampaignStatus,
    FunderType,
    LedgerAccount,
    Order,
    OrderStatus,
    PacketStatus,
    RedPacket,
    User,
    db,
    raise_alert,
)
from models.base import beijing
from models.triggers import TriggerKind
from payouts import MoneySettings
from rebate import budgets
from rebate.awards import Beneficiary, record_decisions
from rebate.campaigns import funder_account, is_running, rules_of, serves
from rebate.deposits import DepositsLeft, lock_deposits, pause_refused
from rebate.errors import BudgetExhausted, DepositExhausted
from rebate.intake import (
    PayAccount,
    PaymentOutcome,
    PaymentTransaction,
    flag_order,
    notification_seen,
    record_notification,
)
from rebate.orders import lock_order, order_packets
from rebate.packets import issue_packet
from rebate.rules import Decision, OrderFacts, RuleSet, evaluate


def apply_payment(
    tx: PaymentTransaction,
    expected: PayAccount,
    now: datetime,
    notification_id: str | None = None,
    *,
    money: MoneySettings,
) -> PaymentOutcome:
    """Apply what WeChat says was paid (a notification or a query answer); flushes only.

    Under the order's row lock: a notification id already recorded is a duplicate (a concurrent
    delivery waits here, then sees it); a transaction that is not paid changes nothing; mchid,
    appid and amount are compared with ours and the order's, here and nowhere else, and any
    disagreement flags the order and alerts an operator (once) and moves nothing. The
    notification id is recorded with every accepted outcome, so a repeat is answered at once.
    """
    order = lock_order(tx.out_trade_no)
    if order is None:
        return PaymentOutcome.NOT_OURS
    if notification_id and notification_seen(notification_id):
        return PaymentOutcome.DUPLICATE_NOTIFICATION
    if not tx.paid:
        return PaymentOutcome.NOT_PAID
    problems = disagreements(tx, expected, order)
    if problems:
        flag_order(order, "payment_mismatch", "; ".join(problems))
        return PaymentOutcome.MISMATCH_FLAGGED
    outcome = _apply_locked(order, tx, tx.success_time or now, money)
    record_notification(notification_id, order.out_trade_no, outcome)
    db.session.flush()
    return outcome


def disagreements(tx: PaymentTransaction, expected: PayAccount, order: Order) -> list[str]:
    """Every way a paid transaction disagrees with our account and the order (empty: it agrees)."""
    problems = []
    if tx.mchid != expected.mchid:
        problems.append(f"mchid {tx.mchid!r} is not ours")
    if tx.appid != expected.appid:
        problems.append(f"appid {tx.appid!r} is not ours")
    if tx.amount.total_fen != order.payable_fen:
        problems.append(f"WeChat says {tx.amount.total_fen} fen was paid; the order asks {order.payable_fen}")
    return problems


def _apply_locked(order: Order, tx: PaymentTransaction, paid_at: datetime, money: MoneySettings) -> PaymentOutcome:
    if order.status in (OrderStatus.PAID, OrderStatus.REFUNDED):
        if order.transaction_id != tx.transaction_id:
            flag_order(
                order, "second_payment", f"a second transaction {tx.transaction_id} paid order {order.out_trade_no}"
            )
        return PaymentOutcome.ALREADY_APPLIED
    if order.status == OrderStatus.CLOSED:
        flag_order(order, "paid_after_close", f"order {order.out_trade_no} was paid after it was closed; refund it")
        return PaymentOutcome.PAID_AFTER_CLOSE
    total, payer_total = tx.amount.total_fen, tx.amount.payer_total_fen
    order.status, order.transaction_id, order.paid_at = OrderStatus.PAID, tx.transaction_id, paid_at
    order.paid_fen = total if payer_total is None else min(payer_total, total)
    spent = _use_packets(order, paid_at)
    attributed = _attributing_packets(order, spent, paid_at)
    campaigns = _lock_campaigns(order, spent, attributed)
    lock_deposits(list(campaigns.values()))
    _post_sale(order, spent, campaigns)
    deposits = DepositsLeft(_reserved_by_funder(spent, campaigns))  # read after the sale: discounts came out first
    _run_rebates(order, spent, campaigns, paid_at, deposits, money)
    _run_attribution(order, attributed, campaigns, paid_at, deposits, money)
    _issue_triggered_packets(order, campaigns, paid_at)
    return PaymentOutcome.APPLIED


def _use_packets(order: Order, now: datetime) -> list[tuple[RedPacket, int]]:
    """The order's packets (with their discounts), marked used."""
    spent = order_packets(order)
    for packet, _ in spent:
        packet.status, packet.used_at, packet.order_id = PacketStatus.USED, now, order.id
    return spent


def _reserved_by_funder(spent: list[tuple[RedPacket, int]], campaigns: dict[int, Campaign]) -> dict[int, int]:
    """What the packets spent on this order reserved against each funding merchant's deposit."""
    reserved: dict[int, int] = {}
    for packet, _ in spent:
        campaign = campaigns[packet.campaign_id]
        if campaign.funder_type == FunderType.MERCHANT_DEPOSIT:
            merchant_id = campaign.funder_merchant_id
            reserved[merchant_id] = reserved.get(merchant_id, 0) + packet.reserved_fen
    return reserved


def _relevant(campaign: Campaign, order: Order, has_inviter: bool) -> bool:
    if not serves(campaign, order.merchant_id):  # a merchant's campaign never pays on another's order
        return False
    trigger = campaign.issue_trigger
    if trigger.kind == TriggerKind.ORDER_PAID:
        return order.total_fen >= trigger.min_order_fen
    return has_inviter and rules_of(campaign).applies_to == "referral"


def _attributing_packets(order: Order, spent: list[tuple[RedPacket, int]], now: datetime) -> list[RedPacket]:
    """Packets this buyer spent earlier whose campaign attributes later orders at this merchant to them."""
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
        days = rules_of(db.session.get(Campaign, p.campaign_id), p.rules_version).attribution_days
        if days and now < p.used_at + timedelta(days=days):
            found[p.campaign_id] = p
    return list(found.values())


def _lock_campaigns(
    order: Order, spent: list[tuple[RedPacket, int]], attributed: list[RedPacket]
) -> dict[int, Campaign]:
    """The campaigns this payment touches, row-locked in ascending id order (no deadlocks)."""
    has_inviter = db.session.get(User, order.user_id).inviter_id is not None
    active = db.session.execute(select(Campaign).where(Campaign.status == CampaignStatus.ACTIVE)).scalars()
    ids = {c.id for c in active if _relevant(c, order, has_inviter)} | {p.campaign_id for p in attributed}
    ids |= {packet.campaign_id for packet, _ in spent}
    rows = (
        db.session.execute(
            select(Campaign)
            .where(Campaign.id.in_(sorted(ids)))
            .order_by(Campaign.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        .scalars()
        .all()
    )
    return {c.id: c for c in rows}


def _post_sale(order: Order, spent: list[tuple[RedPacket, int]], campaigns: dict[int, Campaign]) -> None:
    """The buyer's payment and each packet's funder together pay the merchant the order total."""
    funded: dict[str, tuple[LedgerAccount, int]] = {}
    for packet, discount in spent:
        funder = funder_account(campaigns[packet.campaign_id])
        funded[funder.code] = (funder, funded.get(funder.code, (funder, 0))[1] + discount)
    legs = [
        Leg(account(AccountKind.WECHAT_SETTLEMENT), -order.payable_fen),
        Leg(account(AccountKind.MERCHANT_PAYABLE, "merchant", order.merchant_id), order.total_fen),
        *(Leg(funder, -amount) for funder, amount in funded.values()),
    ]
    post_entry(f"order:{order.id}:sale", f"sale {order.out_trade_no}", legs)


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
    if not is_running(campaign, now):
        return [
            Decision(r.role, 0, r.form, "campaign_not_running", ("the campaign was paused or had ended",))
            for r in rules.roles
        ], who
    decisions = evaluate(
        rules, facts, budget_left_fen=budget_left, cash_room_fen=cash_room, deposit_left_fen=deposit_left
    )
    return [_explain_expired_referral(d, order, rules.referral_days) for d in decisions], who


def _explain_expired_referral(decision: Decision, order: Order, referral_days: int | None) -> Decision:
    """An inviter whose earning period is over is not "no inviter": say which period ended."""
    consumer = db.session.get(User, order.user_id)
    if decision.role != "inviter" or decision.reason_code != "no_beneficiary" or consumer.inviter_id is None:
        return decision
    ended = _referral_ends(consumer, referral_days or 0)
    why = f"the referral period of {referral_days} days ended on {beijing(ended):%Y-%m-%d}"
    return Decision("inviter", 0, decision.form, "referral_period_over", (why,))


def _run_rebates(
    order: Order,
    spent: list[tuple[RedPacket, int]],
    campaigns: dict[int, Campaign],
    now: datetime,
    deposits: DepositsLeft,
    money: MoneySettings,
) -> None:
    cash_room = order.paid_fen
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
        deposit_left = deposits.of(campaign)
        decisions, who = _evaluate(order, first, campaign, version, budget_left, cash_room, now, deposit_left)
        packet_id = first.id if first else None
        rebates = record_decisions(order, campaign, version, packet_id, decisions, who, now, money)
        awarded = sum(r.original_fen for r in rebates)
        deposits.spend(campaign, awarded)
        paid_cash = {d.role for d in decisions if d.pays_cash}
        cash_room -= sum(r.original_fen for r in rebates if r.role in paid_cash)
        if own:
            limited = campaign.budget_limit_fen is not None
            budgets.settle(campaign_id, reserved, discount + awarded, limited=limited)
            for packet, _ in own:
                packet.reserved_fen = 0
        elif not budgets.commit(campaign_id, awarded):
            raise BudgetExhausted("budget moved under a locked campaign")  # cannot happen under the row lock


def _run_attribution(
    order: Order,
    packets: list[RedPacket],
    campaigns: dict[int, Campaign],
    now: datetime,
    deposits: DepositsLeft,
    money: MoneySettings,
) -> None:
    """The issuer of a packet that brought the customer earns on their later orders (the trial story)."""
    for packet in sorted(packets, key=lambda p: p.campaign_id):
        campaign = campaigns[packet.campaign_id]
        rules = rules_of(campaign, packet.rules_version)
        issuer_rule = rules.role("issuer")
        if issuer_rule is None:
            continue
        facts = OrderFacts(order_total_fen=order.total_fen, paid_fen=order.paid_fen, paid_at=now, has_issuer=True)
        if is_running(campaign, now):
            decisions = evaluate(
                RuleSet(roles=(issuer_rule,)),
                facts,
                budget_left_fen=campaign.budget_available_fen,
                deposit_left_fen=deposits.of(campaign),
            )
        else:
            decisions = [Decision("issuer", 0, issuer_rule.form, "campaign_not_running", ("the campaign was paused",))]
        attributed = f"attributed to red packet {packet.id} used on {packet.used_at:%Y-%m-%d}"
        decisions = [replace(d, reasons=(attributed, *d.reasons)) for d in decisions]
        who = {"issuer": Beneficiary("merchant", packet.issuer_merchant_id)}
        rebates = record_decisions(order, campaign, packet.rules_version, packet.id, decisions, who, now, money)
        deposits.spend(campaign, sum(r.original_fen for r in rebates))
        if not budgets.commit(campaign.id, sum(r.original_fen for r in rebates)):
            raise BudgetExhausted("budget moved under a locked campaign")


def _issue_triggered_packets(order: Order, campaigns: dict[int, Campaign], now: datetime) -> None:
    buyer = db.session.get(User, order.user_id)
    if not buyer.is_active:  # banned after ordering: the payment stands, no new packet
        return
    first_order = None  # asked only when a campaign cares
    for campaign in campaigns.values():
        trigger = campaign.issue_trigger
        if trigger.kind != TriggerKind.ORDER_PAID or not campaign.packet_amount_fen or not is_running(campaign, now):
            continue
        if not serves(campaign, order.merchant_id):
            continue
        if order.total_fen < trigger.min_order_fen:
            continue
        if campaign.packet_merchant_id is not None and campaign.packet_merchant_id != order.merchant_id:
            continue
        if trigger.first_order_only:
            first_order = _is_first_paid_order(order.user_id) if first_order is None else first_order
            if not first_order:
                continue
        try:
            with db.session.begin_nested():
                issue_packet(
                    campaign,
                    buyer,
                    source=TriggerKind.ORDER_PAID,
                    source_ref=order.out_trade_no,
                    now=now,
                )
        except DepositExhausted:
            pause_refused(campaign.id)
        except BudgetExhausted:
            raise_alert(
                "budget_exhausted",
                f"campaign {campaign.id}",
                f"no packet issued for order {order.out_trade_no}: budget exhausted",
            )


def _is_first_paid_order(user_id: int) -> bool:
    """This payment (already marked paid) is the buyer's only paid order."""
    paid = select(Order.id).where(Order.user_id == user_id, Order.status.in_([OrderStatus.PAID, OrderStatus.REFUNDED]))
    return len(db.session.execute(paid.limit(2)).all()) == 1
