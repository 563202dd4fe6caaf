"""Writing to the outbox. Every function flushes; none commits, none calls WeChat."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import and_, bindparam, insert, or_, select, update

from ledger import AccountRef, Batch, Leg, account, account_ids, close_flow, post_entry, ref
from models import AccountKind, LedgerAccount, Payout, PayoutStatus, db, utcnow
from models.payouts import Rail

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
    a manual payout waiting for its second approval).
    """
    request = PayoutRequest(rail, user_id, amount_fen, source, key, memo, number_prefix, rebate_id, order_id, extra)
    batch = Batch()
    (payout,) = enqueue_payouts([request], batch, load=True)
    batch.post()
    return payout


def enqueue_payouts(requests: list[PayoutRequest], batch: Batch, *, load: bool = False) -> list:
    """Payout rows for ``requests`` (one INSERT, then one executemany fixing each external number from its id);
    their queued entries go into ``batch``, written by the caller with the rest of its entries. Returns the rows
    (``load``) or just their ids and flows (no statement)."""
    if not requests:
        return []
    db.session.flush()  # the rows they name (a rebate, a retried payout) first
    sources = account_ids(r.source for r in requests)
    now = utcnow()
    rows = [
        {
            "rail": r.rail,
            "user_id": r.user_id,
            "amount_fen": r.amount_fen,
            "rebate_id": r.rebate_id,
            "order_id": r.order_id,
            "source_account_id": sources[r.source.code],
            "external_no": f"tmp-{r.key}"[-32:],  # unique until the row has its id: replaced just below
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
    inserted = db.session.execute(insert(table).returning(table.c.external_no, table.c.id), rows).tuples().all()
    ids = dict(inserted)
    numbered = [
        {"pid": ids[row["external_no"]], "no": external_no_for(r.rail, ids[row["external_no"]], r.number_prefix)}
        for row, r in zip(rows, requests, strict=True)
    ]
    db.session.execute(
        update(table).where(table.c.id == bindparam("pid")).values(external_no=bindparam("no")), numbered
    )
    payouts = [_Queued(n["pid"]) for n in numbered]
    payable = ref(AccountKind.REBATE_PAYABLE)
    for payout, r in zip(payouts, requests, strict=True):
        legs = [Leg(r.source, -r.amount_fen), Leg(payable, r.amount_fen, flow=payout.flow)]
        batch.add(f"payout:{payout.id}:queued", r.memo, legs)
    return [db.session.get(Payout, p.id) for p in payouts] if load else payouts


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
