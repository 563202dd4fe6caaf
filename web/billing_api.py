"""A merchant's side of the platform's money (README "Merchant billing"): the service-fee rate, monthly fee
invoices, marketing credit spent on promotions, and deposit top-ups and withdrawals with four eyes.

A deposit top-up is proposed by one platform operator (admin or finance) and approved by another; in the
service-provider fund flow top-ups are refused (409), the platform never taking a merchant's money (二清). A
withdrawal (unspent deposit money paid back by bank transfer, never what live packets and held rebates are
promised) is proposed and approved the same way, in either fund flow. Top-ups and withdrawals name their bank
transfer (``transfer_ref``, required; a fee payment may): one transfer is recorded once (409 ``transfer_ref_used``).
Merchant staff read their own merchant's proposals, invoices and rate; anything of another merchant is 404.
"""

from __future__ import annotations

from typing import Annotated, Literal

from flask import Blueprint, current_app, g, request
from pydantic import Field
from sqlalchemy import select

from ledger import balance, balance_if_any, ref
from models import AccountKind, DepositProposal, FeeInvoice, OperatorRole, ProposalPurpose, db
from payouts import MoneySettings
from rebate import deposit_ops
from rebate.deposits import deposit_account
from rebate.fees import billed_unpaid, fee_rate, fees_paid, set_fee_rate, spend_credit
from rebate.scope import visible_merchant
from web.admin import ANY_OPERATOR, actor
from web.api import endpoint
from web.guards import MAX_ID
from web.schemas import Id, Model, Page, PositiveFen, Reason

# a bank transfer's own reference (kept in capitals; ``rebate.deposit_ops.transfer_reference`` checks it again)
TransferRef = Annotated[
    str,
    Field(
        min_length=4,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="The bank transfer's reference: 4 to 64 letters, digits and . _ / -, starting with a letter or "
        "digit; one transfer is recorded once per merchant and purpose (409 transfer_ref_used).",
    ),
]

bp = Blueprint("billing", __name__, url_prefix="/admin/api")
MONEY_ROLES = (OperatorRole.ADMIN, OperatorRole.FINANCE)


def proposal_json(p: DepositProposal) -> dict:
    return {
        "id": p.id,
        "merchant_id": p.merchant_id,
        "amount_fen": p.amount_fen,
        "purpose": p.purpose,
        "reason": p.reason,
        "status": p.status,
        "proposed_by": p.proposed_by,
        "proposed_at": p.proposed_at.isoformat(),
        "decided_by": p.decided_by,
        "decided_at": p.decided_at.isoformat() if p.decided_at else None,
        "decision_reason": p.decision_reason,
        "transfer_ref": p.transfer_ref,
    }


def invoice_json(i: FeeInvoice) -> dict:
    return {
        "id": i.id,
        "merchant_id": i.merchant_id,
        "month": i.month,
        "fee_fen": i.fee_fen,
        "credit_applied_fen": i.credit_applied_fen,
        "due_fen": i.due_fen,
        "created_at": i.created_at.isoformat(),
    }


class FeePayment(Model):
    amount_fen: PositiveFen
    reason: Reason
    transfer_ref: TransferRef | None = None


class DepositTopUp(Model):
    """A top-up or a withdrawal: the bank transfer's reference is required."""

    amount_fen: PositiveFen
    reason: Reason
    transfer_ref: TransferRef


class Decision(Model):
    reason: Reason


class ProposalQuery(Page):
    status: Literal["pending", "approved", "rejected"] | None = None
    purpose: Literal["deposit", "fees", "withdrawal"] | None = None
    merchant_id: int | None = Field(None, gt=0, le=MAX_ID)


class FeeRate(Model):
    rate_bps: int = Field(strict=True, ge=0, le=10000)
    reason: Reason


class CreditSpend(Model):
    amount_fen: PositiveFen
    campaign_id: Id | None = None
    reason: Reason


@endpoint(
    bp,
    "/merchants/<int:merchant_id>/deposit/top-ups",
    methods=["POST"],
    auth="operator",
    roles=MONEY_ROLES,
    body=DepositTopUp,
    idempotent=True,
    require_key=True,
    status=201,
)
def propose_top_up(merchant_id: int, body: DepositTopUp):
    """Propose a deposit top-up (money the merchant paid in); it moves nothing until another operator approves."""
    proposal = deposit_ops.propose_top_up(
        actor(),
        merchant_id,
        body.amount_fen,
        body.reason[:200],
        current_app.config["FUND_FLOW"],
        transfer_ref=body.transfer_ref,
    )
    return proposal_json(proposal), 201


@endpoint(
    bp,
    "/merchants/<int:merchant_id>/deposit/withdrawals",
    methods=["POST"],
    auth="operator",
    roles=MONEY_ROLES,
    body=DepositTopUp,
    idempotent=True,
    require_key=True,
    status=201,
)
def propose_withdrawal(merchant_id: int, body: DepositTopUp):
    """Propose paying unspent deposit money back to the merchant by the bank transfer ``transfer_ref`` (asked by the
    merchant outside; its staff move no money here). Never what its live packets and held rebates are promised (409
    ``withdrawal_exceeds_available``, now and again under the deposit's lock when another operator approves it
    through ``/deposit-proposals/<id>/approve``), nor more than the merchant paid in by top-ups and has not withdrawn
    (409 ``withdrawal_exceeds_paid_in``: marketing credit spent into it never leaves as cash); it moves nothing until
    then."""
    proposal = deposit_ops.propose_withdrawal(
        actor(), merchant_id, body.amount_fen, body.reason[:200], current_app.config["FUND_FLOW"], body.transfer_ref
    )
    return proposal_json(proposal), 201


@endpoint(
    bp,
    "/merchants/<int:merchant_id>/fee-payments",
    methods=["POST"],
    auth="operator",
    roles=MONEY_ROLES,
    body=FeePayment,
    idempotent=True,
    require_key=True,
    status=201,
)
def propose_fee_payment(merchant_id: int, body: FeePayment):
    """Record money the merchant paid against its billed service fees (never more than billed and unpaid); it
    moves nothing until another operator approves it (``/deposit-proposals/<id>/approve``)."""
    proposal = deposit_ops.propose_top_up(
        actor(),
        merchant_id,
        body.amount_fen,
        body.reason[:200],
        current_app.config["FUND_FLOW"],
        purpose=ProposalPurpose.FEES,
        transfer_ref=body.transfer_ref,
    )
    return proposal_json(proposal), 201


@endpoint(bp, "/deposit-proposals", auth="operator", roles=ANY_OPERATOR, query=ProposalQuery)
def list_proposals(query: ProposalQuery):
    """Deposit top-up, withdrawal and fee payment proposals, newest first (``status=pending``: those awaiting a
    second operator; ``purpose=deposit|fees|withdrawal``). Merchant staff naming another merchant: 404, as for its
    other things."""
    if query.merchant_id is not None:
        visible_merchant(actor().operator, query.merchant_id)
    rows = deposit_ops.list_proposals(
        actor(), query.status, query.merchant_id, query.limit, query.offset, purpose=query.purpose
    )
    return {"items": [proposal_json(p) for p in rows]}


@endpoint(
    bp,
    "/deposit-proposals/<int:proposal_id>/approve",
    methods=["POST"],
    auth="operator",
    roles=MONEY_ROLES,
    body=Decision,
    idempotent=True,
)
def approve_top_up(proposal_id: int, body: Decision):
    """Approve another operator's proposal: the top-up (fee payment, withdrawal) posts now, once."""
    proposal, held = deposit_ops.approve_top_up(actor(), proposal_id, body.reason, current_app.config["FUND_FLOW"])
    if proposal.purpose == ProposalPurpose.FEES:
        return {**proposal_json(proposal), "billed_unpaid_fen": held}
    return {**proposal_json(proposal), "deposit_fen": held}


@endpoint(
    bp,
    "/deposit-proposals/<int:proposal_id>/reject",
    methods=["POST"],
    auth="operator",
    roles=MONEY_ROLES,
    body=Decision,
    idempotent=True,
)
def reject_top_up(proposal_id: int, body: Decision):
    """Reject a proposal: no money moves."""
    return proposal_json(deposit_ops.reject_top_up(actor(), proposal_id, body.reason))


@endpoint(bp, "/merchants/<int:merchant_id>/fee-rate", auth="operator", roles=ANY_OPERATOR)
def get_fee_rate(merchant_id: int):
    """The merchant's platform service fee in basis points (its own, or the default)."""
    visible_merchant(g.operator, merchant_id)
    default = MoneySettings.from_config(current_app.config).platform_fee_bps
    return {"merchant_id": merchant_id, "rate_bps": fee_rate(merchant_id, default), "default_bps": default}


@endpoint(
    bp,
    "/merchants/<int:merchant_id>/fee-rate",
    methods=["PUT"],
    auth="operator",
    roles=(OperatorRole.ADMIN,),
    body=FeeRate,
    idempotent=True,
)
def put_fee_rate(merchant_id: int, body: FeeRate):
    """Set the merchant's own service fee (orders paid from now on); audited."""
    row = set_fee_rate(actor(), merchant_id, body.rate_bps, body.reason)
    return {"merchant_id": merchant_id, "rate_bps": row.rate_bps}


@endpoint(bp, "/merchants/<int:merchant_id>/fee-invoices", auth="operator", roles=ANY_OPERATOR, query=Page)
def list_invoices(merchant_id: int, query: Page):
    """The merchant's monthly fee invoices, newest first, and its marketing credit now."""
    visible_merchant(g.operator, merchant_id)
    rows = db.session.execute(
        select(FeeInvoice)
        .where(FeeInvoice.merchant_id == merchant_id)
        .order_by(FeeInvoice.month.desc())
        .limit(query.limit)
        .offset(query.offset)
    ).scalars()
    return {
        "items": [invoice_json(i) for i in rows],
        "credit_fen": balance_if_any(ref(AccountKind.MERCHANT_MARKETING_CREDIT, "merchant", merchant_id)),  # a read
        "fees_paid_fen": fees_paid(merchant_id),  # approved fee payments, all months
        "billed_unpaid_fen": billed_unpaid(merchant_id),  # the invoices' due less what was paid
    }


@endpoint(
    bp,
    "/merchants/<int:merchant_id>/credit/spends",
    methods=["POST"],
    auth="operator",
    roles=MONEY_ROLES,
    body=CreditSpend,
    idempotent=True,
    require_key=True,
    status=201,
)
def post_credit_spend(merchant_id: int, body: CreditSpend):
    """Spend marketing credit on a promotion: into the merchant's deposit (for one of its campaigns)."""
    key = request.headers["Idempotency-Key"]
    entry, left = spend_credit(actor(), merchant_id, body.amount_fen, key, body.reason, body.campaign_id)
    return {
        "merchant_id": merchant_id,
        "entry_key": entry.idempotency_key,
        "credit_fen": left,
        "deposit_fen": balance(deposit_account(merchant_id)),
    }, 201
