"""Turning decisions into rebates: one ``Rebate`` row per role, the ledger entry, the payout.

Cash forms credit the beneficiary's cash balance first; a WeChat rail then
pays out what the balance holds after any receivable is netted. Points live in
the points ledger; coupon and card rebates are costed at face value. Money a
beneficiary owes back (a receivable) is recovered from their next rebate of
the same kind, and the recovered amount returns to the budget it came from.
What a point costs, the payout minimum and the number prefix come in as
``MoneySettings`` from the operation the shell called.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import select

from ledger import Leg, account, balance, post_entry
from models import AccountKind, Campaign, Order, Rebate, RebateStatus, Receivable, User, db
from models.payouts import Rail
from payouts import MoneySettings, enqueue_payout
from rebate import budgets
from rebate.campaigns import funder_account, rules_of
from rebate.rules import Decision, Form

RAIL_OF_FORM = {
    Form.WECHAT_CHANGE: Rail.WECHAT_CHANGE,
    Form.CASH_RED_PACKET: Rail.CASH_RED_PACKET,
    Form.WECHAT_COUPON: Rail.WECHAT_COUPON,
    Form.CARD_COUPON: Rail.CARD_COUPON,
}
KIND_OF_FORM = {
    Form.BALANCE: "cash",
    Form.WECHAT_CHANGE: "cash",
    Form.CASH_RED_PACKET: "cash",
    Form.POINTS: "points",
    Form.MERCHANT_CREDIT: "credit",
    Form.WECHAT_COUPON: "coupon",
    Form.CARD_COUPON: "coupon",
}


@dataclass(frozen=True)
class Beneficiary:
    type: str  # user | merchant
    id: int


def record_decisions(
    order: Order,
    campaign: Campaign,
    version: int,
    packet_id: int | None,
    decisions: list[Decision],
    who: dict[str, Beneficiary | None],
    now: datetime,
    money: MoneySettings,
) -> list[Rebate]:
    rebates = []
    for decision in decisions:
        beneficiary = who.get(decision.role)
        if beneficiary is not None and decision.amount_fen > 0 and _banned(beneficiary):
            decision = _refused_as_banned(decision)
        awarded = decision.amount_fen > 0 and beneficiary is not None
        held = awarded and decision.condition is not None
        form = Form.MERCHANT_CREDIT if beneficiary and beneficiary.type == "merchant" else decision.form
        status = RebateStatus.HELD if held else RebateStatus.AWARDED if awarded else RebateStatus.SKIPPED
        rebate = Rebate(
            order_id=order.id,
            campaign_id=campaign.id,
            rules_version=version,
            packet_id=packet_id,
            role=decision.role,
            beneficiary_type=beneficiary.type if beneficiary else None,
            beneficiary_id=beneficiary.id if beneficiary else None,
            form=form,
            status=status,
            original_fen=decision.amount_fen if awarded else 0,
            amount_fen=decision.amount_fen if awarded and not held else 0,
            held_fen=decision.amount_fen if held else 0,
            condition_deadline=now + timedelta(days=decision.condition.window_days) if held else None,
            reason_code=decision.reason_code if beneficiary or not decision.amount_fen else "no_beneficiary",
            reasons=list(decision.reasons),
        )
        db.session.add(rebate)
        db.session.flush()
        if awarded and not held:
            pay_rebate(rebate, campaign, order, rebate.amount_fen, f"rebate:{rebate.id}", money)
        rebates.append(rebate)
    return rebates


def _banned(beneficiary: Beneficiary) -> bool:
    if beneficiary.type != "user":
        return False
    user = db.session.get(User, beneficiary.id)
    return user is not None and not user.is_active


def _refused_as_banned(decision: Decision) -> Decision:
    """A banned person earns nothing, as consumer, issuer or inviter; the trace says so."""
    why = f"the {decision.role} is banned and earns nothing (would have been {decision.amount_fen} fen)"
    return replace(decision, amount_fen=0, reason_code="beneficiary_banned", reasons=(*decision.reasons, why))


def beneficiary_account(rebate: Rebate):
    kind = KIND_OF_FORM[rebate.form]
    if kind == "credit":
        return account(AccountKind.MERCHANT_MARKETING_CREDIT, "merchant", rebate.beneficiary_id)
    if kind == "points":
        return account(AccountKind.USER_POINTS, "user", rebate.beneficiary_id)
    return account(AccountKind.USER_CASH, "user", rebate.beneficiary_id)


def pay_rebate(
    rebate: Rebate, campaign: Campaign, order: Order, amount_fen: int, key: str, money: MoneySettings
) -> None:
    """Move ``amount_fen`` of a rebate to its beneficiary (one ledger key per release)."""
    kind = KIND_OF_FORM[rebate.form]
    memo = f"{rebate.role} rebate on order {order.out_trade_no}"
    if kind == "points":
        points = amount_fen // money.point_value_fen
        rebate.points += points
        if points:
            post_entry(
                key,
                memo,
                [Leg(account(AccountKind.POINTS_ISSUANCE), -points), Leg(beneficiary_account(rebate), points)],
            )
    elif kind == "coupon":
        enqueue_payout(
            rail=RAIL_OF_FORM[rebate.form],
            user_id=rebate.beneficiary_id,
            amount_fen=amount_fen,
            source=funder_account(campaign),
            key=key,
            memo=memo,
            number_prefix=money.number_prefix,
            rebate_id=rebate.id,
            order_id=order.id,
            fallback_rail=_fallback(rebate, campaign),
        )
        return
    else:
        post_entry(
            key, memo, [Leg(funder_account(campaign), -amount_fen), Leg(beneficiary_account(rebate), amount_fen)]
        )
    recover_receivables(rebate.beneficiary_type, rebate.beneficiary_id, kind, amount_fen)
    if rebate.form in (Form.WECHAT_CHANGE, Form.CASH_RED_PACKET):
        _queue_cash_payout(rebate, order, amount_fen, key, memo, money)


def _queue_cash_payout(
    rebate: Rebate, order: Order, amount_fen: int, key: str, memo: str, money: MoneySettings
) -> None:
    cash = beneficiary_account(rebate)
    payable = min(amount_fen, max(0, balance(cash)))  # a negative balance (receivable) nets first
    minimum = money.payout_min_fen
    if 0 < payable < minimum:  # too small to send alone: it waits in the balance for a withdrawal
        rebate.reasons = [*rebate.reasons, f"{payable} fen kept in your balance (payouts start at {minimum} fen)"]
    elif payable > 0:
        enqueue_payout(
            rail=RAIL_OF_FORM[rebate.form],
            user_id=rebate.beneficiary_id,
            amount_fen=payable,
            source=cash,
            key=key,
            memo=memo,
            number_prefix=money.number_prefix,
            rebate_id=rebate.id,
            order_id=order.id,
            fallback_rail=_fallback(rebate, db.session.get(Campaign, rebate.campaign_id)),
        )


def _fallback(rebate: Rebate, campaign: Campaign) -> str | None:
    """The rule's fallback form, fixed on the payout: where the money goes when the rail refuses."""
    rule = rules_of(campaign, rebate.rules_version).role(rebate.role)
    form = rule.fallback_form if rule else None
    return RAIL_OF_FORM.get(form, form if form in (Form.BALANCE, Form.POINTS) else None) if form else None


def recover_receivables(beneficiary_type: str, beneficiary_id: int, kind: str, amount_fen: int) -> int:
    """Net a new rebate against what the beneficiary owes, oldest first; budgets get it back."""
    left = amount_fen
    owed = (
        db.session.execute(
            select(Receivable)
            .where(
                Receivable.beneficiary_type == beneficiary_type,
                Receivable.beneficiary_id == beneficiary_id,
                Receivable.kind == kind,
                Receivable.outstanding_fen > 0,
            )
            .order_by(Receivable.id)
            .with_for_update()
        )
        .scalars()
        .all()
    )
    for receivable in owed:
        if left == 0:
            break
        take = min(left, receivable.outstanding_fen)
        receivable.outstanding_fen -= take
        budgets.release_committed(receivable.campaign_id, take)
        left -= take
    db.session.flush()
    return amount_fen - left
