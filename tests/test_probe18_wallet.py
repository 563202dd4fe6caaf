"""Probes of the person's wallet and the user API (round 18): what a person is told of their money."""

from __future__ import annotations

from models import Order, Payout, db
from tests.concurrency import post_together
from tests.test_refunds import refund, story  # noqa: F401 - fixture
from tests.test_wallet import count, fund, ledger_ok, wallet_of


def test_the_order_view_explains_a_clawed_back_rebate_as_the_rebates_list_does(story, client, user_headers):
    # given: a 5-yuan balance rebate on a paid order, then the order refunded whole (the rebate is taken back)
    _, user, _, order = story()
    refund(order, "R-ALL", order.paid_fen)
    headers = user_headers(user)

    # when: the person opens the order, and the list of their rebates
    (in_order,) = client.get(f"/api/v1/orders/{order.id}", headers=headers).json["rebates"]
    (in_list,) = client.get("/api/v1/me/rebates", headers=headers).json["items"]

    # then: both say the 5 yuan was clawed back by the refund, not only that 5 yuan was awarded
    assert in_order["amount_fen"] == 0 and in_order["status"] == "clawed_back"
    assert "5.00 yuan clawed back: refund R-ALL" in in_order["explanation"], in_order["explanation"]
    assert in_order["explanation"] == in_list["explanation"]


def test_an_order_and_a_withdrawal_racing_for_one_balance_take_it_once(app, make_user, make_product, user_headers):
    # given: 5 yuan of balance; a 10-yuan order asking for all of it and a withdrawal of all of it, at once
    user = make_user(appid=app.config["WECHAT_APPID"])
    fund(user, cash_fen=5_00)
    product = make_product(price_fen=10_00)
    order = {"lines": [{"product_id": product.id, "quantity": 1}], "use_balance_fen": 5_00}
    requests = [
        ("/api/v1/orders", user_headers(user, **{"Idempotency-Key": "o-1"}), order),
        ("/api/v1/orders", user_headers(user, **{"Idempotency-Key": "o-2"}), order),
        ("/api/v1/me/withdrawals", user_headers(user, **{"Idempotency-Key": "w-1"}), {"amount_fen": 5_00}),
    ]

    # when
    answers = post_together(app, requests)

    # then: one of the three took the 5 yuan, the others were refused; never below zero, the books balanced
    assert sorted(answers) == [(201, None), (409, "insufficient_balance"), (409, "insufficient_balance")], answers
    db.session.rollback()
    assert count(Order) + count(Payout) == 1
    assert wallet_of(user)[:2] in ((0, 5_00), (0, 0))
    ledger_ok()
