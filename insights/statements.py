"""A merchant's monthly statement, read from the ledger: every figure is the sum of named postings.

The month is a Beijing month; a posting belongs to it by its entry's booking time. Every time a statement shows
(its ``from`` and ``to``, each posting's ``booked_at``, the invoice's ``created_at``) is Beijing time, ``+08:00``.
Each of the merchant's six accounts (payable, marketing deposit, marketing credit, fees due, and in
service-provider mode its order money frozen for profit sharing and its own claim on that money) is split into
figures by the entry's idempotency key (``FIGURES``: the first pattern that matches; each account's last figure
takes the rest), so the figures of an account add up to its movement in the month, and opening + movement = closing
is checked on every statement (``reconciles``). ``statement_postings`` lists the postings of one figure: the figure
is their sum, to the fen.

What is not yet in the ledger is shown apart as *in flight*, each line with the rows it reads: rebates held
for a milestone or a review, live packets' reservations, refunds not finished, deposit top-ups awaiting a
second operator, withdrawals awaiting one, and fees booked but not yet invoiced. The profit-sharing part
(``profit_shares``) reads the frozen order money's postings and the ``ProfitShare`` rows (see ``_profit_shares``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select

from ledger import balances, existing_account_ids, ref
from models import (
    AccountKind,
    Campaign,
    DepositProposal,
    FeeInvoice,
    FunderType,
    LedgerEntry,
    LedgerPosting,
    Merchant,
    Order,
    OrderStatus,
    Payout,
    PayoutStatus,
    ProfitShare,
    ProposalPurpose,
    ProposalStatus,
    Rail,
    Rebate,
    Receivable,
    Refund,
    RefundStatus,
    ShareKind,
    ShareStatus,
    db,
)
from models.base import BEIJING
from models.orders import OPEN_REFUNDS
from models.rebates import SHARE_DEBT
from money import format_yuan, unsettled_share
from rebate.fees import billed_unpaid, carried_forward, credit_given_back, month_bounds


@dataclass(frozen=True)
class Figure:
    name: str
    kind: AccountKind
    label: str
    pattern: str | None  # a regular expression on the entry's key; None: the rest of the account's postings


PAYABLE, DEPOSIT = AccountKind.MERCHANT_PAYABLE, AccountKind.MERCHANT_MARKETING_DEPOSIT
CREDIT, FEES = AccountKind.MERCHANT_MARKETING_CREDIT, AccountKind.MERCHANT_FEES_DUE
FROZEN, OWN = AccountKind.MERCHANT_FROZEN_SALES, AccountKind.MERCHANT_OWN_SALES
SALE, RELEASED = r"^order:\d+:sale$", r"^order:\d+:released$"
SHARED = r"^payout:\d+:paid$"  # a profit-sharing payout a person received (``payouts.profit_share._shared``)
# a clawback's own entry, or (a coupon's) what it took back from a payout not yet sent (``payouts.cancel_or_reduce``:
# ``payout:<id>:reduce:<clawback key>:<id>``, only ever posted by a clawback): clawed back, not "paid less returns"
CLAWBACK = r"^(clawback:|review:\d+:clawback:|payout:\d+:reduce:)"

FIGURES: tuple[Figure, ...] = (
    Figure(
        "sales", PAYABLE, "Sales: goods value of orders paid (buyers' payments and packets' value)", r"^order:\d+:sale$"
    ),
    Figure(
        "refunds", PAYABLE, "Refunds: paid back to buyers, and packets' value of fully refunded orders", r"^refund:"
    ),
    Figure("payable_other", PAYABLE, "Other movements of what the platform owes the merchant", None),
    Figure("deposit_top_ups", DEPOSIT, "Deposit top-ups approved (four eyes)", r"^deposit:"),
    Figure(
        "deposit_withdrawals",
        DEPOSIT,
        "Deposit withdrawals approved (four eyes): unspent deposit paid back to it by bank transfer",
        r"^deposit-withdrawal:",
    ),
    Figure("deposit_from_credit", DEPOSIT, "Marketing credit spent on promotions, into the deposit", r"^credit:"),
    Figure(
        "discounts_funded",
        DEPOSIT,
        "Packet discounts it funded (less discounts returned by full refunds)",
        r"^(order:\d+:sale|refund:\d+:discount:)",
    ),
    Figure("rebates_clawed_back", DEPOSIT, "Rebates it funded, clawed back after refunds or reviews", CLAWBACK),
    Figure("rebates_paid", DEPOSIT, "Rebates it funded, paid (awards and coupons sent, less returns)", None),
    Figure("credit_clawed_back", CREDIT, "Marketing credit clawed back after refunds or reviews", CLAWBACK),
    Figure("credit_applied_to_fees", CREDIT, "Marketing credit applied to fee invoices, less given back", r"^invoice:"),
    Figure("credit_spent_on_promotions", CREDIT, "Marketing credit spent on promotions", r"^credit:"),
    Figure("credit_earned", CREDIT, "Marketing credit earned (its share of orders paid with its packets)", None),
    Figure("fees_accrued", FEES, "Platform service fees on orders paid (owed: negative)", r"^fee:order:"),
    Figure("fees_reduced_by_refunds", FEES, "Service fees given back for refunds", r"^fee:refund:"),
    Figure("fees_paid_by_credit", FEES, "Service fees paid by marketing credit, less credit given back", r"^invoice:"),
    Figure("fees_paid", FEES, "Service fees it paid against its invoices (four eyes)", r"^feepay:"),
    Figure("fees_other", FEES, "Other movements of fees due", None),
    Figure(
        "frozen_sales",
        FROZEN,
        "Service-provider mode: buyers' payments to its own sub-merchant account, frozen for profit sharing "
        "(held at WeChat: negative)",
        SALE,
    ),
    Figure("frozen_refunds", FROZEN, "Refunds paid from its frozen order money", r"^refund:"),
    Figure(
        "shared_to_persons",
        FROZEN,
        "Profit sharing: rebates it funded, shared to persons from its own frozen order money at WeChat "
        "(offsets their rebates_paid)",
        SHARED,
    ),
    Figure("frozen_released", FROZEN, "Frozen order money released to it (unfrozen at WeChat)", RELEASED),
    Figure("frozen_sales_other", FROZEN, "Other movements of its frozen order money", None),
    Figure(
        "own_sales",
        OWN,
        "Service-provider mode: its sales paid to its own account (buyers' payments; its own packets' discounts "
        "already off)",
        SALE,
    ),
    Figure("own_refunds", OWN, "Refunds paid from its frozen order money", r"^refund:"),
    Figure("own_released", OWN, "Order money released to it at WeChat: out of the platform's books", RELEASED),
    Figure(
        "own_rebates_clawed_back",
        OWN,
        "Rebates it funded from its sales, clawed back after refunds or reviews (after a share: owed by persons)",
        CLAWBACK,
    ),
    Figure(
        "own_shares_returned",
        OWN,
        "Shares that never reached their person (receiver closed, cancelled): the money stayed its own",
        r"^payout:\d+:(failed|cancelled)$",
    ),
    Figure(
        "own_share_debts_settled",
        OWN,
        "Returned shares that settled what a person owed it after a refund",
        r"^payout:\d+:came-back:settles$",
    ),
    Figure(
        "own_rebates_funded",
        OWN,
        "Rebates it funded from its sales (shared to persons by profit sharing; a share that settles what the "
        "person owed it stays in its order money and is released to it)",
        None,
    ),
)
FIGURE_NAMES = tuple(f.name for f in FIGURES)
KINDS = (PAYABLE, DEPOSIT, CREDIT, FEES, FROZEN, OWN)


def classify(kind: str, key: str) -> str:
    """The figure a posting on a merchant account of ``kind`` belongs to, by its entry's key."""
    for figure in FIGURES:
        if figure.kind == kind and (figure.pattern is None or re.search(figure.pattern, key)):
            return figure.name
    raise ValueError(f"no figure for {kind}")  # unreachable: every kind ends with a catch-all


@dataclass(frozen=True)
class _Account:
    """One of the merchant's accounts as the statement reads it: ``id`` None when it was never used (a statement
    only reads: it does not create the account, and its balance and postings are nothing)."""

    id: int | None
    kind: AccountKind
    code: str


def _accounts(merchant_id: int) -> dict[str, _Account]:
    refs = {kind: ref(kind, "merchant", merchant_id) for kind in KINDS}
    found = existing_account_ids(refs.values())  # a statement only reads: it creates no account
    return {kind.value: _Account(found.get(r.code), kind, r.code) for kind, r in refs.items()}


def _postings(accounts: dict[str, _Account], start: datetime, end: datetime):
    by_id = {a.id: a for a in accounts.values() if a.id is not None}
    if not by_id:
        return
    rows = db.session.execute(
        select(
            LedgerPosting.id,
            LedgerPosting.account_id,
            LedgerPosting.amount,
            LedgerEntry.id,
            LedgerEntry.idempotency_key,
            LedgerEntry.memo,
            LedgerEntry.created_at,
        )
        .join(LedgerEntry, LedgerEntry.id == LedgerPosting.entry_id)
        .where(LedgerPosting.account_id.in_(list(by_id)), LedgerEntry.created_at >= start, LedgerEntry.created_at < end)
        .order_by(LedgerEntry.id, LedgerPosting.id)
    ).all()
    for posting_id, account_id, amount, entry_id, key, memo, created_at in rows:
        kind = by_id[account_id].kind
        yield {
            "figure": classify(kind, key),
            "posting_id": posting_id,
            "entry_id": entry_id,
            "key": key,
            "memo": memo,
            "account": by_id[account_id].code,
            "amount_fen": int(amount),
            "booked_at": beijing_iso(created_at),
        }


def _balance_before(account_id: int | None, when: datetime) -> int:
    if account_id is None:
        return 0
    return int(
        db.session.execute(
            select(func.coalesce(func.sum(LedgerPosting.amount), 0))
            .join(LedgerEntry, LedgerEntry.id == LedgerPosting.entry_id)
            .where(LedgerPosting.account_id == account_id, LedgerEntry.created_at < when)
        ).scalar_one()
    )


def statement_postings(merchant: Merchant, month: str, figure: str) -> list[dict]:
    """The postings one figure of the statement adds up (``figure`` one of ``FIGURE_NAMES``)."""
    start, end = month_bounds(month)
    return [p for p in _postings(_accounts(merchant.id), start, end) if p["figure"] == figure]


def beijing_iso(when: datetime) -> str:
    """An instant as the statement shows it: Beijing time with its offset (``2031-04-01T00:30:00+08:00``)."""
    return when.astimezone(BEIJING).isoformat()


def money(fen: int) -> dict:
    return {"fen": fen, "yuan": format_yuan(fen)}


def merchant_statement(merchant: Merchant, month: str, fund_flow: str, entries_url: str) -> dict:
    """The statement of ``merchant`` for a Beijing ``month`` (YYYY-MM); ``entries_url``: the link that lists a
    figure's postings (``{figure}`` is filled in)."""
    start, end = month_bounds(month)
    accounts = _accounts(merchant.id)
    totals = dict.fromkeys(FIGURE_NAMES, 0)
    counts = dict.fromkeys(FIGURE_NAMES, 0)
    for posting in _postings(accounts, start, end):
        totals[posting["figure"]] += posting["amount_fen"]
        counts[posting["figure"]] += 1
    figures = [
        {
            "name": f.name,
            "label": f.label,
            "account": accounts[f.kind.value].code,
            **money(totals[f.name]),
            "postings": counts[f.name],
            "entries": entries_url.format(figure=f.name),
        }
        for f in FIGURES
    ]
    return {
        "merchant": {"id": merchant.id, "name": merchant.name},
        "month": month,
        "from": beijing_iso(start),
        "to": beijing_iso(end),
        "fund_flow": fund_flow,
        "figures": figures,
        "summary": _summary(totals),
        "accounts": _reconcile(accounts, totals, start, end),
        "profit_shares": _profit_shares(merchant.id, accounts, fund_flow, start, end, totals),
        "invoice": _invoice(merchant.id, month),
        "in_flight": _in_flight(merchant.id, accounts),
    }


def _summary(t: dict[str, int]) -> dict:
    """The figures an accountant reads first, each a sum of figures above (named in ``of``)."""
    lines = {
        "net_sales": ("sales", "refunds"),
        "discounts_funded": ("discounts_funded",),
        "rebates_paid": ("rebates_paid",),
        "rebates_clawed_back": ("rebates_clawed_back",),
        "credit_earned": ("credit_earned", "credit_clawed_back"),
        "credit_used": ("credit_applied_to_fees", "credit_spent_on_promotions"),
        "platform_fees": ("fees_accrued", "fees_reduced_by_refunds"),
        "shared_to_persons": ("shared_to_persons",),
    }
    return {name: {**money(sum(t[f] for f in of)), "of": list(of)} for name, of in lines.items()}


def _reconcile(accounts: dict[str, _Account], totals: dict[str, int], start, end) -> list[dict]:
    """Per account: opening + the month's figures = closing (both read from the ledger)."""
    out = []
    for kind, acc in accounts.items():
        opening, closing = _balance_before(acc.id, start), _balance_before(acc.id, end)
        moved = sum(totals[f.name] for f in FIGURES if f.kind == kind)
        out.append(
            {
                "account": acc.code,
                "opening_fen": opening,
                "movement_fen": moved,
                "closing_fen": closing,
                "reconciles": opening + moved == closing,
            }
        )
    return out


def _profit_shares(
    merchant_id: int,
    accounts: dict[str, _Account],
    fund_flow: str,
    start: datetime,
    end: datetime,
    totals: dict[str, int],
) -> dict:
    """Profit sharing (service-provider mode) of the merchant's orders, each line with the rows it reads.

    For the month: what persons received (the ``shared_to_persons`` figure: postings on its frozen order
    money), what came back to it because a share never reached its person (the payouts' ``failed`` and
    ``cancelled`` entries on its own sales booked in the month), and of the shares finished in the month,
    what was unfrozen to the merchant (frozen when the share was sent, i.e. paid less the refunds begun
    before it, less what it shared) and, of that, what did not fit its maximum ratio (held for an operator).
    As of now: payouts waiting for or inside a share (pending, sending, processing), and what persons owe it
    for shares clawed back after they were paid."""
    frozen, own = accounts[FROZEN.value], accounts[OWN.value]
    orders = select(Order.id).where(Order.merchant_id == merchant_id)
    rail = (Payout.rail == Rail.PROFIT_SHARING) & Payout.order_id.in_(orders)
    came_back_ids = list(
        db.session.execute(
            select(Payout.id).where(  # returned with the entry below (whose booking time decides the month)
                rail,
                Payout.status.in_([PayoutStatus.FAILED, PayoutStatus.CANCELLED]),
                Payout.finished_at >= start - timedelta(days=1),
                Payout.finished_at < end + timedelta(days=1),
            )
        ).scalars()
    )
    came_back_keys = [f"payout:{i}:{to}" for i in came_back_ids for to in (PayoutStatus.FAILED, PayoutStatus.CANCELLED)]
    came_back = db.session.execute(
        select(LedgerEntry.idempotency_key, LedgerPosting.amount)
        .join(LedgerPosting, LedgerPosting.entry_id == LedgerEntry.id)
        .where(
            LedgerEntry.idempotency_key.in_(came_back_keys or [""]),
            LedgerEntry.created_at >= start,
            LedgerEntry.created_at < end,
            LedgerPosting.account_id == own.id,
        )
    ).all()
    owed = db.session.execute(
        select(Receivable.id, Receivable.outstanding_fen)
        .join(Campaign, Campaign.id == Receivable.campaign_id)
        .where(
            Campaign.funder_merchant_id == merchant_id,
            Receivable.kind == SHARE_DEBT,
            Receivable.outstanding_fen > 0,
        )
        .order_by(Receivable.id)
    ).all()
    finished = db.session.execute(
        # frozen at WeChat: all it charged and settled (``Order.frozen_fen``: a 免充值 coupon's part never was)
        select(ProfitShare, Order.payable_fen, Order.unsettled_coupon_fen)
        .join(Order, Order.id == ProfitShare.order_id)
        .where(
            ProfitShare.merchant_id == merchant_id,
            ProfitShare.status == ShareStatus.FINISHED,
            ProfitShare.kind.in_([ShareKind.SHARE, ShareKind.UNFREEZE]),
            ProfitShare.finished_at >= start,
            ProfitShare.finished_at < end,
        )
        .order_by(ProfitShare.id)
    ).all()
    unfrozen = sum(_frozen_when_sent(row, charged, coupon) - row.shared_fen for row, charged, coupon in finished)
    waiting = db.session.execute(
        select(Payout.id, Payout.amount_fen)
        .where(rail, Payout.status.in_([PayoutStatus.PENDING, PayoutStatus.SENDING, PayoutStatus.UNKNOWN]))
        .order_by(Payout.id)
    ).all()
    open_shares = db.session.execute(
        select(ProfitShare.id).where(
            ProfitShare.merchant_id == merchant_id,
            ProfitShare.status.in_([ShareStatus.PENDING, ShareStatus.SENDING, ShareStatus.PROCESSING]),
        )
    ).scalars()
    note = (
        "merchant-funded cash rebates leave its own frozen order money by profit sharing"
        if fund_flow == "service_provider"
        else "direct mode: merchant-funded rebates leave the deposit; nothing is shared"
    )
    return {
        "mode": fund_flow,
        "note": note,
        "shared_to_persons": {**money(totals["shared_to_persons"]), "figure": "shared_to_persons"},
        # a share that never reached its person (WeChat closed the receiver, an operator cancelled or failed it):
        # the money stayed the merchant's and was unfrozen to it; the rebate no longer carries it
        "returned_to_merchant": {
            **money(sum(int(a) for _, a in came_back)),
            "entries": sorted({k for k, _ in came_back}),
        },
        # as of now: what persons owe it for shares a refund or a review clawed back after they were paid,
        # settled only by its later shares to them (the platform never collects it)
        "owed_by_persons": {**money(sum(a for _, a in owed)), "receivable_ids": [i for i, _ in owed]},
        "unfrozen_to_merchant": {**money(unfrozen), "share_ids": [row.id for row, *_ in finished]},
        "held_over_ratio": {
            **money(sum(row.held_fen for row, *_ in finished)),
            "share_ids": [row.id for row, *_ in finished if row.held_fen],
        },
        "in_flight": {
            **money(sum(a for _, a in waiting)),
            "payout_ids": [i for i, _ in waiting],
            "share_ids": list(open_shares),
        },
        "frozen_sales": {
            "account": frozen.code,
            "opening_fen": _balance_before(frozen.id, start),
            "closing_fen": _balance_before(frozen.id, end),
        },
    }


def _frozen_when_sent(row: ProfitShare, charged_fen: int, unsettled_fen: int = 0) -> int:
    """What was still frozen when the share was sent: the order's settled payment less the settled part of its
    refunds begun before (a 免充值 coupon's part was never frozen, nor is its share of a refund).

    A share is planned only when no refund of its order is pending; refunds begun after it (while WeChat was
    still sharing, or later) are paid from the merchant's money already unfrozen, not from the frozen money."""
    sent = db.session.execute(
        select(func.min(Payout.sent_at)).where(
            Payout.order_id == row.order_id, Payout.rail == Rail.PROFIT_SHARING, Payout.sent_at.is_not(None)
        )
    ).scalar_one()
    cut = sent or row.finished_at
    refunded = db.session.execute(
        select(func.coalesce(func.sum(Refund.amount_fen), 0)).where(
            Refund.order_id == row.order_id, Refund.status == RefundStatus.SUCCEEDED, Refund.created_at < cut
        )
    ).scalar_one()
    refunded = int(refunded) - unsettled_share(unsettled_fen, charged_fen, int(refunded), int(refunded))
    return max(0, charged_fen - unsettled_fen - refunded)


def _invoice(merchant_id: int, month: str) -> dict | None:
    row = db.session.execute(
        select(FeeInvoice).where(FeeInvoice.merchant_id == merchant_id, FeeInvoice.month == month)
    ).scalar_one_or_none()
    if row is None:
        return None
    return {
        "id": row.id,
        "fee": money(row.fee_fen),
        "credit_applied": money(row.credit_applied_fen),
        "due": money(row.due_fen),
        "credit_given_back": money(credit_given_back(merchant_id, month)),  # a month the fees fell below zero
        "carried_forward": money(carried_forward(merchant_id, month)),  # … what it left for the next invoices
        "created_at": beijing_iso(row.created_at),
    }


def _in_flight(merchant_id: int, accounts: dict[str, _Account]) -> dict:
    """Promised or pending, not yet (or not wholly) in the ledger; as of now, each with the rows it reads."""
    funded = (Campaign.funder_type == FunderType.MERCHANT_DEPOSIT) & (Campaign.funder_merchant_id == merchant_id)
    held = db.session.execute(
        select(Rebate.id, Rebate.held_fen)
        .join(Campaign, Campaign.id == Rebate.campaign_id)
        .where(funded, Rebate.held_fen > 0)
        .order_by(Rebate.id)
    ).all()
    reserved = db.session.execute(
        select(Campaign.id, Campaign.budget_reserved_fen).where(funded, Campaign.budget_reserved_fen > 0)
    ).all()
    refunds = db.session.execute(
        select(Refund.id, Refund.amount_fen)
        .join(Order, Order.id == Refund.order_id)
        .where(
            Order.merchant_id == merchant_id,
            Refund.status.in_(OPEN_REFUNDS),  # an abnormal one may still take the money
            Order.status != OrderStatus.CLOSED,  # a payment after close given back: never the merchant's sale
        )
        .order_by(Refund.id)
    ).all()
    proposals = db.session.execute(
        select(DepositProposal.id, DepositProposal.amount_fen, DepositProposal.purpose)
        .where(DepositProposal.merchant_id == merchant_id, DepositProposal.status == ProposalStatus.PENDING)
        .order_by(DepositProposal.id)
    ).all()
    top_ups = [(i, a) for i, a, purpose in proposals if purpose == ProposalPurpose.DEPOSIT]
    payments = [(i, a) for i, a, purpose in proposals if purpose == ProposalPurpose.FEES]
    withdrawals = [(i, a) for i, a, purpose in proposals if purpose == ProposalPurpose.WITHDRAWAL]
    fees = accounts[FEES.value]
    fees_due = 0 if fees.id is None else balances([fees])[fees.id]
    return {
        "rebates_held": {**money(sum(a for _, a in held)), "rebate_ids": [i for i, _ in held]},
        "packets_reserved": {**money(sum(a for _, a in reserved)), "campaign_ids": [i for i, _ in reserved]},
        "refunds_pending": {**money(sum(a for _, a in refunds)), "refund_ids": [i for i, _ in refunds]},
        "deposit_proposals_pending": {
            **money(sum(a for _, a in top_ups)),
            "proposal_ids": [i for i, _ in top_ups],
        },
        "withdrawals_pending": {
            **money(sum(a for _, a in withdrawals)),
            "proposal_ids": [i for i, _ in withdrawals],
        },
        "fee_payments_pending": {**money(sum(a for _, a in payments)), "proposal_ids": [i for i, _ in payments]},
        "fees_owed": {**money(-fees_due), "account": accounts[FEES.value].code},
        "fees_billed_unpaid": money(billed_unpaid(merchant_id)),  # its invoices' due, less its fee payments
    }
