"""The wallet through the real paths: an order paid at the simulated WeChat checkout (the notification pays only
the payable), and an expired one closed by the order job (at WeChat, then here: the wallet given back once)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from jobs.orders import close_expired_orders
from ledger import account, balance, check_ledger
from models import AccountKind, Order, User, db, utcnow
from tests.test_order_jobs import guarded_pay  # noqa: F401 - fixture: no WeChat call inside a transaction
from tests.test_simulator_e2e import app_settings, delivered, login, pay_at_checkout  # noqa: F401 - fixtures
from tests.test_wallet import fund, wallet_of
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture

K = AccountKind


def signed_in(client) -> tuple[dict, User]:
    headers = login(client, "wallet-user")
    user = db.session.execute(select(User).order_by(User.id.desc())).scalars().first()
    return headers, user


def test_a_wallet_order_paid_at_checkout_charges_only_the_payable(
    app,
    client,
    make_product,
    delivered,
    no_network,  # noqa: F811
):
    # given: a signed-in person with 3 yuan of balance and 100 points
    headers, user = signed_in(client)
    fund(user, cash_fen=3_00, points=100)
    product = make_product(price_fen=20_00)

    # when: she orders 20 yuan spending all of it, and pays at the checkout
    created = client.post(
        "/api/v1/orders",
        json={"lines": [{"product_id": product.id, "quantity": 1}], "use_balance_fen": 3_00, "use_points": 100},
        headers=headers,
    )
    assert created.status_code == 201, created.json
    assert created.json["payable_fen"] == 16_00
    assert simulator(app).orders[created.json["out_trade_no"]]["request"]["amount"]["total"] == 16_00
    pay_at_checkout(client, created.json["payment"])
    delivered()

    # then: WeChat took 16 yuan; the wallet paid the rest of the merchant's 20
    order = db.session.get(Order, created.json["id"])
    assert (order.status, order.paid_fen) == ("paid", 16_00)
    assert wallet_of(user) == (0, 0, 0, 0)
    assert balance_of(K.MERCHANT_PAYABLE, order.merchant_id) == 20_00
    assert check_ledger().ok


def balance_of(kind, merchant_id: int) -> int:
    return balance(account(kind, "merchant", merchant_id))


def test_an_expired_wallet_order_is_closed_by_the_job_and_gives_the_wallet_back_once(
    app,
    client,
    make_product,
    delivered,
    no_network,  # noqa: F811
):
    # given: an unpaid order holding 2 yuan of balance and 30 points
    headers, user = signed_in(client)
    fund(user, cash_fen=5_00, points=50)
    created = client.post(
        "/api/v1/orders",
        json={"lines": [{"product_id": make_product().id, "quantity": 1}], "use_balance_fen": 2_00, "use_points": 30},
        headers=headers,
    )
    assert created.status_code == 201, created.json
    assert wallet_of(user) == (3_00, 2_00, 20, 30)

    # when: it expires and the job runs (twice, as two nodes would)
    db.session.execute(
        update(Order).where(Order.id == created.json["id"]).values(time_expire=utcnow() - timedelta(minutes=1))
    )
    db.session.commit()
    assert close_expired_orders() == {"closed": 1}
    assert close_expired_orders() == {}

    # then: closed at WeChat and here, and everything is back with her
    db.session.rollback()
    assert db.session.get(Order, created.json["id"]).status == "closed"
    assert simulator(app).orders[created.json["out_trade_no"]]["trade_state"] == "CLOSED"
    assert wallet_of(user) == (5_00, 0, 50, 0)
    assert check_ledger().ok
