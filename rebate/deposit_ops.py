"""Money a merchant pays in, as operators record it: a deposit top-up, or a payment of its billed service fees,
is proposed by one operator and approved by another (four eyes), scoped and audited.

A fee payment (``purpose="fees"``) is the platform's own income, not a merchant's money held for it: it is
taken in both fund flows, never above what its invoices billed and it has not paid (409
``fee_payment_exceeds_billed``, checked when proposed and again, under a lock, when approved); approving
posts ``feepay:<merchant>:proposal:<id>`` (``rebate.fees.record_fee_payment``).

A withdrawal (``purpose="withdrawal"``) pays unspent deposit money back to the merchant by bank transfer. The
merchant asks for it outside (its staff move no money here); finance or an admin records it and another approves
it, in either fund flow (a deposit left from before a switch to service-provider mode goes back the same way).
Never what the deposit has promised: its live packets' reservations and held rebates (409
``withdrawal_exceeds_available``, when proposed and again, under the deposit's row lock, when approved, before
anything is written); approving posts ``deposit-withdrawal:<merchant>:proposal:<id>`` (the deposit down,
``wechat_settlement`` up: top-ups in reverse) and the transfer is sent under the recorded reference.

Each proposal names the bank transfer it records (``transfer_ref``: 4 to 64 letters, digits and ``. _ / -``,
starting with a letter or digit, kept in capitals; the API requires it of top-ups and withdrawals, a fee payment
may give it). One transfer is recorded once: a reference already on a proposal of the merchant for the same purpose
that is not rejected answers 409 ``transfer_ref_used`` naming it (a partial unique index holds it against two at
once); a rejected proposal frees its reference.

Proposing records a ``DepositProposal`` and moves no money. Approving locks the proposal's row, refuses the
operator who proposed it, and posts the top-up once (ledger key ``deposit:<merchant>:proposal:<id>``); a
rejection closes it with no money moved. A decided proposal is never decided again (409). In the
service-provider fund flow there are no deposits at all: the platform never takes a merchant's money into its
own account (二清), so proposing and approving are refused (409 ``deposits_not_in_service_provider_mode``).
Operations flush; the caller commits once.
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from models import DepositProposal, ProposalPurpose, ProposalStatus, db, utcnow
from models.operators import Actor, approval_refused_because, audit, merchant_scope
from rebate.deposits import refuse_beyond_free, top_up, withdraw, withdrawable
from rebate.errors import Invalid, NotFound, StateConflict
from rebate.fees import record_fee_payment, refuse_overpayment
from rebate.scope import visible_merchant

SERVICE_PROVIDER = "service_provider"  # FUND_FLOW's value for the partner (sub-merchant) mode
TRANSFER_REF = re.compile(r"[A-Z0-9][A-Z0-9._/-]{3,63}")
PURPOSES = (ProposalPurpose.DEPOSIT, ProposalPurpose.FEES, ProposalPurpose.WITHDRAWAL)
# audit actions: (proposed, approved, rejected)
ACTIONS = {
    ProposalPurpose.DEPOSIT: ("merchant.deposit_propose", "merchant.deposit_top_up", "merchant.deposit_reject"),
    ProposalPurpose.FEES: ("merchant.fee_payment_propose", "merchant.fee_payment", "merchant.fee_payment_reject"),
    ProposalPurpose.WITHDRAWAL: (
        "merchant.deposit_withdrawal_propose",
        "merchant.deposit_withdrawal",
        "merchant.deposit_withdrawal_reject",
    ),
}


def transfer_reference(raw: str | None, required: bool) -> str | None:
    """The bank transfer's reference as kept: stripped, in capitals; ``Invalid`` (``invalid_transfer_ref``) unless
    4 to 64 of ``A-Z 0-9 . _ / -`` starting with a letter or digit (or missing where not ``required``)."""
    text = raw.strip().upper() if isinstance(raw, str) else raw
    if text is None or text == "":
        if required:
            raise Invalid("transfer_ref: the bank transfer's reference is required", code="invalid_transfer_ref")
        return None
    if not isinstance(text, str) or not TRANSFER_REF.fullmatch(text):
        raise Invalid(
            "transfer_ref: 4 to 64 letters, digits and . _ / -, starting with a letter or digit",
            code="invalid_transfer_ref",
        )
    return text


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
    transfer_ref: str | None = None,
) -> DepositProposal:
    """Money the merchant paid in for its marketing deposit (or against its billed fees: ``purpose="fees"``), or
    deposit money to pay back to it (``purpose="withdrawal"``), as one operator records it: pending approval."""
    visible_merchant(actor.operator, merchant_id)
    if purpose not in PURPOSES:
        raise Invalid(f"unknown purpose {purpose!r}", code="invalid_purpose")
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen <= 0:
        raise Invalid("a payment must be a positive amount of fen", code="invalid_amount")
    transfer_ref = transfer_reference(transfer_ref, required=purpose == ProposalPurpose.WITHDRAWAL)
    if purpose == ProposalPurpose.DEPOSIT:
        refuse_in_service_provider_mode(fund_flow)
    elif purpose == ProposalPurpose.FEES:
        refuse_overpayment(merchant_id, amount_fen)
    else:  # told now; checked again, under the deposit's lock, when approved
        refuse_beyond_free(merchant_id, amount_fen, *withdrawable(merchant_id))
    _refuse_transfer_used(merchant_id, purpose, transfer_ref)
    proposal = DepositProposal(
        merchant_id=merchant_id,
        amount_fen=amount_fen,
        purpose=purpose,
        reason=reason,
        status=ProposalStatus.PENDING,
        proposed_by=actor.operator.id,
        proposed_at=utcnow(),
        transfer_ref=transfer_ref,
    )
    try:
        with db.session.begin_nested():  # another proposal of the same transfer committed meanwhile: 409 too
            db.session.add(proposal)
            db.session.flush()
    except IntegrityError:
        _refuse_transfer_used(merchant_id, purpose, transfer_ref)
        raise
    audit(
        actor,
        ACTIONS[purpose][0],
        "deposit_proposal",
        proposal.id,
        reason,
        merchant_id=merchant_id,
        amount_fen=amount_fen,
        **({"transfer_ref": transfer_ref} if transfer_ref else {}),
    )
    return proposal


def propose_withdrawal(
    actor: Actor, merchant_id: int, amount_fen: int, reason: str, fund_flow: str, transfer_ref: str | None
) -> DepositProposal:
    """Unspent deposit money to pay back to the merchant by the bank transfer ``transfer_ref``: pending approval."""
    return propose_top_up(
        actor, merchant_id, amount_fen, reason, fund_flow, purpose=ProposalPurpose.WITHDRAWAL, transfer_ref=transfer_ref
    )


def _refuse_transfer_used(merchant_id: int, purpose: str, transfer_ref: str | None) -> None:
    if transfer_ref is None:
        return
    used = db.session.execute(
        select(DepositProposal.id, DepositProposal.status).where(
            DepositProposal.merchant_id == merchant_id,
            DepositProposal.purpose == purpose,
            DepositProposal.transfer_ref == transfer_ref,
            DepositProposal.status != ProposalStatus.REJECTED,
        )
    ).first()
    if used is not None:
        raise StateConflict(
            f"bank transfer {transfer_ref} is recorded already for merchant {merchant_id} ({purpose}): deposit "
            f"proposal {used.id}, {used.status}; reject that one first if it was recorded by mistake",
            code="transfer_ref_used",
        )


def approve_top_up(actor: Actor, proposal_id: int, reason: str, fund_flow: str) -> tuple[DepositProposal, int]:
    """A second operator approves: the top-up (fee payment, withdrawal) posts now, once. Returns the proposal and
    the deposit's balance (a fee payment: what is still billed and unpaid)."""
    proposal = _pending(actor, proposal_id)
    fees = proposal.purpose == ProposalPurpose.FEES
    withdrawal = proposal.purpose == ProposalPurpose.WITHDRAWAL
    if proposal.purpose == ProposalPurpose.DEPOSIT:
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
    elif withdrawal:  # under the deposit's row lock; refused before anything is written
        held = withdraw(
            proposal.merchant_id,
            proposal.amount_fen,
            f"proposal:{proposal.id}",
            f"deposit withdrawal by bank transfer {proposal.transfer_ref}: {proposal.reason}",
        )
    else:
        held = top_up(
            proposal.merchant_id, proposal.amount_fen, f"proposal:{proposal.id}", f"deposit top-up: {proposal.reason}"
        )
    _decide(actor, proposal, ProposalStatus.APPROVED, reason)
    audit(
        actor,
        ACTIONS[proposal.purpose][1],
        "merchant",
        proposal.merchant_id,
        reason,
        proposal_id=proposal.id,
        amount_fen=proposal.amount_fen,
        proposed_by=proposal.proposed_by,
        **({"transfer_ref": proposal.transfer_ref} if proposal.transfer_ref else {}),
    )
    return proposal, held


def reject_top_up(actor: Actor, proposal_id: int, reason: str) -> DepositProposal:
    """Close a proposal with no money moved (the proposer may withdraw their own)."""
    proposal = _pending(actor, proposal_id)
    _decide(actor, proposal, ProposalStatus.REJECTED, reason)
    audit(
        actor, ACTIONS[proposal.purpose][2], "deposit_proposal", proposal.id, reason, merchant_id=proposal.merchant_id
    )
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
