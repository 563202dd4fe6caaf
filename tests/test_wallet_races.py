"""Races for one person's wallet, on PostgreSQL and SQLite alike: orders spending one balance or one pile of
points at once, and an order racing a withdrawal. The reservation is taken under the person's row lock (the one
withdrawals, challenge stakes and clawbacks take), so nothing is ever spent twice.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from ledger import Leg, account, balance, check_ledger, post_entry
from models import AccountKind, Order, Payout, User, db, utcnow
from payouts.operations import PayoutError, withdraw
from rebate import create_order
from rebate.errors import RebateError
from rebate.orders import LineRequest
from rebate.wallet import WalletAsk
from tests.concurrency import is_row_locked, together
from tests.conftest import on_postgres
from tests.money_helpers import app_money

K = AccountKind


def fund(user_id: int, cash_fen: int = 0, points: int = 0) -> None:
    if cash_fen:
        post_entry(
            f"fund:cash:{user_id}",
            "test rebate",
            [Leg(account(K.PLATFORM_MARKETING_FUND), -cash_fen), Leg(account(K.USER_CASH, "user", user_id), cash_fen)],
        )
    if points:
        post_entry(
            f"fund:points:{user_id}",
            "test points",
            [Leg(account(K.POINTS_ISSUANCE), -points), Leg(account(K.USER_POINTS, "user", user_id), points)],
        )
    db.session.commit()


def bal(kind, user_id: int) -> int:
    return balance(account(kind, "user", user_id))


def order_with(user_id: int, product_id: int, ask: WalletAsk) -> Order:
    user = db.session.get(User, user_id)
    return create_order(user, [LineRequest(product_id, 1)], None, utcnow(), wallet=ask)


def outcomes(results: list) -> tuple[int, list[str]]:
    ok = sum(1 for r in results if not isinstance(r, Exception))
    refused = sorted(getattr(r, "code", repr(r)) for r in results if isinstance(r, Exception))
    return ok, refused


def test_six_orders_racing_for_one_balance_spend_it_exactly_once(app, make_user, make_product):
    # given: a person holding 10 yuan; six orders of 20 yuan each asking for 5 yuan of it
    user_id = make_user().id
    product_id = make_product(price_fen=20_00).id
    fund(user_id, cash_fen=10_00)

    # when: they are placed at the same instant
    results = together(6, lambda _: order_with(user_id, product_id, WalletAsk(5_00)).id, app=app)

    # then: two are taken, four refused for the balance; nothing is overdrawn
    ok, refused = outcomes(results)
    assert (ok, refused) == (2, ["insufficient_balance"] * 4)
    db.session.rollback()
    assert (bal(K.USER_CASH, user_id), bal(K.USER_CASH_HELD, user_id)) == (0, 10_00)
    assert db.session.execute(select(func.count()).select_from(Order)).scalar_one() == 2
    assert check_ledger().ok


def test_orders_racing_for_one_pile_of_points_spend_it_exactly_once(app, make_user, make_product):
    user_id = make_user().id
    product_id = make_product(price_fen=20_00).id
    fund(user_id, points=150)

    results = together(4, lambda _: order_with(user_id, product_id, WalletAsk(points=100)).id, app=app)

    ok, refused = outcomes(results)
    assert (ok, refused) == (1, ["insufficient_points"] * 3)
    db.session.rollback()
    assert (bal(K.USER_POINTS, user_id), bal(K.USER_POINTS_HELD, user_id)) == (50, 100)
    assert check_ledger().ok


@pytest.mark.parametrize("rounds", range(3))
def test_an_order_and_a_withdrawal_racing_for_one_balance_take_it_once(app, make_user, make_product, rounds):
    # given: a person holding 10 yuan
    user_id = make_user().id
    product_id = make_product(price_fen=20_00).id
    fund(user_id, cash_fen=10_00)

    # when: an order spending all of it and a withdrawal of all of it start together
    def work(i: int):
        if i == 0:
            return order_with(user_id, product_id, WalletAsk(10_00)).id
        return withdraw(db.session.get(User, user_id), 10_00, 1, f"race-{rounds}", money=app_money()).id

    results = together(2, work, app=app)

    # then: exactly one of them has the money; the other is refused; the balance never goes below zero
    ok, refused = outcomes(results)
    assert ok == 1
    assert refused in (["insufficient_balance"],)
    assert isinstance(next(r for r in results if isinstance(r, Exception)), (RebateError, PayoutError))
    db.session.rollback()
    assert bal(K.USER_CASH, user_id) == 0
    orders = db.session.execute(select(func.count()).select_from(Order)).scalar_one()
    payouts = db.session.execute(select(func.count()).select_from(Payout)).scalar_one()
    assert orders + payouts == 1
    assert bal(K.USER_CASH_HELD, user_id) == (10_00 if orders else 0)
    assert check_ledger().ok


@pytest.mark.skipif(not on_postgres(), reason="SQLite has no row locks: BEGIN IMMEDIATE serialises every writer")
def test_the_reservation_holds_the_persons_row_lock_until_the_commit(app, make_user, make_product):
    # given: a person with a balance
    user_id = make_user().id
    product_id = make_product(price_fen=20_00).id
    fund(user_id, cash_fen=10_00)
    probe = db.engine.connect()
    try:
        # when: an order reserves from it and has not committed yet
        order_with(user_id, product_id, WalletAsk(1_00))

        # then: the person's row is locked, as a withdrawal's, a stake's and a clawback's are
        assert is_row_locked(probe, select(User.id).where(User.id == user_id))
        db.session.rollback()
        assert not is_row_locked(probe, select(User.id).where(User.id == user_id))

        # and: an order spending nothing of the wallet takes no lock on the person
        order_with(user_id, product_id, WalletAsk())
        assert not is_row_locked(probe, select(User.id).where(User.id == user_id))
        db.session.rollback()
    finally:
        probe.close()
