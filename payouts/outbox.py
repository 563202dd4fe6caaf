"""Writing to the outbox. Every function flushes; none commits, none calls WeChat."""

from __future__ import annotations

from sqlalchemy import select, update

from ledger import Leg, account, close_flow, post_entry
from models import AccountKind, LedgerAccount, Payout, PayoutStatus, db
from models.payouts import Rail

PREFIX = {Rail.WECHAT_CHANGE: "TB", Rail.CASH_RED_PACKET: "RP", Rail.WECHAT_COUPON: "CP", Rail.CARD_COUPON: "CD"}


def external_no_for(rail: str, payout_id: int, number_prefix: str) -> str:
    """``mch_billno`` / ``out_bill_no`` / ``out_request_no``: letters and digits only, fixed per row.

    The environment prefix (``MoneySettings.number_prefix``, ≤ 8) + the rail tag (2) + 12 digits fits
    mch_billno's 28 characters.
    """
    return f"{number_prefix}{PREFIX[rail]}{payout_id:012d}"


def enqueue_payout(
    *,
    rail: str,
    user_id: int,
    amount_fen: int,
    source: LedgerAccount,
    key: str,
    memo: str,
    number_prefix: str,
    rebate_id: int | None = None,
    order_id: int | None = None,
    **extra,
) -> Payout:
    """A payout row and the entry moving ``amount_fen`` from ``source`` into the payout's clearing flow.

    ``number_prefix``: the environment's (``MoneySettings.number_prefix``), passed in by the caller.

    ``extra``: retry_of_id, created_by_operator_id, approved_by_operator_id, status (``needs_operator`` for
    a manual payout waiting for its second approval).
    """
    payout = Payout(
        rail=rail,
        user_id=user_id,
        amount_fen=amount_fen,
        rebate_id=rebate_id,
        order_id=order_id,
        source_account_id=source.id,
        external_no=f"tmp-{key}"[-32:],
        **extra,
    )
    db.session.add(payout)
    db.session.flush()
    payout.external_no = external_no_for(rail, payout.id, number_prefix)
    payable = account(AccountKind.REBATE_PAYABLE)
    post_entry(
        f"payout:{payout.id}:queued", memo, [Leg(source, -amount_fen), Leg(payable, amount_fen, flow=payout.flow)]
    )
    db.session.flush()
    return payout


def hold_order_payouts(order_id: int) -> int:
    """Hold every payout of an order that has not left (a refund is pending)."""
    return db.session.execute(
        update(Payout).where(Payout.order_id == order_id, Payout.status == PayoutStatus.PENDING).values(held=True)
    ).rowcount


def release_order_payouts(order_id: int) -> int:
    return db.session.execute(
        update(Payout).where(Payout.order_id == order_id, Payout.held.is_(True)).values(held=False)
    ).rowcount


def pending_payouts_for_rebate(rebate_id: int) -> list[Payout]:
    """The rebate's payouts whose money has certainly not left (locked for update), newest first.

    Only payouts never handed to WeChat qualify: once a request was built and tried, WeChat may hold
    that number (a SYSTEMERROR retry, say), and it must be resent with the same amount or not at all.
    """
    stmt = select(Payout).where(
        Payout.rebate_id == rebate_id, Payout.status == PayoutStatus.PENDING, Payout.request.is_(None)
    )
    return list(db.session.execute(stmt.order_by(Payout.id.desc()).with_for_update()).scalars())


def cancel_or_reduce(payout: Payout, by_fen: int, refund_key: str, back_to: LedgerAccount) -> int:
    """Take up to ``by_fen`` back from a pending payout; returns what was taken.

    The money goes from the payout's clearing flow back to ``back_to``. A payout
    reduced to zero is cancelled and its flow closed.
    """
    taken = min(by_fen, payout.amount_fen)
    if taken <= 0:
        return 0
    payable = account(AccountKind.REBATE_PAYABLE)
    post_entry(
        f"payout:{payout.id}:reduce:{refund_key}",
        f"refund reduces payout {payout.id}",
        [Leg(payable, -taken, flow=payout.flow), Leg(back_to, taken)],
    )
    if taken == payout.amount_fen:  # the row keeps its amount; the status says it never left
        payout.status = PayoutStatus.CANCELLED
        close_flow(payout.flow)
    else:
        payout.amount_fen -= taken
    db.session.flush()
    return taken
