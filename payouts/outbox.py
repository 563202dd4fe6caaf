"""Writing to the outbox. Every function flushes; none commits, none calls WeChat."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from functools import cache

from sqlalchemy import and_, bindparam, or_, select, update

from ledger import AccountRef, Batch, Leg, account, account_ids, close_flow, post_entry, ref
from models import AccountKind, LedgerAccount, Payout, PayoutStatus, db, utcnow
from models.orders import refund_open
from models.payouts import Rail
from models.sql import execute_core, insert_ignoring, insert_in_order

PREFIX = {
    Rail.WECHAT_CHANGE: "TB",
    Rail.CASH_RED_PACKET: "RP",
    Rail.WECHAT_COUPON: "CP",
    Rail.CARD_COUPON: "CD",
    Rail.PROFIT_SHARING: "PD",  # the payout's own number (its share's number is the order's "PS" number)
}


def external_no_for(rail: str, payout_id: int, number_prefix: str) -> str:
    """``mch_billno`` / ``out_bill_no`` / ``out_request_no``: letters and digits only, fixed per row.

    The environment prefix (``MoneySettings.number_prefix``, ≤ 8) + the rail tag (2) + 12 digits fits
    mch_billno's 28 characters.
    """
    return f"{number_prefix}{PREFIX[rail]}{payout_id:012d}"


@dataclass(frozen=True)
class PayoutRequest:
    """One payout to queue: the arguments of ``enqueue_payout`` (``extra`` as there)."""

    rail: str
    user_id: int
    amount_fen: int
    source: LedgerAccount | AccountRef
    key: str
    memo: str
    number_prefix: str
    rebate_id: int | None = None
    order_id: int | None = None
    extra: dict = field(default_factory=dict)


def enqueue_payout(
    *,
    rail: str,
    user_id: int,
    amount_fen: int,
    source: LedgerAccount | AccountRef,
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
    a manual payout waiting for its second approval) and needs_approval (it is held for that approval).
    """
    request = PayoutRequest(rail, user_id, amount_fen, source, key, memo, number_prefix, rebate_id, order_id, extra)
    batch = Batch()
    (payout,) = enqueue_payouts([request], batch, load=True)
    batch.post()
    if order_id is not None and refund_open(order_id):  # (a retry of a payout sent before the refund began)
        payout.held = True  # it waits for the refund, as ``hold_order_payouts`` holds those queued before it
    return payout


def enqueue_payouts(requests: list[PayoutRequest], batch: Batch, *, load: bool = False) -> list:
    """Payout rows for ``requests`` (one INSERT; where no trigger numbers them from their ids, as migration 0028's
    does on PostgreSQL, one executemany fixing each external number);
    their queued entries go into ``batch``, written by the caller with the rest of its entries. Returns the rows
    (``load``) or just their ids and flows (no statement)."""
    if not requests:
        return []
    db.session.flush()  # the rows they name (a rebate, a retried payout) first
    sources = account_ids(r.source for r in requests)
    now = utcnow()
    numbered_by_trigger = db.session.get_bind().dialect.name == "postgresql"
    rows = [
        {
            "rail": r.rail,
            "user_id": r.user_id,
            "amount_fen": r.amount_fen,
            "rebate_id": r.rebate_id,
            "order_id": r.order_id,
            "source_account_id": sources[r.source.code],
            "external_no": _placeholder(r, numbered_by_trigger),
            "status": PayoutStatus.PENDING.value,
            "held": False,
            "cancel_requested": False,
            "next_attempt_at": now,
            "attempts": 0,
            "created_at": now,
            "retry_of_id": None,
            "fallback_rail": None,
            "created_by_operator_id": None,
            "approved_by_operator_id": None,
            **r.extra,
        }
        for r in requests
    ]
    table = Payout.__table__
    if numbered_by_trigger:  # the numbers it wrote, in the order of ``rows``
        inserted = insert_in_order(table, rows, ("external_no", "id"))
    else:  # in any order: matched by the placeholders
        ids = dict(insert_ignoring(table, rows, (), ("external_no", "id")))
        inserted = [(row["external_no"], ids[row["external_no"]]) for row in rows]
    numbered = [
        {"pid": pid, "no": external_no_for(r.rail, pid, r.number_prefix), "was": no}
        for (no, pid), r in zip(inserted, requests, strict=True)
    ]
    unnumbered = [n for n in numbered if n["was"] != n["no"]]  # SQLite, or a database without the trigger
    if unnumbered:
        execute_core(_number_statement(), unnumbered)
    payouts = [_Queued(n["pid"]) for n in numbered]
    payable = ref(AccountKind.REBATE_PAYABLE)
    for payout, r in zip(payouts, requests, strict=True):
        legs = [Leg(r.source, -r.amount_fen), Leg(payable, r.amount_fen, flow=payout.flow)]
        batch.add(f"payout:{payout.id}:queued", r.memo, legs)
    return [db.session.get(Payout, p.id) for p in payouts] if load else payouts


@cache
def _number_statement():
    """The UPDATE giving queued payouts their external numbers where no trigger did (built once per process)."""
    table = Payout.__table__
    return update(table).where(table.c.id == bindparam("pid")).values(external_no=bindparam("no"))


def _placeholder(r: PayoutRequest, numbered_by_trigger: bool) -> str:
    """A payout's external number until its row has an id: unique, and on PostgreSQL in the form the insert trigger
    completes from the id (migration 0028: ``#<prefix><tag>#…`` becomes ``external_no_for``'s number); elsewhere
    replaced by an UPDATE right after the INSERT."""
    if numbered_by_trigger:
        return f"#{r.number_prefix}{PREFIX[r.rail]}#{secrets.token_hex(8)}"
    return f"tmp-{r.key}"[-32:]


@dataclass(frozen=True)
class _Queued:
    id: int

    @property
    def flow(self) -> str:
        return f"payout:{self.id}"


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
    A profit-sharing payout waiting for an operator (over the ratio, no share could carry it) was never
    handed over either: a refund shrinks it too, rather than taking from the person's other money.
    """
    waiting = and_(Payout.status == PayoutStatus.NEEDS_OPERATOR, Payout.rail == Rail.PROFIT_SHARING)
    stmt = select(Payout).where(
        Payout.rebate_id == rebate_id,
        or_(Payout.status == PayoutStatus.PENDING, waiting),
        Payout.request.is_(None),
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
