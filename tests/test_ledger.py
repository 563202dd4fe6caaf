"""Bookkeeping stories told through the ledger (after django-hordak's worked examples).

Sign convention: a positive posting credits the account (its holder is owed
more), a negative one debits it. Every story ends by asserting every balance.
"""

from decimal import Decimal

import pytest
from sqlalchemy import func, select, text

import ledger
from ledger import IdempotencyMismatch, LedgerError, Leg, UnbalancedEntry
from models import AccountKind, LedgerAccount, LedgerEntry, LedgerFlow, LedgerPosting, Unit, db
from tests.conftest import on_postgres

K = AccountKind


def postings_count() -> int:
    return db.session.execute(select(func.count(LedgerPosting.id))).scalar_one()


def entries_count() -> int:
    return db.session.execute(select(func.count(LedgerEntry.id))).scalar_one()


def bal(kind, owner_type=None, owner_id=None) -> int:
    return ledger.balance(ledger.account(kind, owner_type, owner_id))


@pytest.fixture
def books(app, make_merchant, make_user):
    """A merchant, a user and their accounts."""
    merchant = make_merchant("Noodle House")
    user = make_user()

    class Books:
        m = merchant
        u = user
        settlement = ledger.platform_account(K.WECHAT_SETTLEMENT)
        fund = ledger.platform_account(K.PLATFORM_MARKETING_FUND)
        deposit = ledger.account(K.MERCHANT_MARKETING_DEPOSIT, "merchant", merchant.id)
        credit = ledger.account(K.MERCHANT_MARKETING_CREDIT, "merchant", merchant.id)
        payable = ledger.account(K.MERCHANT_PAYABLE, "merchant", merchant.id)
        cash = ledger.account(K.USER_CASH, "user", user.id)
        rebate_payable = ledger.platform_account(K.REBATE_PAYABLE)
        in_transit = ledger.platform_account(K.PAYOUT_IN_TRANSIT)
        issuance = ledger.platform_account(K.POINTS_ISSUANCE)
        points = ledger.account(K.USER_POINTS, "user", user.id)

    db.session.commit()
    return Books


def all_fen_balances(b) -> dict[str, int]:
    accounts = [b.settlement, b.fund, b.deposit, b.credit, b.payable, b.cash, b.rebate_payable, b.in_transit]
    found = ledger.balances(accounts)
    return {a.kind: found[a.id] for a in accounts}


# --- accounts ------------------------------------------------------------------------------


def test_account_is_created_once_with_its_unit(app, make_merchant):
    merchant = make_merchant()
    first = ledger.account(K.MERCHANT_MARKETING_DEPOSIT, "merchant", merchant.id)
    again = ledger.account(K.MERCHANT_MARKETING_DEPOSIT, "merchant", merchant.id)
    points = ledger.account(K.USER_POINTS, "user", 1)
    assert first.id == again.id
    assert first.code == f"merchant_marketing_deposit:merchant:{merchant.id}"
    assert first.unit == Unit.FEN
    assert points.unit == Unit.POINT
    assert ledger.platform_account(K.WECHAT_SETTLEMENT).code == "wechat_settlement"
    assert db.session.execute(select(func.count(LedgerAccount.id))).scalar_one() == 3
    assert ledger.balance(first) == 0


def test_account_refuses_unknown_kind_and_half_owner(app):
    with pytest.raises(LedgerError):
        ledger.account("petty_cash")
    with pytest.raises(LedgerError):
        ledger.account(K.USER_CASH, "user", None)
    with pytest.raises(LedgerError):
        ledger.account(K.USER_CASH, None, 5)


# --- stories -------------------------------------------------------------------------------


def test_merchant_tops_up_deposit_consumer_pays_and_deposit_funds_packet_and_cashback(books):
    b = books
    # given a merchant that tops up a 1,000-yuan marketing deposit
    ledger.post_entry(
        "topup:1", "merchant tops up marketing deposit", [Leg(b.settlement, -100_000), Leg(b.deposit, 100_000)]
    )
    # when a consumer pays a 200-yuan order with the merchant's 10-yuan packet (paying 190)
    ledger.post_entry(
        "order:1:paid",
        "order paid with a packet",
        [Leg(b.settlement, -19_000), Leg(b.deposit, -1_000), Leg(b.payable, 20_000)],
    )
    # and the deposit funds a 5 % cashback of the 200-yuan order to the user's balance
    ledger.post_entry("order:1:cashback", "5 % cashback", [Leg(b.deposit, -1_000), Leg(b.cash, 1_000)])
    # and the platform credits the merchant 10 % marketing credit
    ledger.post_entry("order:1:credit", "10 % marketing credit", [Leg(b.fund, -2_000), Leg(b.credit, 2_000)])
    db.session.commit()

    # then
    assert all_fen_balances(b) == {
        "wechat_settlement": -119_000,
        "platform_marketing_fund": -2_000,
        "merchant_marketing_deposit": 98_000,
        "merchant_marketing_credit": 2_000,
        "merchant_payable": 20_000,
        "user_cash": 1_000,
        "rebate_payable": 0,
        "payout_in_transit": 0,
    }
    assert sum(all_fen_balances(b).values()) == 0
    assert entries_count() == 4
    assert postings_count() == 9
    report = ledger.check_ledger()
    assert report.ok and report.violations == [] and report.in_flight == []
    assert report.entries_checked == 4


def test_payout_flow_through_clearing_accounts_then_closed(books):
    b = books
    flow = "payout:42"
    ledger.post_entry("cashback:1", "cashback", [Leg(b.fund, -400), Leg(b.cash, 400)])
    # the user's balance is paid out as a WeChat change transfer
    ledger.post_entry("payout:42:owed", "payout owed", [Leg(b.cash, -400), Leg(b.rebate_payable, 400, flow)])
    ledger.post_entry(
        "payout:42:sent", "payout sent", [Leg(b.rebate_payable, -400, flow), Leg(b.in_transit, 400, flow)]
    )
    mid = ledger.check_ledger()
    assert mid.ok
    assert mid.in_flight == [f"flow {flow}: 400 in flight on payout_in_transit"]
    ledger.post_entry("payout:42:settled", "payout settled", [Leg(b.in_transit, -400, flow), Leg(b.settlement, 400)])
    ledger.close_flow(flow)
    db.session.commit()

    assert all_fen_balances(b) == {
        "wechat_settlement": 400,
        "platform_marketing_fund": -400,
        "merchant_marketing_deposit": 0,
        "merchant_marketing_credit": 0,
        "merchant_payable": 0,
        "user_cash": 0,
        "rebate_payable": 0,
        "payout_in_transit": 0,
    }
    assert db.session.get(LedgerFlow, flow).closed_at is not None
    report = ledger.check_ledger()
    assert report.ok and report.in_flight == [] and report.entries_checked == 4


def test_unfinished_flow_is_in_flight_not_a_violation(books):
    b = books
    ledger.post_entry("p:1:owed", "owed", [Leg(b.fund, -250), Leg(b.rebate_payable, 250, "payout:1")])
    db.session.commit()

    report = ledger.check_ledger()
    assert report.ok
    assert report.violations == []
    assert report.in_flight == ["flow payout:1: 250 in flight on rebate_payable"]
    assert bal(K.REBATE_PAYABLE) == 250
    assert bal(K.PLATFORM_MARKETING_FUND) == -250
    assert db.session.get(LedgerFlow, "payout:1").closed_at is None


def test_closed_flow_with_money_left_is_a_violation(books):
    b = books
    ledger.post_entry("p:2:owed", "owed", [Leg(b.fund, -250), Leg(b.rebate_payable, 250, "payout:2")])
    ledger.close_flow("payout:2")
    db.session.commit()

    report = ledger.check_ledger()
    assert not report.ok
    assert report.violations == ["closed flow payout:2 left 250 on rebate_payable"]
    assert report.in_flight == []

    # cleanup so the fixture's check passes: the money goes back
    ledger.post_entry("p:2:back", "back", [Leg(b.rebate_payable, -250, "payout:2"), Leg(b.fund, 250)])
    db.session.commit()
    assert ledger.check_ledger().ok
    assert bal(K.REBATE_PAYABLE) == 0
    assert bal(K.PLATFORM_MARKETING_FUND) == 0


def test_close_flow_that_never_opened_is_harmless(app):
    ledger.close_flow("payout:never")
    db.session.commit()
    assert ledger.check_ledger().ok
    assert db.session.get(LedgerFlow, "payout:never").closed_at is not None


def test_points_ledger_issues_and_spends_in_its_own_unit(books):
    b = books
    ledger.post_entry("points:1", "sign-in points", [Leg(b.issuance, -500), Leg(b.points, 500)])
    ledger.post_entry("points:2", "points spent", [Leg(b.points, -120), Leg(b.issuance, 120)])
    db.session.commit()
    assert ledger.balance(b.points) == 380
    assert ledger.balance(b.issuance) == -380
    entry = db.session.execute(select(LedgerEntry).filter_by(idempotency_key="points:1")).scalar_one()
    assert entry.unit == Unit.POINT
    assert ledger.check_ledger().ok
    # the same rules hold for points
    before = postings_count()
    with pytest.raises(UnbalancedEntry):
        ledger.post_entry("points:3", "bad", [Leg(b.issuance, -500), Leg(b.points, 499)])
    with pytest.raises(UnbalancedEntry):
        ledger.post_entry("points:4", "bad", [Leg(b.issuance, 0), Leg(b.points, 0)])
    with pytest.raises(IdempotencyMismatch):
        ledger.post_entry("points:1", "other", [Leg(b.issuance, -501), Leg(b.points, 501)])
    assert postings_count() == before
    assert ledger.balance(b.points) == 380


# --- post_entry refuses bad entries, changing nothing --------------------------------------


def bad_legs(b):
    return {
        "unbalanced": [Leg(b.fund, -100), Leg(b.cash, 99)],
        "zero leg": [Leg(b.fund, -100), Leg(b.cash, 100), Leg(b.deposit, 0)],
        "single leg": [Leg(b.cash, 100)],
        "no legs": [],
        "mixed units": [Leg(b.fund, -100), Leg(b.points, 100)],
        "clearing without flow": [Leg(b.fund, -100), Leg(b.rebate_payable, 100)],
        "float amount": [Leg(b.fund, -1.5), Leg(b.cash, 1.5)],
        "whole float amount": [Leg(b.fund, -100.0), Leg(b.cash, 100.0)],
        "decimal amount": [Leg(b.fund, Decimal(-1)), Leg(b.cash, Decimal(1))],
        "bool amount": [Leg(b.fund, -1), Leg(b.cash, True)],
        "string amount": [Leg(b.fund, "-1"), Leg(b.cash, "1")],
        "absurd amount": [Leg(b.fund, -(10**19)), Leg(b.cash, 10**19)],
    }


@pytest.mark.parametrize(
    "case",
    [
        "unbalanced",
        "zero leg",
        "single leg",
        "no legs",
        "mixed units",
        "clearing without flow",
        "float amount",
        "whole float amount",
        "decimal amount",
        "bool amount",
        "string amount",
        "absurd amount",
    ],
)
def test_post_entry_refuses(books, case):
    legs = bad_legs(books)[case]
    with pytest.raises(UnbalancedEntry):
        ledger.post_entry(f"bad:{case}", case, legs)
    db.session.commit()
    assert entries_count() == 0
    assert postings_count() == 0
    assert db.session.execute(select(func.count()).select_from(LedgerFlow)).scalar_one() == 0


@pytest.mark.parametrize("key", ["", "k" * 161, None, 7])
def test_post_entry_refuses_bad_keys(books, key):
    with pytest.raises(LedgerError):
        ledger.post_entry(key, "bad key", [Leg(books.fund, -1), Leg(books.cash, 1)])
    assert entries_count() == 0


@pytest.mark.parametrize("flow", ["", "f" * 65])
def test_post_entry_refuses_bad_flows(books, flow):
    with pytest.raises(LedgerError):
        ledger.post_entry("bad-flow", "bad flow", [Leg(books.fund, -1), Leg(books.rebate_payable, 1, flow)])
    assert entries_count() == 0


def test_same_key_twice_posts_once(books):
    b = books
    legs = [Leg(b.fund, -300), Leg(b.cash, 300)]
    first = ledger.post_entry("cashback:7", "cashback", legs)
    db.session.commit()
    second = ledger.post_entry("cashback:7", "cashback again", list(reversed(legs)))
    db.session.commit()
    assert second.id == first.id
    assert second.memo == "cashback"
    assert entries_count() == 1
    assert postings_count() == 2
    assert ledger.balance(b.cash) == 300


def test_same_key_with_different_legs_is_refused(books):
    b = books
    ledger.post_entry("cashback:8", "cashback", [Leg(b.fund, -300), Leg(b.cash, 300)])
    db.session.commit()
    for legs in (
        [Leg(b.fund, -301), Leg(b.cash, 301)],
        [Leg(b.deposit, -300), Leg(b.cash, 300)],
        [Leg(b.fund, -300), Leg(b.rebate_payable, 300, "flow-x")],
    ):
        with pytest.raises(IdempotencyMismatch) as info:
            ledger.post_entry("cashback:8", "cashback", legs)
        assert info.value.code == "ledger_key_reused"
    db.session.rollback()
    assert entries_count() == 1
    assert postings_count() == 2
    assert ledger.balance(b.cash) == 300
    assert ledger.balance(b.deposit) == 0


def test_reverse_entry_mirrors_and_keeps_the_original(books):
    b = books
    original = ledger.post_entry(
        "order:9:paid", "paid", [Leg(b.settlement, -9_500), Leg(b.deposit, -500), Leg(b.payable, 10_000)]
    )
    db.session.commit()
    reversal = ledger.reverse_entry(original, "order:9:refund", "refund")
    again = ledger.reverse_entry(original, "order:9:refund", "refund")
    db.session.commit()

    assert again.id == reversal.id
    assert reversal.reverses_id == original.id
    assert sorted((p.account_id, p.amount) for p in reversal.postings) == sorted(
        (p.account_id, -p.amount) for p in original.postings
    )
    assert [(p.amount) for p in db.session.get(LedgerEntry, original.id).postings] == [-9_500, -500, 10_000]
    assert ledger.balance(b.settlement) == 0
    assert ledger.balance(b.deposit) == 0
    assert ledger.balance(b.payable) == 0
    assert entries_count() == 2
    assert postings_count() == 6


def test_reverse_entry_keeps_the_flow(books):
    b = books
    owed = ledger.post_entry("p:5:owed", "owed", [Leg(b.cash, -100), Leg(b.rebate_payable, 100, "payout:5")])
    ledger.reverse_entry(owed, "p:5:failed", "payout failed, money owed again")
    ledger.close_flow("payout:5")
    db.session.commit()
    flows = db.session.execute(select(LedgerPosting.flow).where(LedgerPosting.flow.is_not(None))).scalars().all()
    assert flows == ["payout:5", "payout:5"]
    assert ledger.balance(b.cash) == 0
    assert ledger.balance(b.rebate_payable) == 0
    assert ledger.check_ledger().ok


def test_balances_reports_zero_for_untouched_accounts(books):
    b = books
    ledger.post_entry("x:1", "x", [Leg(b.fund, -7), Leg(b.cash, 7)])
    assert ledger.balances([b.fund, b.cash, b.deposit]) == {b.fund.id: -7, b.cash.id: 7, b.deposit.id: 0}
    db.session.commit()


# --- flask ledger check --------------------------------------------------------------------


def test_cli_ledger_check_exits_0_on_a_clean_ledger(app, books):
    b = books
    ledger.post_entry("x:1", "x", [Leg(b.fund, -7), Leg(b.cash, 7)])
    ledger.post_entry("x:2", "x", [Leg(b.fund, -5), Leg(b.rebate_payable, 5, "payout:9")])
    db.session.commit()
    result = app.test_cli_runner().invoke(args=["ledger", "check"])
    assert result.exit_code == 0, result.output
    assert "2 entries checked, 0 violations, 1 flows in flight" in result.output
    assert "in flight: flow payout:9: 5 in flight on rebate_payable" in result.output
    # cleanup
    ledger.post_entry("x:3", "x", [Leg(b.fund, 5), Leg(b.rebate_payable, -5, "payout:9")])
    db.session.commit()


def _execute_unguarded(sql: str, **params) -> None:
    """Raw SQL past the PostgreSQL balance trigger (replica role skips triggers)."""
    if on_postgres():
        db.session.execute(text("SET LOCAL session_replication_role = replica"))
    db.session.execute(text(sql), params)
    db.session.commit()


def test_cli_ledger_check_exits_1_on_a_planted_violation(app, books):
    b = books
    _execute_unguarded(
        "INSERT INTO ledger_entries (id, idempotency_key, memo, unit, created_at) "
        "VALUES (900, 'planted', 'planted', 'fen', CURRENT_TIMESTAMP)"
    )
    _execute_unguarded(
        "INSERT INTO ledger_postings (entry_id, account_id, amount) VALUES (900, :acct, 123)", acct=b.cash.id
    )
    result = app.test_cli_runner().invoke(args=["ledger", "check"])
    assert result.exit_code == 1
    assert "VIOLATION: entry 900 sums to 123, not zero" in result.output
    assert "1 entries checked, 1 violations" in result.output
    # cleanup so the fixture's check passes
    _execute_unguarded("DELETE FROM ledger_postings WHERE entry_id = 900")
    _execute_unguarded("DELETE FROM ledger_entries WHERE id = 900")
    assert app.test_cli_runner().invoke(args=["ledger", "check"]).exit_code == 0


def test_check_reports_empty_entries_and_unit_mismatch(app, books):
    b = books
    _execute_unguarded(
        "INSERT INTO ledger_entries (id, idempotency_key, memo, unit, created_at) "
        "VALUES (901, 'empty', 'empty', 'fen', CURRENT_TIMESTAMP)"
    )
    _execute_unguarded(
        "INSERT INTO ledger_entries (id, idempotency_key, memo, unit, created_at) "
        "VALUES (902, 'mixed', 'mixed', 'fen', CURRENT_TIMESTAMP)"
    )
    _execute_unguarded(
        "INSERT INTO ledger_postings (id, entry_id, account_id, amount) VALUES (950, 902, :a, -5), (951, 902, :b, 5)",
        a=b.fund.id,
        b=b.points.id,
    )
    report = ledger.check_ledger()
    assert report.violations == ["entry 901 has no postings", "posting 951 of entry 902 is in another unit"]
    _execute_unguarded("DELETE FROM ledger_postings WHERE entry_id = 902")
    _execute_unguarded("DELETE FROM ledger_entries WHERE id IN (901, 902)")
    assert ledger.check_ledger().ok


# --- a batch: many entries, one round trip per table ------------------------------------


def test_a_batch_posts_its_entries_once_and_a_repeat_is_compared_leg_by_leg(books):
    b = books
    cash, deposit = (
        ledger.ref(K.USER_CASH, "user", b.u.id),
        ledger.ref(K.MERCHANT_MARKETING_DEPOSIT, "merchant", b.m.id),
    )
    entries = [
        ("batch:1", [Leg(b.fund, -500), Leg(cash, 500)]),
        ("batch:2", [Leg(cash, -400), Leg(b.rebate_payable, 400, "payout:91")]),
        ("batch:3", [Leg(b.settlement, -900), Leg(deposit, 900)]),
    ]
    batch = ledger.Batch()
    for key, legs in entries:
        batch.add(key, key, legs)
    first = batch.post()
    db.session.commit()
    assert (entries_count(), postings_count()) == (3, 6)
    assert db.session.get(LedgerFlow, "payout:91") is not None
    # when: the same batch again (a retried payment), legs in another order and named otherwise
    again = ledger.Batch()
    for key, legs in entries:
        again.add(
            key,
            "again",
            [
                Leg(
                    ledger.account(leg.account.kind, leg.account.owner_type, leg.account.owner_id), leg.amount, leg.flow
                )
                for leg in reversed(legs)
            ],
        )
    assert again.post() == first
    assert (entries_count(), postings_count()) == (3, 6)
    # and one leg changed is refused, nothing written
    changed = ledger.Batch()
    changed.add("batch:4", "new", [Leg(b.fund, -1), Leg(cash, 1)])
    changed.add("batch:1", "changed", [Leg(b.fund, -501), Leg(cash, 501)])
    with pytest.raises(IdempotencyMismatch):
        changed.post()
    db.session.rollback()
    assert entries_count() == 3
    assert (ledger.balance(b.cash), ledger.balance(b.deposit)) == (100, 900)


def test_an_account_id_learnt_in_a_rolled_back_transaction_is_not_kept(app):
    # given: an account created in a transaction that rolls back (SQLite may give its id to the next one)
    first, other = ledger.ref(K.USER_CASH, "user", 990_001), ledger.ref(K.USER_CASH, "user", 990_002)
    ledger.account_id(first)
    db.session.rollback()
    # when: another account is created and committed, then the first one is asked for again
    kept = ledger.account_id(other)
    db.session.commit()
    again = ledger.account_id(first)
    db.session.commit()
    # then: each id names its own account
    assert db.session.get(LedgerAccount, kept).code == other.code
    assert db.session.get(LedgerAccount, again).code == first.code
    assert again != kept


def test_a_big_batch_posts_in_order_with_one_statement_text_for_every_size(books):
    """PostgreSQL posts a batch in one statement whose text is the same for any number of entries (array
    parameters): a batch of 2, then one of 162 entries (past the old 50-entry bound) with NULL and set flows, a
    reversal beside entries that reverse nothing, and a key posted before (compared, not written again). The ids
    follow the order the entries were added. SQLite takes its three statements."""
    from sqlalchemy import event

    b = books
    cash = ledger.ref(K.USER_CASH, "user", b.u.id)
    sent: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        sent.append(statement)

    def posted(batch: ledger.Batch) -> dict[str, int]:
        event.listen(db.engine, "before_cursor_execute", seen)
        try:
            return batch.post()
        finally:
            event.remove(db.engine, "before_cursor_execute", seen)

    small = ledger.Batch()
    small.add("big:first", "first", [Leg(b.fund, -7), Leg(cash, 7)])
    small.add("big:second", "second", [Leg(cash, -2), Leg(b.rebate_payable, 2, "payout:big:second")])
    first = posted(small)
    first_entry = db.session.get(LedgerEntry, first["big:first"])
    big, keys = ledger.Batch(), []
    for n in range(160):
        keys.append(f"big:{n}")
        flow = f"payout:big:{n}" if n % 3 == 0 else None
        legs = [Leg(cash, -1), Leg(b.rebate_payable, 1, flow)] if flow else [Leg(b.fund, -(n + 1)), Leg(cash, n + 1)]
        big.add(keys[-1], f"entry {n}", legs)
        if n == 80:
            keys.append("big:undo-first")
            big.add("big:undo-first", "undo", [Leg(b.fund, 7), Leg(cash, -7)], reverses=first_entry)
    big.add("big:first", "again", [Leg(cash, 7), Leg(b.fund, -7)])  # posted before, legs in another order
    ids = posted(big)
    db.session.commit()

    assert ids["big:first"] == first["big:first"]  # compared, not written again
    assert [ids[k] for k in keys] == sorted(ids[k] for k in keys)  # the new ones in the order added
    assert min(ids[k] for k in keys) > first["big:second"]
    assert db.session.get(LedgerEntry, ids["big:undo-first"]).reverses_id == first_entry.id
    assert db.session.get(LedgerEntry, ids["big:1"]).reverses_id is None
    assert entries_count() == 2 + 161
    assert db.session.get(LedgerFlow, "payout:big:159") is not None
    assert db.session.get(LedgerFlow, "payout:big:1") is None
    credited = sum(n + 1 for n in range(160) if n % 3)
    assert ledger.balance(b.cash) == 7 - 2 + credited - 54 - 7
    assert ledger.check_ledger().ok
    if on_postgres():
        writes = [s for s in sent if "INSERT INTO ledger_entries" in s]
        assert len(writes) == 2 and writes[0] == writes[1]  # one statement per batch, the same text for 2 and 162
