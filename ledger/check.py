"""The ledger check: run by ``flask ledger check``, daily by a job, and after every test."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select

from models import LedgerAccount, LedgerEntry, LedgerFlow, LedgerPosting, db
from models.ledger import CLEARING_KINDS


@dataclass
class CheckReport:
    violations: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)
    entries_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations


def check_ledger() -> CheckReport:
    report = CheckReport()
    report.entries_checked = db.session.execute(select(func.count(LedgerEntry.id))).scalar_one()
    _unbalanced_entries(report)
    _empty_entries(report)
    _unit_mismatches(report)
    _clearing_flows(report)
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
