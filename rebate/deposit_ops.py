"""Money a merchant pays in, as operators record it: a deposit top-up, or a payment of its billed service fees,
is proposed by one operator and approved by another (four eyes), scoped and audited.

A fee payment (``purpose="fees"``) is the platform's own income, not a merchant's money held for it: it is
taken in both fund flows, never above what its invoices billed and it has not paid (409
``fee_payment_exceeds_billed``, checked when proposed and again, under a lock, when approved); approving
posts ``feepay:<merchant>:proposal:<id>`` (``rebate.fees.record_fee_payment``).

Proposing records a ``DepositProposal`` and moves no money. Approving locks the proposal's row, refuses the
operator who proposed it, and posts the top-up once (ledger key ``deposit:<merchant>:proposal:<id>``); a
rejection closes it with no money moved. A decided proposal is never decided again (409). In the
service-provider fund flow there are no deposits at all: the platform never takes a merchant's money into its
own account (二清), so proposing and approving are refused (409 ``deposits_not_in_service_provider_mode``).
Operations flush; the caller commits once.
"""

from __future__ import annotations

from sqlalchemy import select

from models import DepositProposal, ProposalPurpose, ProposalStatus, db, utcnow
from models.operators import Actor, approval_refused_because, audit, merchant_scope
from rebate.deposits import top_up
from rebate.errors import Invalid, NotFound, StateConflict
from rebate.fees import record_fee_payment, refuse_overpayment
from rebate.scope import visible_merchant

SERVICE_PROVIDER = "service_provider"  # FUND_FLOW's value for the partner (sub-merchant) mode


def refuse_in_service_provider_mode(fund_flow: str) -> None:
    if fund_flow == SERVICE_PROVIDER:
        raise StateConflict(
            "FUND_FLOW=service_provider: merchant deposits are not taken. Each merchant is a WeChat Pay "
            "sub-merchant and its rebates leave its own order money by profit sharing; the platform never "
            "receives a merchant's money into its own account (二清, pooling merchants' funds, is forbidden)",
            code="deposits_not_in_service_provider_mode",
        )


def propose_top_up(
    actor: Actor,
    merchant_id: int,
    amount_fen: int,
    reason: str,
    fund_flow: str,
    purpose: str = ProposalPurpose.DEPOSIT,
) -> DepositProposal:
    """Money the merchant paid in for its marketing deposit (or against its billed fees: ``purpose="fees"``), as
    one operator records it: pending approval."""
    visible_merchant(actor.operator, merchant_id)
    if purpose not in (ProposalPurpose.DEPOSIT, ProposalPurpose.FEES):
        raise Invalid(f"unknown purpose {purpose!r}", code="invalid_purpose")
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen <= 0:
        raise Invalid("a payment must be a positive amount of fen", code="invalid_amount")
    if purpose == ProposalPurpose.DEPOSIT:
        refuse_in_service_provider_mode(fund_flow)
    else:
        refuse_overpayment(merchant_id, amount_fen)
    proposal = DepositProposal(
        merchant_id=merchant_id,
        amount_fen=amount_fen,
        purpose=purpose,
        reason=reason,
        status=ProposalStatus.PENDING,
        proposed_by=actor.operator.id,
        proposed_at=utcnow(),
    )
    db.session.add(proposal)
    db.session.flush()
    audit(
        actor,
        "merchant.deposit_propose" if purpose == ProposalPurpose.DEPOSIT else "merchant.fee_payment_propose",
        "deposit_proposal",
        proposal.id,
        reason,
        merchant_id=merchant_id,
        amount_fen=amount_fen,
    )
    return proposal


def approve_top_up(actor: Actor, proposal_id: int, reason: str, fund_flow: str) -> tuple[DepositProposal, int]:
    """A second operator approves: the top-up (or fee payment) posts now, once. Returns the proposal and the
    deposit's balance (a fee payment: what is still billed and unpaid)."""
    proposal = _pending(actor, proposal_id)
    fees = proposal.purpose == ProposalPurpose.FEES
    if not fees:
        refuse_in_service_provider_mode(fund_flow)
    if proposal.proposed_by == actor.operator.id:
        raise StateConflict(
            f"deposit proposal {proposal.id} was proposed by you: another operator must approve it",
            code="second_operator_required",
        )
    why = approval_refused_because(actor.operator, proposal.proposed_by, proposal.proposed_at, utcnow())
    if why:
        raise StateConflict(f"deposit proposal {proposal.id}: {why}", code="approver_not_independent")
    if fees:  # what is still billed and unpaid after it
        held = record_fee_payment(
            proposal.merchant_id, proposal.amount_fen, proposal.id, f"service fees paid: {proposal.reason}"
        )
    else:
        held = top_up(
            proposal.merchant_id, proposal.amount_fen, f"proposal:{proposal.id}", f"deposit top-up: {proposal.reason}"
        )
    _decide(actor, proposal, ProposalStatus.APPROVED, reason)
    audit(
        actor,
        "merchant.fee_payment" if fees else "merchant.deposit_top_up",
        "merchant",
        proposal.merchant_id,
        reason,
        proposal_id=proposal.id,
        amount_fen=proposal.amount_fen,
        proposed_by=proposal.proposed_by,
    )
    return proposal, held


def reject_top_up(actor: Actor, proposal_id: int, reason: str) -> DepositProposal:
    """Close a proposal with no money moved (the proposer may withdraw their own)."""
    proposal = _pending(actor, proposal_id)
    _decide(actor, proposal, ProposalStatus.REJECTED, reason)
    action = "merchant.deposit_reject" if proposal.purpose == ProposalPurpose.DEPOSIT else "merchant.fee_payment_reject"
    audit(actor, action, "deposit_proposal", proposal.id, reason, merchant_id=proposal.merchant_id)
    return proposal


def list_proposals(
    actor: Actor,
    status: str | None,
    merchant_id: int | None,
    limit: int,
    offset: int,
    *,
    purpose: str | None = None,
):
    """Proposals the operator may see, newest first (merchant staff: their own merchant's)."""
    stmt = select(DepositProposal).order_by(DepositProposal.id.desc()).limit(limit).offset(offset)
    if purpose is not None:
        stmt = stmt.where(DepositProposal.purpose == purpose)
    scope = merchant_scope(actor.operator)
    if scope is not None:
        stmt = stmt.where(DepositProposal.merchant_id == scope)
    if merchant_id is not None:
        stmt = stmt.where(DepositProposal.merchant_id == merchant_id)
    if status is not None:
        stmt = stmt.where(DepositProposal.status == status)
    return list(db.session.execute(stmt).scalars())


def _pending(actor: Actor, proposal_id: int) -> DepositProposal:
    """The proposal, row-locked and read as it is now; 404 outside the operator's scope, 409 once decided."""
    proposal = db.session.execute(
        select(DepositProposal)
        .where(DepositProposal.id == proposal_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    scope = merchant_scope(actor.operator)
    if proposal is None or (scope is not None and proposal.merchant_id != scope):
        raise NotFound(f"deposit proposal {proposal_id} not found")
    if proposal.status != ProposalStatus.PENDING:
        raise StateConflict(f"deposit proposal {proposal.id} is {proposal.status} already", code="proposal_decided")
    return proposal


def _decide(actor: Actor, proposal: DepositProposal, status: ProposalStatus, reason: str) -> None:
    """``decided_by`` is the second pair of eyes (never the proposer: a CHECK); a proposer withdrawing their own
    proposal decides nothing for anyone: it is closed with no decider, and the audit line names them."""
    withdrawn = status == ProposalStatus.REJECTED and actor.operator.id == proposal.proposed_by
    proposal.status, proposal.decided_at = status, utcnow()
    proposal.decided_by = None if withdrawn else actor.operator.id
    proposal.decision_reason = (f"withdrawn by its proposer: {reason}" if withdrawn else reason)[:200]
    db.session.flush()
