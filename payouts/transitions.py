"""The payout state machine and the ledger movement of each transition.

    pending → sending → succeeded | unknown | waiting_user_confirm | failed | pending (retry, same number)
    unknown → sending (query first) …;  waiting_user_confirm → succeeded | failed | cancelled | unknown
    anything not terminal → needs_operator → pending (resend) | cancelled | succeeded | failed

Terminal states (succeeded, failed, cancelled) never change. Ledger: queued
money sits on rebate_payable; at the first send it moves to payout_in_transit;
success moves it out to WeChat settlement; failure or cancellation returns it
to its source account (the money is owed again). Each closes the flow.

A profit-sharing payout (service-provider mode) is the merchant's own order money: success moves it out of
the merchant's frozen money (``merchant_frozen_sales``), never the platform's settlement account, and a
failure or cancellation gives it back to the merchant (``merchant_own_sales``), never to the person's
balance at the platform, which the platform would pay out of its own account (二清). What that means for the
rebate is the rebate layer's, told through ``on_share_returned``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime

from sqlalchemy import func, select, update

from ledger import Batch, Leg, close_flow, post, ref
from models import AccountKind, LedgerAccount, LedgerPosting, Order, Payout, PayoutStatus, db
from models.payouts import TERMINAL, Rail

S = PayoutStatus
ALLOWED = {
    S.PENDING: {S.SENDING, S.CANCELLED, S.NEEDS_OPERATOR},
    S.SENDING: {S.SUCCEEDED, S.UNKNOWN, S.WAITING_USER_CONFIRM, S.FAILED, S.PENDING, S.NEEDS_OPERATOR, S.CANCELLED},
    S.UNKNOWN: {S.SENDING, S.SUCCEEDED, S.FAILED, S.WAITING_USER_CONFIRM, S.NEEDS_OPERATOR, S.CANCELLED},
    S.WAITING_USER_CONFIRM: {S.SENDING, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.UNKNOWN, S.NEEDS_OPERATOR},
    S.NEEDS_OPERATOR: {S.PENDING, S.UNKNOWN, S.SENDING, S.CANCELLED, S.SUCCEEDED, S.FAILED},
}


_SENDS: ContextVar[Batch | None] = ContextVar("payout_send_entries", default=None)


@contextmanager
def send_entries_together() -> Iterator[None]:
    """Inside it, ``mark_sent``'s entries are collected and written together at its end (one round trip
    per table for a recorder's whole group); any transition that reads or closes a flow writes them first."""
    batch = Batch()
    token = _SENDS.set(batch)
    try:
        yield
        batch.post()
    finally:
        _SENDS.reset(token)


def _sends_written() -> None:
    batch = _SENDS.get()
    if batch is not None and len(batch):
        batch.post()


class PayoutStateError(Exception):
    code = "payout_state"
    kind = "conflict"


def move(payout: Payout, to: PayoutStatus) -> None:
    if payout.status in TERMINAL:
        raise PayoutStateError(f"payout {payout.id} is {payout.status}; terminal states never change")
    if to != payout.status and to not in ALLOWED[PayoutStatus(payout.status)]:
        raise PayoutStateError(f"payout {payout.id} cannot go from {payout.status} to {to}")
    payout.status = to


def mark_sent(payout: Payout, now: datetime) -> None:
    """First hand-over to WeChat: the money moves to in-transit (once)."""
    if payout.sent_at is not None:
        return
    batch = _SENDS.get()
    # accounts by name (ids cached per process), the entry not read back: the recorder's hot path
    (post if batch is None else batch.add)(
        f"payout:{payout.id}:sent",
        f"payout {payout.external_no} sent",
        [
            Leg(ref(AccountKind.REBATE_PAYABLE), -payout.amount_fen, flow=payout.flow),
            Leg(ref(AccountKind.PAYOUT_IN_TRANSIT), payout.amount_fen, flow=payout.flow),
        ],
    )
    payout.sent_at = now


def _flow_holdings(payout: Payout) -> list[Leg]:
    """What each clearing account holds for this payout's flow, read from the postings themselves."""
    rows = db.session.execute(
        select(LedgerPosting.account_id, func.sum(LedgerPosting.amount))
        .where(LedgerPosting.flow == payout.flow)
        .group_by(LedgerPosting.account_id)
    ).all()
    return [Leg(db.session.get(LedgerAccount, acct), -int(total), flow=payout.flow) for acct, total in rows if total]


def frozen_ref(merchant_id: int):
    """The merchant's order money frozen at WeChat for profit sharing (service-provider mode)."""
    return ref(AccountKind.MERCHANT_FROZEN_SALES, "merchant", merchant_id)


def own_sales_ref(merchant_id: int):
    """The merchant's own claim on its frozen order money."""
    return ref(AccountKind.MERCHANT_OWN_SALES, "merchant", merchant_id)


# Told when a share to a person comes back to its merchant: ``handler(payout, amount_fen, merchant_id)`` in the
# caller's transaction. The rebate layer registers it (``rebate.share_debts``): payouts sit below it.
_SHARE_RETURNED: list[Callable[[Payout, int, int], None]] = []


def on_share_returned(handler: Callable[[Payout, int, int], None]) -> Callable[[Payout, int, int], None]:
    if handler not in _SHARE_RETURNED:
        _SHARE_RETURNED.append(handler)
    return handler


# Told when a payout its campaign funded (not from the person's balance: a coupon) comes back after a refund or a
# review took its rebate back while it was at WeChat, and is not sent again in full: ``handler(payout, fen)``, the
# fen it carried beyond what its rebate still pays, no longer the campaign's cost, in the caller's transaction. The
# rebate layer registers it (``rebate.clawbacks``): payouts sit below it.
_FUNDED_RETURNED: list[Callable[[Payout, int], None]] = []


def on_funded_payout_returned(handler: Callable[[Payout, int], None]) -> Callable[[Payout, int], None]:
    if handler not in _FUNDED_RETURNED:
        _FUNDED_RETURNED.append(handler)
    return handler


def funded_payout_returned(payout: Payout, fen: int) -> None:
    """Tell the rebate layer (``on_funded_payout_returned``) that ``fen`` of ``payout`` came back to its funder for
    good."""
    if not _FUNDED_RETURNED:
        raise RuntimeError("a funded payout came back but nothing gives its budget back: import rebate.clawbacks")
    for handler in _FUNDED_RETURNED:
        handler(payout, fen)


def _share_merchant(payout: Payout) -> int:
    return db.session.execute(select(Order.merchant_id).where(Order.id == payout.order_id)).scalar_one()


def mark_shared(
    payout: Payout, now: datetime, wechat_ref: str | None, memo: str, merchant_id: int | None = None
) -> None:
    """A share reached the person: the money left the merchant's frozen order money, not the platform's.
    ``merchant_id``: the order's merchant, when the caller has it (else read from the order)."""
    move(payout, S.SUCCEEDED)
    _sends_written()
    post(
        f"payout:{payout.id}:paid",
        memo,
        [
            Leg(ref(AccountKind.PAYOUT_IN_TRANSIT), -payout.amount_fen, flow=payout.flow),
            Leg(frozen_ref(merchant_id or _share_merchant(payout)), payout.amount_fen),
        ],
    )
    db.session.execute(
        update(Order)
        .where(Order.id == payout.order_id)
        .values(frozen_fen=Order.frozen_fen - payout.amount_fen)
        .execution_options(synchronize_session=False)
    )
    payout.finished_at, payout.wechat_ref, payout.lease_until = now, wechat_ref or payout.wechat_ref, None
    close_flow(payout.flow)


def mark_succeeded(
    payout: Payout, now: datetime, wechat_ref: str | None = None, *, finished_at: datetime | None = None
) -> None:
    """Paid: the money leaves transit; ``finished_at`` is WeChat's time of it when known (else ``now``). What went wrong
    on the way (``last_error``: an operator's hand-over, WeChat's raw answer) is over: the person reads no reason on a
    payout that arrived (the attempts keep the history)."""
    payout.last_error = None
    if payout.rail == Rail.PROFIT_SHARING:  # an operator's evidence, or WeChat's answer: the same booking
        mark_sent(payout, now)
        mark_shared(payout, now, wechat_ref, f"payout {payout.external_no} shared from the merchant's order money")
        return
    move(payout, S.SUCCEEDED)
    mark_sent(payout, now)
    _sends_written()  # the flow is closed below: its send entry first
    post(
        f"payout:{payout.id}:paid",
        f"payout {payout.external_no} paid",
        [
            Leg(ref(AccountKind.PAYOUT_IN_TRANSIT), -payout.amount_fen, flow=payout.flow),
            Leg(ref(AccountKind.WECHAT_SETTLEMENT), payout.amount_fen),
        ],
    )
    payout.finished_at, payout.wechat_ref = finished_at or now, wechat_ref or payout.wechat_ref
    payout.lease_until = None
    close_flow(payout.flow)


def mark_returned(payout: Payout, to: PayoutStatus, now: datetime, reason: str) -> None:
    """Failed or cancelled: the money goes back to where it came from and is owed again."""
    move(payout, to)
    _sends_written()
    legs = _flow_holdings(payout)  # wherever the money sits now: payable, or in transit
    returned, merchant_id = -sum(leg.amount for leg in legs), None
    if legs:
        if payout.rail == Rail.PROFIT_SHARING:  # the merchant's money: back to the merchant, not the person
            merchant_id = _share_merchant(payout)
            source = own_sales_ref(merchant_id)
        else:
            source = db.session.get(LedgerAccount, payout.source_account_id)
        post(
            f"payout:{payout.id}:{to}",
            f"payout {payout.external_no} {to}: {reason}"[:200],
            [*legs, Leg(source, returned)],
        )
    payout.finished_at, payout.last_error, payout.lease_until = now, reason, None
    close_flow(payout.flow)
    if merchant_id is not None and returned:
        if not _SHARE_RETURNED:
            raise RuntimeError("a share came back but nothing settles its rebate: import rebate.share_debts")
        for handler in _SHARE_RETURNED:
            handler(payout, returned, merchant_id)
