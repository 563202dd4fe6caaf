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

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import make_transient_to_detached

from ledger import Batch, Leg, account, account_ids, balance, ref
from models import (
    AccountKind,
    AdjustmentKind,
    Campaign,
    Order,
    Payout,
    PayoutStatus,
    Rebate,
    RebateAdjustment,
    RebateStatus,
    Receivable,
    User,
    db,
    utcnow,
)
from models.payouts import Rail
from models.rebates import SHARE_DEBT
from models.sql import insert_ignoring
from money import format_yuan
from notices import Draft
from payouts import MoneySettings
from payouts.outbox import PayoutRequest, enqueue_payouts
from rebate import budgets, tell
from rebate.campaigns import funder_ref, rules_of
from rebate.rules import SHAREABLE_FORMS, Decision, Form, Line, OrderFacts, RuleSet

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


def with_lines(facts: OrderFacts, rules: RuleSet, order: Order) -> OrderFacts:
    """``facts`` with the order's lines (category, value) when ``rules`` rate by category (else as they are:
    no query)."""
    if not rules.by_category or facts.lines:
        return facts
    return replace(facts, lines=tuple(Line(li.category, li.line_total_fen) for li in order.lines))


@dataclass(frozen=True)
class Beneficiary:
    type: str  # user | merchant
    id: int


@dataclass
class Effects:
    """What one payment (or one release) moves, written together at the end (``write``).

    ``clean``: beneficiaries known to owe nothing back (no outstanding receivable), read with the
    order; anyone else's receivables are looked up (and netted) one by one, the rare path.
    ``refused``: beneficiaries who earn nothing on this payment, with the words why (a ban on the person,
    the order's device or network, the merchant; a suspended merchant), found by the payment in one statement.
    ``risk``: the risk verdict of each campaign that is not allowed (``"block"`` or ``"review"``): a blocked
    campaign's awards are refused (``risk_blocked``), a reviewed one's are held (status ``review``, nothing
    paid or queued, the budget committed) and listed in ``reviewed``.
    """

    money: MoneySettings
    clean: set[tuple[str, int]] = field(default_factory=set)
    refused: dict[tuple[str, int], str] = field(default_factory=dict)
    risk: dict[int, str] = field(default_factory=dict)
    reviewed: list[Rebate] = field(default_factory=list)
    written: list[Rebate] = field(default_factory=list)  # every rebate ``write`` inserted
    batch: Batch = field(default_factory=Batch)
    rebates: list[Rebate] = field(default_factory=list)  # decided, not yet written
    to_pay: list[tuple[Rebate, Campaign, Order]] = field(default_factory=list)
    payouts: list[PayoutRequest] = field(default_factory=list)
    notices: list[Draft] = field(default_factory=list)  # what the people are told, written by ``tell``

    def tell(self) -> None:
        """Write the notices collected (money landed in the app, rebates held for review): one statement, none
        when there is nothing to tell. A payment calls it once, last, with its packets' notices added."""
        tell.tell([*self.notices, *map(tell.held, self.reviewed)])
        self.notices = []

    def write(self) -> None:
        """Flush the rebates, queue their payouts, post every entry: a few statements, whatever the count."""
        _insert_rebates(self.rebates)  # in one INSERT: their ids name their ledger keys
        self.written += self.rebates
        self.rebates = []
        if self.to_pay:
            for rebate, campaign, order in self.to_pay:
                pay_rebate(rebate, campaign, order, rebate.amount_fen, f"rebate:{rebate.id}", self.money, self)
            self.to_pay = []
        names = [leg.account for item in self.batch.items.values() for leg in item.legs]
        names += [p.source for p in self.payouts]
        account_ids([*names, ref(AccountKind.REBATE_PAYABLE)] if self.payouts else names)  # all in one go
        enqueue_payouts(self.payouts, self.batch)
        self.payouts = []
        self.batch.post()


def record_decisions(
    order: Order,
    campaign: Campaign,
    version: int,
    packet_id: int | None,
    decisions: list[Decision],
    who: dict[str, Beneficiary | None],
    now: datetime,
    money: MoneySettings,
    effects: Effects | None = None,
) -> list[Rebate]:
    """One ``Rebate`` row per decision; the awarded ones are paid into ``effects`` (written by its ``write``).

    Without ``effects`` they are written at once."""
    own = effects is None
    effects = effects or Effects(money)
    rebates = []
    verdict = effects.risk.get(campaign.id)
    for decision in decisions:
        beneficiary = who.get(decision.role)
        if beneficiary is not None and decision.amount_fen > 0:
            refusal = effects.refused.get((beneficiary.type, beneficiary.id))
            if refusal is not None:
                decision = _refused_as_banned(decision, refusal)
            elif _banned(beneficiary):
                decision = _refused_as_banned(decision)
        if verdict == "block" and beneficiary is not None and decision.amount_fen > 0:
            decision = _refused_as_risky(decision)
        awarded = decision.amount_fen > 0 and beneficiary is not None
        review = awarded and verdict == "review"
        held = awarded and (decision.condition is not None or review)
        form = Form.MERCHANT_CREDIT if beneficiary and beneficiary.type == "merchant" else decision.form
        status = RebateStatus.HELD if held else RebateStatus.AWARDED if awarded else RebateStatus.SKIPPED
        if review:
            status = RebateStatus.REVIEW
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
            condition_deadline=(
                now + timedelta(days=decision.condition.window_days) if held and decision.condition else None
            ),
            points=0,
            reason_code=decision.reason_code if beneficiary or not decision.amount_fen else "no_beneficiary",
            reasons=list(decision.reasons),
        )
        effects.rebates.append(rebate)
        if review:
            effects.reviewed.append(rebate)
        if awarded and not held:
            if not shared_by_merchant(rebate, campaign):  # a shared rebate is never kept: all of it leaves by the share
                _note_kept_in_balance(rebate, effects)
            effects.to_pay.append((rebate, campaign, order))
        rebates.append(rebate)
    if own:
        effects.write()
        effects.tell()
    return rebates


def _insert_rebates(rebates: list[Rebate]) -> None:
    """Write new ``Rebate`` rows in one INSERT … RETURNING and attach them to the session as loaded rows.

    (The ORM's unit of work would send one INSERT per row on SQLite.)"""
    if not rebates:
        return
    db.session.flush()  # the order and packets they name first
    table = Rebate.__table__
    now = utcnow()
    for rebate in rebates:
        rebate.created_at = rebate.created_at or now
    columns = [c.key for c in table.columns if c.key != "id"]
    rows = [{c: getattr(rebate, c) for c in columns} for rebate in rebates]
    ids = {(o, c, r): i for o, c, r, i in insert_ignoring(table, rows, (), ("order_id", "campaign_id", "role", "id"))}
    for rebate in rebates:
        rebate.id = ids[rebate.order_id, rebate.campaign_id, rebate.role]
        make_transient_to_detached(rebate)
        db.session.add(rebate)


def _banned(beneficiary: Beneficiary) -> bool:
    if beneficiary.type != "user":
        return False
    user = db.session.get(User, beneficiary.id)  # the buyer and inviter are loaded with the order
    return user is not None and not user.is_active


def _refused_as_banned(decision: Decision, because: str | None = None) -> Decision:
    """A banned person earns nothing, as consumer, issuer or inviter. The rebate says so; which ban and why
    (``because``) is in the order's risk verdict (``orders.risk["refused"]``), which only the platform's
    operators read in the trace: the buyer must not learn of another person's ban."""
    why = f"the {decision.role} is banned and earns nothing (would have been {decision.amount_fen} fen)"
    if because:
        why = f"the {decision.role} earns nothing under a ban (would have been {decision.amount_fen} fen)"
    return replace(decision, amount_fen=0, reason_code="beneficiary_banned", reasons=(*decision.reasons, why))


def _refused_as_risky(decision: Decision) -> Decision:
    """The campaign's risk rules blocked the order: nothing is awarded and no budget taken. The rule and the
    score are in the order's risk verdict (the operator's trace), not in the rebate the person sees."""
    why = f"not awarded: the order did not pass the risk checks (would have been {decision.amount_fen} fen)"
    return replace(decision, amount_fen=0, reason_code="risk_blocked", reasons=(*decision.reasons, why))


def _note_kept_in_balance(rebate: Rebate, effects: Effects) -> None:
    """Said before the row is written: a cash rebate of someone who owes nothing pays out in full, or,
    below the payout minimum, stays in the balance (someone who owes is told when it is netted)."""
    minimum = effects.money.payout_min_fen
    cash = rebate.form in (Form.WECHAT_CHANGE, Form.CASH_RED_PACKET)
    if cash and _owes_nothing(rebate, effects) and 0 < rebate.amount_fen < minimum:
        rebate.reasons = [*rebate.reasons, _kept(rebate.amount_fen, minimum)]


def _kept(payable: int, minimum: int) -> str:
    return f"{payable} fen kept in your balance (payouts start at {minimum} fen)"


def _owes_nothing(rebate: Rebate, effects: Effects) -> bool:
    return (rebate.beneficiary_type, rebate.beneficiary_id) in effects.clean


def beneficiary_ref(rebate: Rebate):
    kind = KIND_OF_FORM[rebate.form]
    if kind == "credit":
        return ref(AccountKind.MERCHANT_MARKETING_CREDIT, "merchant", rebate.beneficiary_id)
    if kind == "points":
        return ref(AccountKind.USER_POINTS, "user", rebate.beneficiary_id)
    return ref(AccountKind.USER_CASH, "user", rebate.beneficiary_id)


def beneficiary_account(rebate: Rebate):
    r = beneficiary_ref(rebate)
    return account(r.kind, r.owner_type, r.owner_id)


def pay_rebate(
    rebate: Rebate,
    campaign: Campaign,
    order: Order,
    amount_fen: int,
    key: str,
    money: MoneySettings,
    effects: Effects | None = None,
) -> None:
    """Move ``amount_fen`` of a rebate to its beneficiary (one ledger key per release).

    ``rebate.amount_fen`` already counts ``amount_fen`` (every caller adds it first). Points are the whole points
    of all that was paid so far less the whole points of what was paid before it: a release in parts (milestones)
    loses no point to rounding each part down on its own (seven parts of 9.01 yuan at 10 fen a point had given 85
    points, not 90). Reckoned from fen, not from the points credited, which a clawback in proportion or a changed
    point value would have made a later part pay none.

    Into ``effects`` when given (the caller writes them); else written at once."""
    own = effects is None
    effects = effects or Effects(money)
    kind = KIND_OF_FORM[rebate.form]
    memo = f"{rebate.role} rebate on order {order.out_trade_no}"
    points = 0
    if kind == "points":
        value = money.point_value_fen
        points = max(0, rebate.amount_fen // value - (rebate.amount_fen - amount_fen) // value)
        rebate.points += points
        if points:
            effects.batch.add(
                key, memo, [Leg(ref(AccountKind.POINTS_ISSUANCE), -points), Leg(beneficiary_ref(rebate), points)]
            )
    elif kind == "coupon":
        effects.payouts.append(
            PayoutRequest(
                rail=RAIL_OF_FORM[rebate.form],
                user_id=rebate.beneficiary_id,
                amount_fen=amount_fen,
                source=funder_ref(campaign),
                key=key,
                memo=memo,
                number_prefix=money.number_prefix,
                rebate_id=rebate.id,
                order_id=order.id,
                extra={"fallback_rail": _fallback(rebate, campaign)},
            )
        )
    else:
        effects.batch.add(key, memo, [Leg(funder_ref(campaign), -amount_fen), Leg(beneficiary_ref(rebate), amount_fen)])
    if kind != "coupon":
        # shared from the merchant's order money (service-provider mode): all of it leaves by the share, however
        # small, and never nets what the person owes the platform (that would keep the merchant's money here)
        shared = shared_by_merchant(rebate, campaign)
        clean = shared or _owes_nothing(rebate, effects)
        recovered = settled = 0
        if not clean:
            # points settle what the whole points credited are worth, not the fen award (its remainder bought none)
            worth = amount_fen if kind != "points" else points * money.point_value_fen
            recovered = recover_receivables(rebate.beneficiary_type, rebate.beneficiary_id, kind, worth)
        elif shared and not _owes_nothing(rebate, effects):  # only what the person owes this same merchant
            settled = _settle_share_debts(rebate, campaign, amount_fen, key, effects)
        if rebate.form in (Form.WECHAT_CHANGE, Form.CASH_RED_PACKET):
            _queue_cash_payout(rebate, order, amount_fen - settled, key, memo, money, effects, clean, shared=shared)
        elif rebate.form == Form.BALANCE:  # in the balance now: what did not go to a debt landed
            _landed(effects, tell.landed_in_app(rebate, amount_fen - recovered, key, Form.BALANCE))
        elif kind == "points":  # told as what the points left after a debt are worth, not the fen award (a person
            # owing 500 points, paid 500, had been told 500 had arrived with 0 in the wallet)
            left = points * money.point_value_fen - recovered
            _landed(effects, tell.landed_in_app(rebate, left, key, Form.POINTS, left // money.point_value_fen))
    if own:
        effects.write()
        effects.tell()


def cancel_held(rebate: Rebate, amount_fen: int, reason: str, *, refund_id: int | None = None) -> None:
    """A part of ``rebate`` still held (for milestones or a review) will never be paid: its budget goes back and a
    dated ``cancelled`` adjustment says so (the reports count it that day; the person reads ``reason``, so it
    names no reviewer's note). The caller takes it off ``held_fen``. Nothing for a zero amount."""
    if amount_fen <= 0:
        return
    budgets.release_committed(rebate.campaign_id, amount_fen)
    db.session.add(
        RebateAdjustment(
            rebate_id=rebate.id,
            refund_id=refund_id,
            amount_fen=amount_fen,
            recovered_fen=amount_fen,
            receivable_fen=0,
            reason=reason[:200],
            kind=AdjustmentKind.CANCELLED,
        )
    )


def owes_ref(user_id: int):
    """What the person owes merchants for shares clawed back after they were paid (below zero)."""
    return ref(AccountKind.USER_OWES_MERCHANTS, "user", user_id)


def _settle_share_debts(rebate: Rebate, campaign: Campaign, amount_fen: int, key: str, effects: Effects) -> int:
    """A share from a merchant first settles what the person owes that merchant: that part stays in the merchant's
    frozen order money and is released to it; none of it passes through the platform. Returns what was settled."""
    merchant_id = campaign.funder_merchant_id
    settled = recover_receivables("user", rebate.beneficiary_id, SHARE_DEBT, amount_fen, merchant_id=merchant_id)
    if settled:
        effects.batch.add(
            f"{key}:settles-share-debt",
            f"{rebate.role} rebate settles what the person owed merchant {merchant_id} after a refund",
            [Leg(beneficiary_ref(rebate), -settled), Leg(owes_ref(rebate.beneficiary_id), settled)],
        )
        rebate.reasons = [*rebate.reasons, f"{format_yuan(settled)} settled what you owed this merchant after a refund"]
    return settled


def _queue_cash_payout(
    rebate: Rebate,
    order: Order,
    amount_fen: int,
    key: str,
    memo: str,
    money: MoneySettings,
    effects: Effects,
    clean: bool,
    *,
    shared: bool = False,
) -> None:
    cash = beneficiary_ref(rebate)
    minimum = 1 if shared else money.payout_min_fen
    if clean:  # owes nothing: the balance was not negative, so all of it is there (the reason is noted)
        payable = amount_fen
    else:
        effects.batch.post()  # the balance below must see this rebate's entry
        payable = min(amount_fen, max(0, balance(cash)))  # a negative balance (receivable) nets first
        if 0 < payable < minimum:  # too small to send alone: it waits in the balance for a withdrawal
            rebate.reasons = [*rebate.reasons, _kept(payable, minimum)]
    if 0 < payable < minimum:  # stays in the balance: it landed there (a payout tells when it succeeds)
        _landed(effects, tell.landed_in_app(rebate, payable, key, Form.BALANCE))
    if payable > 0 and payable >= minimum:
        campaign = db.session.get(Campaign, rebate.campaign_id)
        rail = cash_rail(rebate, order, campaign)
        effects.payouts.append(
            PayoutRequest(
                rail=rail,
                user_id=rebate.beneficiary_id,
                amount_fen=payable,
                source=cash,
                key=key,
                memo=memo,
                number_prefix=money.number_prefix,
                rebate_id=rebate.id,
                order_id=order.id,
                extra={"fallback_rail": None if rail == Rail.PROFIT_SHARING else _fallback(rebate, campaign)},
            )
        )


def shared_by_merchant(rebate: Rebate, campaign: Campaign) -> bool:
    """A cash rebate the merchant funds from its own order money: it leaves by profit sharing (``cash_rail``)."""
    return rebate.form in SHAREABLE_FORMS and campaign.funded_from_sales


def cash_rail(rebate: Rebate, order: Order, campaign: Campaign) -> str:
    """How a cash rebate leaves. Service-provider mode: one of a campaign funded from the merchant's sales leaves
    the merchant's own frozen order money by profit sharing (``payouts.profit_share``), never the platform's
    account; every other one by its form's rail (a platform-funded rebate from the platform's own money, a
    deposit-funded one from the deposit the platform holds)."""
    if campaign.funded_from_sales:  # on an order without profit sharing it waits for an operator, never the platform
        return Rail.PROFIT_SHARING
    return RAIL_OF_FORM[rebate.form]


def _landed(effects: Effects, draft: Draft | None) -> None:
    if draft is not None:
        effects.notices.append(draft)


def _fallback(rebate: Rebate, campaign: Campaign) -> str | None:
    """The rule's fallback form, fixed on the payout: where the money goes when the rail refuses."""
    rule = rules_of(campaign, rebate.rules_version).role(rebate.role)
    form = rule.fallback_form if rule else None
    return RAIL_OF_FORM.get(form, form if form in (Form.BALANCE, Form.POINTS) else None) if form else None


def recover_receivables(
    beneficiary_type: str,
    beneficiary_id: int,
    kind: str,
    amount_fen: int,
    *,
    merchant_id: int | None = None,
    payout_id: int | None = None,
) -> int:
    """Net a new rebate against what the beneficiary owes, oldest first; budgets get it back. ``merchant_id``:
    only what is owed on campaigns that merchant funds (a share debt is owed to one merchant) and has reached
    the person (a debt waiting on a share still at WeChat is not settled by another); ``payout_id``: only
    the debts waiting on that share."""
    left = amount_fen
    stmt = select(Receivable).where(
        Receivable.beneficiary_type == beneficiary_type,
        Receivable.beneficiary_id == beneficiary_id,
        Receivable.kind == kind,
        Receivable.outstanding_fen > 0,
    )
    if payout_id is not None:
        stmt = stmt.where(Receivable.payout_id == payout_id)
    elif merchant_id is not None:
        stmt = (
            stmt.join(Campaign, Campaign.id == Receivable.campaign_id)
            .outerjoin(Payout, Payout.id == Receivable.payout_id)
            .where(
                Campaign.funder_merchant_id == merchant_id,
                Receivable.payout_id.is_(None) | (Payout.status == PayoutStatus.SUCCEEDED),
            )
        )
    owed = db.session.execute(stmt.order_by(Receivable.id).with_for_update(of=Receivable)).scalars().all()
    for receivable in owed:
        if left == 0:
            break
        take = min(left, receivable.outstanding_fen)
        receivable.outstanding_fen -= take
        budgets.release_committed(receivable.campaign_id, take)
        left -= take
    db.session.flush()
    return amount_fen - left
