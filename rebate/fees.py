"""The platform's service fee and the merchant's marketing credit spent against it or on promotions.

- **Fee**: each paid order owes ``rate_bps`` of its total (the merchant's own rate, else ``PLATFORM_FEE_BPS``),
  posted with the sale (``fee:order:<id>``: the merchant's fees-due account down, platform fee income up). A
  refund lowers it to the rate of the order's net total, rounded down, cumulatively (``fee:refund:<id>``), so
  partial refunds never take back more than the fee was.
- **Invoice**: once a Beijing month has ended, one ``FeeInvoice`` per merchant and month (unique key; a second
  run, or a concurrent twin, writes nothing and posts nothing) for the fees booked in it, never more than is
  owed and not yet billed (``unbilled_fees``), with any fee booked in a month already invoiced after its invoice
  was written (a payment that began before that month ended and committed after the run) and the fees of months
  older than the job's catch-up (``CATCH_UP_MONTHS``) it never invoiced; the marketing credit
  pays first
  (``invoice:<merchant>:<month>:credit``, credit → fees due), the rest is due. A month whose refunds lowered
  the fee more than it accrued (or whose fees the credit carried from earlier months covers) is invoiced at
  0, the row still written so the month is closed. What the merchant is owed then first gives back marketing
  credit that invoices applied (``invoice:<merchant>:<month>:credit-back``, fees due → credit, never more
  than they applied, net); the rest stays in the fees-due account and the next invoices net it.
- **Promotion spend**: an operator moves credit into the merchant's marketing deposit, which funds its
  campaigns (``credit:<merchant>:<operator>:<key>``). Under a row lock on the credit account: never below
  zero, however many spend at once.

The marketing credit itself is earned as today: a ``credit`` rebate (the merchant as issuer of a packet spent
on an order) is paid into ``merchant_marketing_credit`` by ``rebate.awards``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import func, or_, select

from ledger import Batch, Leg, account, balance, balance_if_any, existing_account_id, post_entry, ref
from models import (
    AccountKind,
    Campaign,
    FeeInvoice,
    FunderType,
    LedgerAccount,
    LedgerEntry,
    LedgerPosting,
    MerchantFeeRate,
    Order,
    OrderFee,
    Refund,
    db,
    utcnow,
)
from models.base import BEIJING
from models.operators import Actor, audit
from models.sql import insert_ignoring
from money import share
from rebate.deposits import deposit_account
from rebate.errors import Invalid, StateConflict
from rebate.scope import visible_campaign, visible_merchant

FEE_KEYS = ("fee:order:", "fee:refund:")
CATCH_UP_MONTHS = 3  # ended months the invoice job looks at each run: the last, and two before it a stopped job left


def fees_due_account(merchant_id: int) -> LedgerAccount:
    return account(AccountKind.MERCHANT_FEES_DUE, "merchant", merchant_id)


def credit_account(merchant_id: int) -> LedgerAccount:
    return account(AccountKind.MERCHANT_MARKETING_CREDIT, "merchant", merchant_id)


def fee_rate(merchant_id: int, default_bps: int) -> int:
    """The merchant's service fee in basis points: its own rate, else the deployment's default."""
    own = db.session.get(MerchantFeeRate, merchant_id)
    return own.rate_bps if own is not None else default_bps


def set_fee_rate(actor: Actor, merchant_id: int, rate_bps: int, reason: str) -> MerchantFeeRate:
    """Set a merchant's own service fee (orders paid from now on); audited with the rate it replaces."""
    visible_merchant(actor.operator, merchant_id)
    if isinstance(rate_bps, bool) or not isinstance(rate_bps, int) or not 0 <= rate_bps <= 10000:
        raise Invalid("rate_bps must be 0 to 10000 basis points", code="invalid_rate")
    row = db.session.execute(
        select(MerchantFeeRate)
        .where(MerchantFeeRate.merchant_id == merchant_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    before = row.rate_bps if row is not None else None
    if row is None:  # a concurrent first rate waits on the key, then finds it taken and changes it
        new = {
            "merchant_id": merchant_id,
            "rate_bps": rate_bps,
            "updated_by": actor.operator.id,
            "updated_at": utcnow(),
        }
        if insert_ignoring(MerchantFeeRate.__table__, [new], ("merchant_id",), ("merchant_id",)):
            audit(actor, "merchant.fee_rate", "merchant", merchant_id, reason, rate_bps=rate_bps, before_bps=None)
            return db.session.get(MerchantFeeRate, merchant_id)
        return set_fee_rate(actor, merchant_id, rate_bps, reason)
    row.rate_bps, row.updated_by, row.updated_at = rate_bps, actor.operator.id, utcnow()
    audit(actor, "merchant.fee_rate", "merchant", merchant_id, reason, rate_bps=rate_bps, before_bps=before)
    db.session.flush()
    return row


def own_fee_rate(merchant_id_column):
    """The merchant's own rate as a column of another statement (the payment's one load): None when it has none."""
    return select(MerchantFeeRate.rate_bps).where(MerchantFeeRate.merchant_id == merchant_id_column).scalar_subquery()


def accrue_fee(order: Order, rate_bps: int, batch: Batch) -> int:
    """At payment: the order's fee at ``rate_bps`` (the merchant's, read with the order, else the default), into
    ``batch`` (written with the sale); returns it (0: no fee, no row)."""
    rate = rate_bps
    fee = share(order.total_fen, rate)
    if fee == 0:
        return 0
    db.session.add(
        OrderFee(order_id=order.id, merchant_id=order.merchant_id, rate_bps=rate, accrued_fen=fee, fee_fen=fee)
    )
    batch.add(
        f"fee:order:{order.id}",
        f"service fee on {order.out_trade_no}",
        [Leg(ref(AccountKind.MERCHANT_FEES_DUE, "merchant", order.merchant_id), -fee), Leg(_income(), fee)],
    )
    return fee


def reduce_fee(order: Order, refund: Refund) -> int:
    """After ``refund`` lowered the order's net paid (the order row is locked): the fee on what is left, rounded
    down; returns what it came down by."""
    fee = db.session.get(OrderFee, order.id, with_for_update=True)
    if fee is None:
        return 0
    net_total = order.net_total_fen
    delta = fee.fee_fen - share(net_total, fee.rate_bps)
    if delta <= 0:
        return 0
    fee.fee_fen -= delta
    post_entry(
        f"fee:refund:{refund.id}",
        f"refund {refund.out_refund_no} lowers the service fee",
        [Leg(fees_due_account(order.merchant_id), delta), Leg(account(AccountKind.PLATFORM_FEE_INCOME), -delta)],
    )
    return delta


def _income():
    return ref(AccountKind.PLATFORM_FEE_INCOME)


MONTH = re.compile(r"[0-9]{4}-[0-9]{2}")  # ASCII digits only: ``int`` alone also takes " 1", "+1" and "١"


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """A ``YYYY-MM`` Beijing month as [start, end) in UTC; ``Invalid`` for anything else.

    Only the month's one spelling: a month is a key (``FeeInvoice.month``, the invoice entries' keys) and is compared
    as text, so " 2024-1" or "2024-+1" must not be January 2024 under another name. From 2000-01 to 9999-11: the
    end of December 9999 is past the calendar's last instant."""
    found = MONTH.fullmatch(month) if isinstance(month, str) else None
    year, mon = (int(part) for part in month.split("-")) if found else (0, 0)
    if not 2000 <= year <= 9999 or not 1 <= mon <= 12 or (year, mon) == (9999, 12):
        raise Invalid(f"month must be YYYY-MM, got {month!r}", code="invalid_month")
    start = datetime(year, mon, 1, tzinfo=BEIJING)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=BEIJING)
    return start.astimezone(UTC), end.astimezone(UTC)


def month_of(when: datetime) -> str:
    return when.astimezone(BEIJING).strftime("%Y-%m")


def previous_month(now: datetime) -> str:
    local = now.astimezone(BEIJING)
    return f"{local.year - 1}-12" if local.month == 1 else f"{local.year}-{local.month - 1:02d}"


def _fee_key():
    return LedgerEntry.idempotency_key.like("fee:%")


def lock_credit(merchant_id: int) -> LedgerAccount:
    """Row-lock the merchant's credit account: one spender at a time (PostgreSQL; SQLite serialises anyway)."""
    return locked(credit_account(merchant_id))


def locked(row: LedgerAccount) -> LedgerAccount:
    """``row`` with its row locked until the transaction ends: its balance read now stays what is spent from."""
    db.session.execute(select(LedgerAccount.id).where(LedgerAccount.id == row.id).with_for_update())
    return row


def invoice_key(merchant_id: int, month: str) -> str:
    return f"invoice:{merchant_id}:{month}:credit"


def credit_back_key(merchant_id: int, month: str) -> str:
    return f"invoice:{merchant_id}:{month}:credit-back"


def unbilled_fees(merchant_id: int, through: str) -> int:
    """What the merchant owes for fees booked up to the end of month ``through`` and invoices have not billed:
    the fees-due account's fee entries booked before it ended, less the credit invoices of months up to it
    moved (applied, less given back), less what those invoices billed as due. Below zero: the platform owes
    the merchant (fees given back by refunds after they were billed), carried into the next invoices."""
    _, end = month_bounds(through)
    mine = f"invoice:{merchant_id}:"  # then the month: invoice:<merchant>:<YYYY-MM>:…
    moved = _fees_due_moved(
        merchant_id,
        (_fee_key() & (LedgerEntry.created_at < end))
        | (
            LedgerEntry.idempotency_key.like(f"{mine}%")
            & (func.substr(LedgerEntry.idempotency_key, len(mine) + 1, 7) <= through)
        ),
    )
    billed = db.session.execute(
        select(func.coalesce(func.sum(FeeInvoice.due_fen), 0)).where(
            FeeInvoice.merchant_id == merchant_id, FeeInvoice.month <= through
        )
    ).scalar_one()
    return -int(moved) - int(billed)


def credit_given_back(merchant_id: int, month: str) -> int:
    """The marketing credit the month's invoice gave back (0: none)."""
    return -_fees_due_moved(merchant_id, LedgerEntry.idempotency_key == credit_back_key(merchant_id, month))


def carried_forward(merchant_id: int, month: str) -> int:
    """What the merchant was owed after the month's invoice, carried into the next invoices (0: nothing)."""
    return max(0, -unbilled_fees(merchant_id, month))


def invoice_month(merchant_id: int, month: str, now: datetime) -> FeeInvoice | None:
    """Invoice the merchant's fees of an ended month, the credit first; None when it was invoiced already.

    It bills what is owed and not yet billed (fees given back by later refunds net here) less the fees of other
    months still waiting for their own invoice, never less than 0: the fees booked in the month, and any booked
    in a month already invoiced after its invoice read it; at 0, what the merchant is owed gives back the credit
    invoices applied, the rest is carried. The credit account is locked first (promotion spends and other
    invoices of the merchant wait), then the invoice row is inserted on its unique (merchant, month): a twin
    run inserts nothing and posts nothing."""
    _, end = month_bounds(month)
    if now < end:
        raise StateConflict(f"month {month} has not ended", code="month_not_ended")
    credit = lock_credit(merchant_id)
    fee, unbilled = _to_bill(merchant_id, month, now)
    applied = min(max(0, balance(credit)), fee)
    row = {
        "merchant_id": merchant_id,
        "month": month,
        "fee_fen": fee,
        "credit_applied_fen": applied,
        "due_fen": fee - applied,
        "created_at": now,
    }
    written = insert_ignoring(FeeInvoice.__table__, [row], ("merchant_id", "month"), ("id",))
    if not written:
        return None
    if applied:
        post_entry(
            invoice_key(merchant_id, month),
            f"marketing credit pays the {month} service fees",
            [Leg(credit, -applied), Leg(fees_due_account(merchant_id), applied)],
        )
    back = min(max(0, -unbilled), _credit_applied_net(merchant_id)) if fee == 0 else 0
    if back:
        post_entry(
            credit_back_key(merchant_id, month),
            f"the {month} service fees fell below zero: marketing credit applied by invoices given back",
            [Leg(fees_due_account(merchant_id), -back), Leg(credit, back)],
        )
    return db.session.get(FeeInvoice, written[0][0])


def _to_bill(merchant_id: int, month: str, now: datetime) -> tuple[int, int]:
    """What the invoice of ``month`` would bill (never below 0), and what is unbilled as of the last month invoiced.

    What is unbilled, less the fees of other months not invoiced yet that the job still invoices (the
    ``CATCH_UP_MONTHS`` ended by ``now``: each bills its own when it is): so the month's own fees, fees booked in a
    month already invoiced after its invoice read it (a payment that began before the month ended and committed
    after the run), which no other invoice would ever bill, and the fees of older months the job never invoiced and
    no longer looks at (it stopped longer than its catch-up): counted as waiting, they were never billed at all."""
    invoiced = set(db.session.execute(select(FeeInvoice.month).where(FeeInvoice.merchant_id == merchant_id)).scalars())
    through = max(invoiced | {month})  # a month invoiced late: as of the last
    unbilled = unbilled_fees(merchant_id, through)
    since = month_bounds(catch_up_months(now)[0])[0]  # the oldest month the job still invoices on its own
    waiting = _fees_not_invoiced(merchant_id, invoiced | {month}, through, since)
    return max(0, unbilled - max(0, waiting)), unbilled


def catch_up_months(now: datetime, count: int = CATCH_UP_MONTHS) -> list[str]:
    """The ``count`` Beijing months ended by ``now``, oldest first: those the invoice job looks at."""
    months = [previous_month(now)]
    while len(months) < count:
        months.insert(0, previous_month(month_bounds(months[0])[0]))  # the month before the one it begins
    return months


def fee_payment_key(merchant_id: int, proposal_id: int) -> str:
    return f"feepay:{merchant_id}:proposal:{proposal_id}"


def fees_paid(merchant_id: int) -> int:
    """What the merchant paid against its invoices (approved fee payments)."""
    return _fees_due_moved(merchant_id, LedgerEntry.idempotency_key.like(f"feepay:{merchant_id}:%"))


def billed_unpaid(merchant_id: int) -> int:
    """What its invoices billed as due (after the credit) and it has not paid yet, never more than it owes now:
    fees that refunds gave back after they were billed (carried into the next invoices) are not owed."""
    billed = db.session.execute(
        select(func.coalesce(func.sum(FeeInvoice.due_fen), 0)).where(FeeInvoice.merchant_id == merchant_id)
    ).scalar_one()
    owed_now = max(0, -balance_if_any(ref(AccountKind.MERCHANT_FEES_DUE, "merchant", merchant_id)))
    return max(0, min(int(billed) - fees_paid(merchant_id), owed_now))


def refuse_overpayment(merchant_id: int, amount_fen: int) -> int:
    """A fee payment is never more than what is billed and unpaid (409 ``fee_payment_exceeds_billed``); returns
    what is billed and unpaid."""
    unpaid = billed_unpaid(merchant_id)
    if amount_fen > unpaid:
        raise StateConflict(
            f"merchant {merchant_id}'s invoices leave {unpaid} fen unpaid: a payment of {amount_fen} fen "
            "would pay more than was billed",
            code="fee_payment_exceeds_billed",
        )
    return unpaid


def record_fee_payment(merchant_id: int, amount_fen: int, proposal_id: int, memo: str) -> int:
    """Money the merchant paid into the platform's account against its billed fees (the platform's own income,
    not a merchant's money held for it): ``feepay:<merchant>:proposal:<id>``, once. The fees-due account is
    locked first, so two approvals never pay one invoice twice. Returns what is still billed and unpaid."""
    due = locked(fees_due_account(merchant_id))
    unpaid = refuse_overpayment(merchant_id, amount_fen)
    post_entry(
        fee_payment_key(merchant_id, proposal_id),
        memo[:200],
        [Leg(account(AccountKind.WECHAT_SETTLEMENT), -amount_fen), Leg(due, amount_fen)],
    )
    return unpaid - amount_fen


def _fees_not_invoiced(merchant_id: int, months: set[str], through: str, since: datetime) -> int:
    """The service fees booked from ``since`` up to the end of month ``through`` outside the Beijing ``months`` (the
    months invoiced, and the one being invoiced): the fees of months still waiting for their own invoice."""
    spans: list[list] = []  # the months as [start, end) in UTC, neighbours merged: usually one span
    for start, end in sorted(month_bounds(m) for m in months):
        if spans and spans[-1][1] == start:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    inside = [(LedgerEntry.created_at >= start) & (LedgerEntry.created_at < end) for start, end in spans]
    _, end = month_bounds(through)
    booked = _fee_key() & (LedgerEntry.created_at >= since) & (LedgerEntry.created_at < end)
    return -_fees_due_moved(merchant_id, booked & ~or_(*inside))


def _credit_applied_net(merchant_id: int) -> int:
    """The marketing credit the merchant's invoices applied to fees, less what they gave back."""
    return _fees_due_moved(merchant_id, LedgerEntry.idempotency_key.like(f"invoice:{merchant_id}:%"))


def _fees_due_moved(merchant_id: int, entries) -> int:
    """The sum of the merchant's fees-due postings in the ``entries`` (a condition on ``LedgerEntry``); 0 when the
    account was never used (a read creates no account)."""
    account_id = existing_account_id(ref(AccountKind.MERCHANT_FEES_DUE, "merchant", merchant_id))
    if account_id is None:
        return 0
    return int(
        db.session.execute(
            select(func.coalesce(func.sum(LedgerPosting.amount), 0))
            .join(LedgerEntry, LedgerEntry.id == LedgerPosting.entry_id)
            .where(LedgerPosting.account_id == account_id, entries)
        ).scalar_one()
    )


def merchants_to_invoice(month: str, now: datetime) -> list[int]:
    """Merchants with no invoice for ``month`` yet: those with fees booked in it, and those with fees booked only
    in the month before that its invoice did not bill (booked after it was written: a payment that began before
    that month ended and committed after the run). The next invoice bills those; without this, a merchant that
    booked nothing more was never billed for them."""
    booked = set(_merchants_with_fees(month, month))
    before = previous_month(month_bounds(month)[0])
    late = {m for m in _merchants_with_fees(before, month) if m not in booked and _to_bill(m, month, now)[0] > 0}
    return sorted(booked | late)


def _merchants_with_fees(booked_in: str, not_invoiced_for: str) -> list[int]:
    """Merchants with fees booked in the month ``booked_in`` and no invoice for the month ``not_invoiced_for``."""
    start, end = month_bounds(booked_in)
    invoiced = select(FeeInvoice.merchant_id).where(FeeInvoice.month == not_invoiced_for)
    rows = db.session.execute(
        select(LedgerAccount.owner_id)
        .join(LedgerPosting, LedgerPosting.account_id == LedgerAccount.id)
        .join(LedgerEntry, LedgerEntry.id == LedgerPosting.entry_id)
        .where(
            LedgerAccount.kind == AccountKind.MERCHANT_FEES_DUE.value,
            LedgerEntry.created_at >= start,
            LedgerEntry.created_at < end,
            _fee_key(),
            LedgerAccount.owner_id.not_in(invoiced),
        )
        .distinct()
        .order_by(LedgerAccount.owner_id)
    ).scalars()
    return [int(m) for m in rows]


def spend_credit(
    actor: Actor, merchant_id: int, amount_fen: int, key: str, reason: str, campaign_id: int | None = None
) -> tuple[LedgerEntry, int]:
    """Promotion spend: move ``amount_fen`` of the merchant's marketing credit into its marketing deposit (for
    ``campaign_id``, a campaign it funds, when named). The same ``key`` again changes nothing. Returns the
    entry and the credit left. Refused (409 ``credit_exhausted``) beyond what the credit holds."""
    visible_merchant(actor.operator, merchant_id)
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen <= 0:
        raise Invalid("amount_fen must be a positive number of fen", code="invalid_amount")
    if campaign_id is not None:
        _check_funded_by(visible_campaign(actor.operator, campaign_id), merchant_id)
    # the deposit's row before the credit's, as payments and refunds take them (deposit, then credit): taking the
    # credit first waited in a circle with a refund clawing back credit rebates (PostgreSQL)
    locked(deposit_account(merchant_id))
    credit = lock_credit(merchant_id)
    entry_key = f"credit:{merchant_id}:{actor.operator.id}:{key}"
    legs = [Leg(credit, -amount_fen), Leg(deposit_account(merchant_id), amount_fen)]
    done = db.session.execute(select(LedgerEntry).where(LedgerEntry.idempotency_key == entry_key)).scalar_one_or_none()
    if done is not None:  # the same spend again: the first entry (another amount under the key: 409)
        return post_entry(entry_key, done.memo, legs), balance(credit)
    held = balance(credit)
    if amount_fen > held:
        raise StateConflict(
            f"merchant {merchant_id}'s marketing credit holds {held} fen; {amount_fen} asked",
            code="credit_exhausted",
        )
    what = f"campaign {campaign_id}" if campaign_id is not None else "its campaigns"
    entry = post_entry(entry_key, f"marketing credit funds {what}: {reason}", legs)
    audit(
        actor, "merchant.credit_spend", "merchant", merchant_id, reason, amount_fen=amount_fen, campaign_id=campaign_id
    )
    db.session.flush()
    return entry, held - amount_fen


def _check_funded_by(campaign: Campaign, merchant_id: int) -> None:
    if campaign.funder_type != FunderType.MERCHANT_DEPOSIT or campaign.funder_merchant_id != merchant_id:
        raise StateConflict(
            f"campaign {campaign.id} is not funded by merchant {merchant_id}'s deposit", code="not_merchant_funded"
        )
    if campaign.funded_from_sales:  # service-provider mode: the platform holds no money of the merchant's
        raise StateConflict(
            f"campaign {campaign.id} is paid from merchant {merchant_id}'s own sales by profit sharing; it has no "
            "deposit for marketing credit to go into",
            code="campaign_funded_from_sales",
        )
