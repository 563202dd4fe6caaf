"""Random postings between random accounts never break the ledger's invariants."""

from itertools import count

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

import ledger
from ledger import LedgerError, Leg
from models import AccountKind, LedgerAccount, LedgerEntry, LedgerPosting, Unit, db

K = AccountKind
# (kind, owner) pairs: fen accounts, one clearing account, two point accounts.
ACCOUNTS = [
    (K.PLATFORM_MARKETING_FUND, None),
    (K.WECHAT_SETTLEMENT, None),
    (K.MERCHANT_MARKETING_DEPOSIT, ("merchant", 1)),
    (K.USER_CASH, ("user", 1)),
    (K.USER_CASH, ("user", 2)),
    (K.REBATE_PAYABLE, None),
    (K.POINTS_ISSUANCE, None),
    (K.USER_POINTS, ("user", 1)),
]
CLEARING = {i for i, (kind, _) in enumerate(ACCOUNTS) if kind == K.REBATE_PAYABLE}
POINTS = {i for i, (kind, _) in enumerate(ACCOUNTS) if kind in (K.POINTS_ISSUANCE, K.USER_POINTS)}
_keys = count(1)

leg_strategy = st.tuples(
    st.integers(0, len(ACCOUNTS) - 1),
    st.one_of(st.integers(-100_000, 100_000), st.sampled_from([0, 1, -1])),
    st.sampled_from([None, "flow-a", "flow-b"]),
)
entry_strategy = st.tuples(
    st.lists(leg_strategy, min_size=0, max_size=5),
    st.booleans(),  # balance the legs by adjusting the last one
    st.booleans(),  # repeat an earlier key
)


def accounts() -> list[LedgerAccount]:
    return [ledger.account(kind, *(owner or (None, None))) for kind, owner in ACCOUNTS]


def should_accept(legs: list[tuple[int, int, str | None]]) -> bool:
    if len(legs) < 2:
        return False
    if len({i in POINTS for i, _, _ in legs}) != 1:
        return False
    if any(amount == 0 for _, amount, _ in legs):
        return False
    if any(i in CLEARING and not flow for i, _, flow in legs):
        return False
    return sum(amount for _, amount, _ in legs) == 0


def balance_last(legs):
    if not legs:
        return legs
    *head, (i, _, flow) = legs
    return [*head, (i, -sum(a for _, a, _ in head), flow)]


def counts() -> tuple[int, int]:
    return (
        db.session.execute(select(func.count(LedgerEntry.id))).scalar_one(),
        db.session.execute(select(func.count(LedgerPosting.id))).scalar_one(),
    )


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(entry_strategy, min_size=1, max_size=8))
def test_random_postings_keep_every_invariant(app, entries):
    accts = accounts()
    expected = ledger.balances(accts)
    posted: list[tuple[str, list]] = []
    for raw_legs, balanced, repeat in entries:
        legs = balance_last(raw_legs) if balanced else raw_legs
        if repeat and posted:
            key, legs = posted[-1]
        else:
            key = f"prop:{next(_keys)}"
        accept = should_accept(legs)
        before = counts()
        try:
            entry = ledger.post_entry(key, "random", [Leg(accts[i], amount, flow) for i, amount, flow in legs])
        except LedgerError:
            assert not accept, legs
            assert counts() == before  # a refused entry changed nothing
            continue
        assert accept, legs
        assert sum(p.amount for p in entry.postings) == 0
        assert len({p.account.unit for p in entry.postings}) == 1
        if repeat and posted and key == posted[-1][0]:
            assert counts() == before  # a repeated key posts nothing
            continue
        assert counts() == (before[0] + 1, before[1] + len(legs))
        for i, amount, _ in legs:
            expected[accts[i].id] += amount
        posted.append((key, legs))
    db.session.commit()

    assert ledger.balances(accts) == expected
    for unit in (Unit.FEN, Unit.POINT):
        total = db.session.execute(
            select(func.coalesce(func.sum(LedgerPosting.amount), 0))
            .join(LedgerAccount, LedgerAccount.id == LedgerPosting.account_id)
            .where(LedgerAccount.unit == unit)
        ).scalar_one()
        assert total == 0, unit
    # A person's balance below zero with nothing owed back is exactly what the check must see
    # (money paid out twice); random postings make some. Top them up so the next example starts clean.
    # The same holds for a merchant's deposit spent beyond what it paid in.
    people = [
        i for i, (kind, _) in enumerate(ACCOUNTS) if kind in (K.USER_CASH, K.USER_POINTS, K.MERCHANT_MARKETING_DEPOSIT)
    ]
    overdrawn = {accts[i].code for i in people if expected[accts[i].id] < 0}
    report = ledger.check_ledger()
    assert {v.split(" ", 1)[0] for v in report.violations} == overdrawn, report.violations
    for i in people:
        if expected[accts[i].id] < 0:
            source = accts[ACCOUNTS.index((K.POINTS_ISSUANCE, None)) if i in POINTS else 0]
            owed = -expected[accts[i].id]
            ledger.post_entry(f"prop:{next(_keys)}", "top-up", [Leg(source, -owed), Leg(accts[i], owed)])
    db.session.commit()
    assert ledger.check_ledger().ok
