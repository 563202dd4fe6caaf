"""Receivables the person's balance has covered since they were made: settled, with their budgets.

A clawback the person's balance cannot cover takes the balance below zero and keeps the rest as a ``cash`` (or
``points``) receivable on the campaign (``rebate.clawbacks``): the campaign's budget stays committed by it until it
comes back. The next rebate of that kind nets it (``rebate.awards.recover_receivables``). Money can also come back
to the balance some other way: a refund giving back the wallet's share of an order, an unpaid order's hold released
at its close, a payout returned to the balance, a red packet nobody opened, a challenge stake. The balance then
covers part or all of what is owed, and until it was settled the wallet showed a debt already paid and the
campaign's budget stayed committed by money its funder had back.

``settle_covered`` settles exactly what the balance covers now: what is owed beyond what the balance is below zero,
oldest receivable first, each campaign's budget released by it. The receivables are row-locked before the balance
is read, so a rebate netting them at the same time is seen whole. A concurrent clawback adds its own receivable for
what it takes the balance below zero; a concurrent spend needs a balance above zero, where everything owed is
covered anyway: settling never leaves the balance below zero by more than is owed (``flask ledger check``).

Called where the rebate layer gives money back (a refund's wallet share, an order's close); the payout layer below
cannot call it, so ``jobs.payouts.settle_covered_debts`` sweeps everyone who still owes every few minutes. Points
debts are kept in fen: a caller without a point's value (an order's close) settles them only where the points
balance is back at zero or above (then all of it is covered, whatever a point is worth); a part the job settles.
"""

from __future__ import annotations

from sqlalchemy import select

from ledger import balance, ref
from models import AccountKind, Receivable, db
from rebate.awards import KIND_OF_FORM, recover_receivables
from rebate.rules import Form

CASH, POINTS = KIND_OF_FORM[Form.BALANCE], KIND_OF_FORM[Form.POINTS]  # the receivable kinds a balance covers
KINDS = {CASH: AccountKind.USER_CASH, POINTS: AccountKind.USER_POINTS}
SWEEP = 500  # people per pass of the job


def settle_covered(user_id: int, point_value_fen: int | None) -> int:
    """Settle what the person's cash balance (and their points) covers of what they owe; flushes. Returns the fen
    settled. ``point_value_fen`` None: a points balance at zero or above covers every points debt whatever a point
    is worth, so that is settled; one still below zero covers a part only a point's value says, left to the job."""
    settled = 0
    for kind, account_kind in KINDS.items():
        if kind == POINTS and not point_value_fen and balance(ref(account_kind, "user", user_id)) < 0:
            continue  # (read again under the receivables' lock below)
        owed = sum(
            db.session.execute(
                select(Receivable.outstanding_fen)
                .where(
                    Receivable.beneficiary_type == "user",
                    Receivable.beneficiary_id == user_id,
                    Receivable.kind == kind,
                    Receivable.outstanding_fen > 0,
                )
                .with_for_update()
            ).scalars()
        )
        if not owed:
            continue
        below = max(0, -balance(ref(account_kind, "user", user_id)))
        if kind == POINTS and below:
            if not point_value_fen:  # below zero again (a clawback committed while we waited on the lock)
                continue
            below *= point_value_fen  # points receivables are kept in fen (``rebate.clawbacks._points_back``)
        if owed > below:
            settled += recover_receivables("user", user_id, kind, owed - below)
    return settled


def people_owing(after: int = 0) -> list[int]:
    """Up to ``SWEEP`` people with a cash or points receivable outstanding, by id from ``after``."""
    return list(
        db.session.execute(
            select(Receivable.beneficiary_id)
            .where(
                Receivable.beneficiary_type == "user",
                Receivable.kind.in_(list(KINDS)),
                Receivable.outstanding_fen > 0,
                Receivable.beneficiary_id > after,
            )
            .group_by(Receivable.beneficiary_id)
            .order_by(Receivable.beneficiary_id)
            .limit(SWEEP)
        ).scalars()
    )
