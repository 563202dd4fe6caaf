"""The ledger check: run by ``flask ledger check``, daily by a job, and after every test."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, literal_column, select, union_all

from models import (
    AccountKind,
    Campaign,
    LedgerAccount,
    LedgerBalanceMark,
    LedgerEntry,
    LedgerFlow,
    LedgerPosting,
    Order,
    OrderPacket,
    OrderStatus,
    PacketStatus,
    Receivable,
    RedPacket,
    db,
)
from models.ledger import CLEARING_KINDS
from models.rebates import SHARE_DEBT


@dataclass
class CheckReport:
    violations: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)
    entries_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations


def check_ledger(point_value_fen: int = 1) -> CheckReport:
    """Every check below; ``point_value_fen`` (``POINT_VALUE_FEN``) values a points balance against the debts owed
    back in fen."""
    report = CheckReport()
    report.entries_checked = db.session.execute(select(func.count(LedgerEntry.id))).scalar_one()
    _unbalanced_entries(report)
    _empty_entries(report)
    _unit_mismatches(report)
    _clearing_flows(report)
    _unexplained_negative_balances(report, point_value_fen)
    _packets_spent_twice(report)
    _reservations_without_packets(report)
    _wallet_holds(report)
    _frozen_order_money(report)
    _share_debts(report)
    _balance_marks(report)
    return report


def _unbalanced_entries(report: CheckReport) -> None:
    rows = db.session.execute(
        select(LedgerPosting.entry_id, func.sum(LedgerPosting.amount))
        .group_by(LedgerPosting.entry_id)
        .having(func.sum(LedgerPosting.amount) != 0)
    ).all()
    report.violations += [f"entry {entry_id} sums to {total}, not zero" for entry_id, total in rows]
    zero_legs = db.session.execute(select(LedgerPosting.id).where(LedgerPosting.amount == 0)).scalars().all()
    report.violations += [f"posting {pid} is zero" for pid in zero_legs]


def _empty_entries(report: CheckReport) -> None:
    rows = (
        db.session.execute(
            select(LedgerEntry.id).where(
                ~select(LedgerPosting.id).where(LedgerPosting.entry_id == LedgerEntry.id).exists()
            )
        )
        .scalars()
        .all()
    )
    report.violations += [f"entry {entry_id} has no postings" for entry_id in rows]


def _unit_mismatches(report: CheckReport) -> None:
    rows = db.session.execute(
        select(LedgerPosting.id, LedgerEntry.id)
        .join(LedgerEntry, LedgerEntry.id == LedgerPosting.entry_id)
        .join(LedgerAccount, LedgerAccount.id == LedgerPosting.account_id)
        .where(LedgerAccount.unit != LedgerEntry.unit)
    ).all()
    report.violations += [f"posting {pid} of entry {eid} is in another unit" for pid, eid in rows]


def _clearing_flows(report: CheckReport) -> None:
    clearing = select(LedgerAccount.id).where(LedgerAccount.kind.in_([k.value for k in CLEARING_KINDS]))
    no_flow = (
        db.session.execute(
            select(LedgerPosting.id).where(LedgerPosting.account_id.in_(clearing), LedgerPosting.flow.is_(None))
        )
        .scalars()
        .all()
    )
    report.violations += [f"clearing posting {pid} has no flow" for pid in no_flow]
    rows = db.session.execute(
        select(LedgerPosting.flow, LedgerAccount.code, LedgerFlow.closed_at, func.sum(LedgerPosting.amount))
        .join(LedgerFlow, LedgerFlow.ref == LedgerPosting.flow)
        .join(LedgerAccount, LedgerAccount.id == LedgerPosting.account_id)
        .where(LedgerPosting.account_id.in_(clearing))
        .group_by(LedgerPosting.flow, LedgerAccount.code, LedgerFlow.closed_at)
        .having(func.sum(LedgerPosting.amount) != 0)
    ).all()
    for ref, code, closed_at, total in rows:
        if closed_at is not None:
            report.violations.append(f"closed flow {ref} left {total} on {code}")
        else:
            report.in_flight.append(f"flow {ref}: {total} in flight on {code}")


# A person's balance goes below zero only as a receivable: a refund clawed back a rebate that had
# already left. Any other negative balance is money paid out twice (a raced withdrawal, say).
USER_RECEIVABLE_KIND = {AccountKind.USER_CASH: "cash", AccountKind.USER_POINTS: "points"}


def _unexplained_negative_balances(report: CheckReport, point_value_fen: int) -> None:
    for account_kind, receivable_kind in USER_RECEIVABLE_KIND.items():
        worth = point_value_fen if account_kind == AccountKind.USER_POINTS else 1  # a receivable is in fen
        owed = (
            select(func.coalesce(func.sum(Receivable.outstanding_fen), 0))
            .where(
                Receivable.beneficiary_type == "user",
                Receivable.beneficiary_id == LedgerAccount.owner_id,
                Receivable.kind == receivable_kind,
            )
            .scalar_subquery()
        )
        total = func.sum(LedgerPosting.amount)
        rows = db.session.execute(
            select(LedgerAccount.code, total, owed)
            .join(LedgerPosting, LedgerPosting.account_id == LedgerAccount.id)
            .where(LedgerAccount.kind == account_kind.value)
            .group_by(LedgerAccount.id, LedgerAccount.code, LedgerAccount.owner_id)
            .having(total < 0, -total * worth > owed)
        ).all()
        report.violations += [
            f"{code} is at {balance} (worth {balance * worth} fen) but only {receivable} fen is owed back as a "
            "receivable"
            for code, balance, receivable in rows
        ]
    # A merchant's marketing deposit is money it paid in; spending beyond it is money nobody funded.
    total = func.sum(LedgerPosting.amount)
    rows = db.session.execute(
        select(LedgerAccount.code, total)
        .join(LedgerPosting, LedgerPosting.account_id == LedgerAccount.id)
        .where(LedgerAccount.kind == AccountKind.MERCHANT_MARKETING_DEPOSIT.value)
        .group_by(LedgerAccount.id, LedgerAccount.code)
        .having(total < 0)
    ).all()
    report.violations += [f"{code} is overdrawn at {balance}: spent beyond what was paid in" for code, balance in rows]


def _packets_spent_twice(report: CheckReport) -> None:
    """A packet's discount may stand on one order that is not closed (a closed one gave it back)."""
    live = [OrderStatus.CREATED.value, OrderStatus.PAID.value]  # refunded in full: the packet may be restored
    rows = db.session.execute(
        select(OrderPacket.packet_id, func.count(OrderPacket.order_id))
        .join(Order, Order.id == OrderPacket.order_id)
        .where(Order.status.in_(live))
        .group_by(OrderPacket.packet_id)
        .having(func.count(OrderPacket.order_id) > 1)
    ).all()
    report.violations += [f"red packet {packet_id} discounts {n} live orders" for packet_id, n in rows]


def _reservations_without_packets(report: CheckReport) -> None:
    """A budget's reservation is held by its live packets; more reserved than they hold never comes back."""
    live = [PacketStatus.UNCLAIMED.value, PacketStatus.ISSUED.value, PacketStatus.LOCKED.value]
    held = (
        select(func.coalesce(func.sum(RedPacket.reserved_fen), 0))
        .where(RedPacket.campaign_id == Campaign.id, RedPacket.status.in_(live))
        .scalar_subquery()
    )
    rows = db.session.execute(
        select(Campaign.id, Campaign.budget_reserved_fen, held).where(Campaign.budget_reserved_fen > held)
    ).all()
    report.violations += [
        f"campaign {cid} reserves {reserved} fen but its live packets hold {packets}" for cid, reserved, packets in rows
    ]


# What a person's held account holds is exactly what their unpaid orders reserved (``rebate.wallet``): a hold
# left behind by a closed or paid order is money taken from them that nothing will release or spend.
WALLET_HOLDS = {AccountKind.USER_CASH_HELD: Order.balance_used_fen, AccountKind.USER_POINTS_HELD: Order.points_used}


def _wallet_holds(report: CheckReport) -> None:
    for kind, column in WALLET_HOLDS.items():
        rows = _side_by_side(kind, Order.user_id, column, Order.status == OrderStatus.CREATED.value, column > 0)
        for user_id, has, owes in rows:
            if has != owes:
                report.violations.append(
                    f"{kind.value} of user {user_id} holds {has} but their open orders reserve {owes}"
                )


def _frozen_order_money(report: CheckReport) -> None:
    """Service-provider mode: a merchant's frozen order money in our books is exactly what its orders still have
    frozen (``Order.frozen_fen``), and never above zero (money held at WeChat is below zero, as the platform's
    own ``wechat_settlement``): a share or a refund taken twice from it would show as a difference."""
    rows = _side_by_side(
        AccountKind.MERCHANT_FROZEN_SALES, Order.merchant_id, Order.frozen_fen, Order.frozen_fen.is_not(None)
    )
    for merchant_id, has, orders in rows:
        if has > 0:
            report.violations.append(f"merchant {merchant_id}'s frozen order money is above zero ({has})")
        if -has != orders:
            report.violations.append(
                f"merchant {merchant_id}'s frozen order money is {-has} in the ledger but its orders hold {orders}"
            )


def _share_debts(report: CheckReport) -> None:
    """What persons owe merchants for shares clawed back after they were paid: each person's
    ``user_owes_merchants`` is exactly minus their outstanding ``share`` receivables, and never above zero."""
    rows = _side_by_side(
        AccountKind.USER_OWES_MERCHANTS,
        Receivable.beneficiary_id,
        Receivable.outstanding_fen,
        Receivable.beneficiary_type == "user",
        Receivable.kind == SHARE_DEBT,
    )
    for user_id, has, receivable in rows:
        if has > 0:
            report.violations.append(f"user {user_id} is owed {has} by merchants: a share debt above zero")
        if -has != receivable:
            report.violations.append(
                f"user {user_id} owes merchants {-has} in the ledger but {receivable} as share receivables"
            )


def _side_by_side(kind: AccountKind, owner, amount, *where) -> list[tuple[int, int, int]]:
    """(owner id, the balance of that owner's account of ``kind``, the sum of ``amount`` over the rows ``where``
    picks by their ``owner``) of every owner in either (accounts with postings only), by owner id: ONE statement.
    On PostgreSQL each statement of a READ COMMITTED transaction sees what was committed when it began: with the
    balances read first and the orders next, an order paid in between (its hold spent and its status paid, in one
    transaction) showed in one and not in the other: a violation at every busy moment, and the daily job's alert."""
    booked = (
        select(
            LedgerAccount.owner_id.label("owner"),
            LedgerPosting.amount.label("booked"),
            literal_column("0").label("other"),
        )
        .join(LedgerPosting, LedgerPosting.account_id == LedgerAccount.id)
        .where(LedgerAccount.kind == kind.value)
    )
    other = select(owner.label("owner"), literal_column("0").label("booked"), amount.label("other")).where(*where)
    both = union_all(booked, other).subquery()
    rows = db.session.execute(
        select(both.c.owner, func.sum(both.c.booked), func.sum(both.c.other))
        .group_by(both.c.owner)
        .order_by(both.c.owner)
    ).all()
    return [(owner_id, int(has or 0), int(theirs or 0)) for owner_id, has, theirs in rows]


def _balance_marks(report: CheckReport) -> None:
    """Every account's balance mark (``ledger.marks``) is the sum of its postings up to the mark's posting."""
    mark = LedgerBalanceMark
    summed = (
        select(func.coalesce(func.sum(LedgerPosting.amount), 0))
        .where(LedgerPosting.account_id == mark.account_id, LedgerPosting.id <= mark.upto_posting_id)
        .scalar_subquery()
    )
    rows = db.session.execute(
        select(mark.account_id, mark.balance, mark.upto_posting_id, summed).where(mark.balance != summed)
    ).all()
    report.violations += [
        f"account {account_id}'s balance mark holds {held} up to posting {upto}; its postings sum to {total}"
        for account_id, held, upto, total in rows
    ]
