"""The consumer's wallet spent on an order (rebate/wallet.py): rebate balance and points reserved with the order,
released when it closes unpaid, spent on payment, given back in proportion on refund.

Every story checks the balances after each step and that ``check_ledger`` holds. Amounts in comments are yuan;
everything asserted is fen.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ledger import Leg, account, balance, check_ledger, post_entry
from models import AccountKind, LedgerEntry, Merchant, Order, Rebate, Receivable, User, UserStatus, db, utcnow
from rebate import apply_refund, begin_refund, close_order, create_order, issue_packet
from rebate.errors import Invalid, RebateError, StateConflict
from rebate.orders import LineRequest
from rebate.wallet import WalletAsk
from tests.money_helpers import app_money
from tests.payment_helpers import pay_as_wechat

K = AccountKind


def bal(kind, owner_type=None, owner_id=None) -> int:
    return balance(account(kind, owner_type, owner_id))


def wallet_of(user) -> tuple[int, int, int, int]:
    """(cash, cash held, points, points held) of a person."""
    return (
        bal(K.USER_CASH, "user", user.id),
        bal(K.USER_CASH_HELD, "user", user.id),
        bal(K.USER_POINTS, "user", user.id),
        bal(K.USER_POINTS_HELD, "user", user.id),
    )


def fund(user, cash_fen=0, points=0, tag="fund") -> None:
    """Give a person rebate balance (from the platform fund) and points (from issuance), as rebates would."""
    if cash_fen:
        post_entry(
            f"{tag}:cash:{user.id}",
            "test rebate",
            [Leg(account(K.PLATFORM_MARKETING_FUND), -cash_fen), Leg(account(K.USER_CASH, "user", user.id), cash_fen)],
        )
    if points:
        post_entry(
            f"{tag}:points:{user.id}",
            "test points",
            [Leg(account(K.POINTS_ISSUANCE), -points), Leg(account(K.USER_POINTS, "user", user.id), points)],
        )
    db.session.commit()


def ledger_ok() -> None:
    report = check_ledger()
    assert report.ok, report.violations


def refund(order, number, amount_fen):
    begin_refund(order, number, amount_fen)
    done = apply_refund(order.out_trade_no, number, amount_fen, utcnow(), refund_id=f"wx-{number}", money=app_money())
    db.session.commit()
    db.session.refresh(order)
    return done


def count(model) -> int:
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def post_order(client, headers, product, quantity=1, **extra):
    body = {"lines": [{"product_id": product.id, "quantity": quantity}], **extra}
    return client.post("/api/v1/orders", json=body, headers=headers)


def buy(user, product, quantity=1, packet=None, **ask):
    order = create_order(
        user, [LineRequest(product.id, quantity)], packet.id if packet else None, utcnow(), wallet=WalletAsk(**ask)
    )
    db.session.commit()
    return order


# --- the worked example --------------------------------------------------------------------------------


def test_worked_example_100_yuan_order_10_packet_5_balance_200_points_paid_then_refunded_30_percent_then_all(
    make_user, make_merchant, make_product, make_campaign, pay, client, user_headers
):
    # given: a merchant's 10-yuan packet campaign (platform-funded): the consumer earns 8 % of the ORDER TOTAL to
    # balance, the merchant 10 % of what was PAID as marketing credit; a point is worth 1 fen (POINT_VALUE_FEN)
    shop = make_merchant("fruit stall")
    fruit = make_product(shop, price_fen=100_00, category="fruit")
    campaign = make_campaign(
        {
            "roles": [
                {"role": "consumer", "rate_bps": 800, "base": "order_total", "form": "balance", "cap_fen": 20_00},
                {"role": "issuer", "rate_bps": 1000, "base": "paid", "form": "merchant_credit", "cap_fen": 20_00},
            ]
        },
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        packet_amount_fen=10_00,
        packet_merchant_id=shop.id,
    )
    carol = make_user()
    packet = issue_packet(campaign, carol, source="test", source_ref="carol", now=utcnow())
    fund(carol, cash_fen=20_00, points=500)
    assert wallet_of(carol) == (20_00, 0, 500, 0)
    fund_after_setup = bal(K.PLATFORM_MARKETING_FUND)
    assert fund_after_setup == -20_00

    # when: she orders 100 yuan with the packet, 5 yuan of balance and 200 points
    answer = post_order(
        client, user_headers(carol), fruit, red_packet_id=packet.id, use_balance_fen=5_00, use_points=200
    )

    # then: payable = 100 - 10 - 5 - 2 = 83 yuan; the answer says what was asked and used; both are reserved
    assert answer.status_code == 201, answer.json
    body = answer.json
    assert (body["total_fen"], body["discount_fen"], body["payable_fen"]) == (100_00, 10_00, 83_00)
    assert body["wallet"] == {
        "balance_fen": 5_00,
        "points_count": 200,
        "points_value_fen": 2_00,
        "returned_balance_fen": 0,
        "returned_points_count": 0,
        "asked": {"balance_fen": 5_00, "points_count": 200},
    }
    order = db.session.get(Order, body["id"])
    assert wallet_of(carol) == (15_00, 5_00, 300, 200)
    shown = client.get("/api/v1/me/wallet", headers=user_headers(carol)).json
    assert (shown["cash_fen"], shown["held_for_orders_fen"]) == (15_00, 5_00)
    assert (shown["points"], shown["points_held_for_orders"]) == (300, 200)
    ledger_ok()

    # when: WeChat is paid the 83 yuan
    assert pay(order) == "applied"
    db.session.refresh(order)

    # then: WeChat's paid amount is only the payable: the wallet is not "paid"
    assert (order.status, order.paid_fen) == ("paid", 83_00)
    rebates = {r.role: r for r in db.session.execute(select(Rebate).filter_by(order_id=order.id)).scalars()}
    assert rebates["consumer"].amount_fen == 8_00  # 8 % of the 100-yuan order total
    assert rebates["issuer"].amount_fen == 8_30  # 10 % of the 83 yuan paid (not of 90, nor of 100)
    # the held wallet was spent: her balance is what is left plus the rebate; points redeemed
    assert wallet_of(carol) == (15_00 + 8_00, 0, 300, 0)
    # the merchant's sale is the whole 100: WeChat 83 + packet 10 + balance 5 + the platform for the points 2
    assert bal(K.MERCHANT_PAYABLE, "merchant", shop.id) == 100_00
    assert bal(K.WECHAT_SETTLEMENT) == -83_00
    assert bal(K.PLATFORM_MARKETING_FUND) == fund_after_setup - 10_00 - 2_00 - 8_00 - 8_30
    assert bal(K.MERCHANT_MARKETING_CREDIT, "merchant", shop.id) == 8_30
    assert bal(K.POINTS_ISSUANCE) == -500 + 200
    ledger_ok()

    # when: 30 % of what was paid (24.90) is refunded
    refund(order, "W1", 24_90)

    # then: the wallet gets 30 % back (1.50 balance, 60 points); the rebates are clawed back on the new net
    # (paid 58.10, goods 70.00): consumer 8 % of 70 = 5.60 (2.40 back), issuer 10 % of 58.10 = 5.81 (2.49 back)
    assert (order.balance_returned_fen, order.points_returned) == (1_50, 60)
    db.session.refresh(rebates["consumer"])
    db.session.refresh(rebates["issuer"])
    assert (rebates["consumer"].amount_fen, rebates["issuer"].amount_fen) == (5_60, 5_81)
    assert wallet_of(carol) == (23_00 + 1_50 - 2_40, 0, 300 + 60, 0)
    assert bal(K.MERCHANT_PAYABLE, "merchant", shop.id) == 100_00 - 24_90 - 1_50 - 60
    assert bal(K.WECHAT_SETTLEMENT) == -83_00 + 24_90
    assert bal(K.PLATFORM_MARKETING_FUND) == fund_after_setup - 10_00 - 2_00 - 8_00 - 8_30 + 60 + 2_40 + 2_49
    assert bal(K.MERCHANT_MARKETING_CREDIT, "merchant", shop.id) == 5_81
    assert bal(K.POINTS_ISSUANCE) == -500 + 200 - 60
    ledger_ok()

    # and: the order shows it
    shown = client.get(f"/api/v1/orders/{order.id}", headers=user_headers(carol)).json
    assert shown["wallet"]["returned_balance_fen"] == 1_50
    assert shown["wallet"]["returned_points_count"] == 60

    # when: the rest (58.10) is refunded
    refund(order, "W2", 58_10)

    # then: all of the wallet is back (3.50 and 140 points more), every rebate clawed back, the packet's value
    # back with its funder: she holds exactly what she was given, and every account is back where it started
    assert (order.status, order.balance_returned_fen, order.points_returned) == ("refunded", 5_00, 200)
    assert wallet_of(carol) == (20_00, 0, 500, 0)
    assert bal(K.MERCHANT_PAYABLE, "merchant", shop.id) == 0
    assert bal(K.WECHAT_SETTLEMENT) == 0
    assert bal(K.PLATFORM_MARKETING_FUND) == fund_after_setup
    assert bal(K.MERCHANT_MARKETING_CREDIT, "merchant", shop.id) == 0
    assert bal(K.POINTS_ISSUANCE) == -500
    ledger_ok()


# --- capping and what the answer says ---------------------------------------------------------------------


def test_wallet_use_is_capped_so_one_fen_is_still_paid(make_user, make_product, client, user_headers):
    # given: a 10-yuan product and a person holding 20 yuan
    dave = make_user()
    fund(dave, cash_fen=20_00)
    product = make_product(price_fen=10_00)

    # when: she asks to spend all 20 yuan on it
    answer = post_order(client, user_headers(dave), product, use_balance_fen=20_00)

    # then: 9.99 is used, 0.01 is payable, and the answer says both what was asked and what was used
    assert answer.status_code == 201, answer.json
    assert answer.json["payable_fen"] == 1
    assert answer.json["wallet"]["balance_fen"] == 9_99
    assert answer.json["wallet"]["asked"] == {"balance_fen": 20_00, "points_count": 0}
    assert wallet_of(dave) == (10_01, 9_99, 0, 0)


def test_points_go_first_in_whole_points_and_balance_fills_the_rest(app, make_user, make_product, client, user_headers):
    # given: a point worth 3 fen, a 10-yuan order, a person with 10 yuan and 1000 points
    app.config["POINT_VALUE_FEN"] = 3
    erin = make_user()
    fund(erin, cash_fen=10_00, points=1000)
    product = make_product(price_fen=10_00)

    # when: she asks for 100 points (3 yuan) and all her balance
    answer = post_order(client, user_headers(erin), product, use_points=100, use_balance_fen=10_00)

    # then: 100 points worth 3.00 and 6.99 of balance: 1 fen left to pay
    assert answer.status_code == 201, answer.json
    wallet = answer.json["wallet"]
    assert (wallet["points_count"], wallet["points_value_fen"], wallet["balance_fen"]) == (100, 3_00, 6_99)
    assert answer.json["payable_fen"] == 1

    # when: another 10-yuan order asks for the 900 points left (27 yuan) and the 3.01 of balance left
    second = post_order(client, user_headers(erin), product, use_points=900, use_balance_fen=3_01)

    # then: 333 points (9.99) cover all but 1 fen, in whole points; no balance is needed
    assert second.status_code == 201, second.json
    wallet = second.json["wallet"]
    assert (wallet["points_count"], wallet["points_value_fen"], wallet["balance_fen"]) == (333, 9_99, 0)
    assert wallet_of(erin) == (10_00 - 6_99, 6_99, 1000 - 100 - 333, 100 + 333)


def test_an_order_with_a_packet_caps_the_wallet_after_the_packet(make_user, make_product, make_campaign):
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 100, "form": "balance", "cap_fen": 1_00}]}, packet_amount_fen=9_00
    )
    frank = make_user()
    packet = issue_packet(campaign, frank, source="test", source_ref="frank", now=utcnow())
    fund(frank, cash_fen=5_00)
    order = buy(frank, make_product(price_fen=10_00), packet=packet, balance_fen=5_00)
    assert (order.discount_fen, order.balance_used_fen, order.payable_fen) == (9_00, 99, 1)
    assert wallet_of(frank) == (4_01, 99, 0, 0)


# --- refusals: nothing written ------------------------------------------------------------------------------


def nothing_written(user, before_wallet, before_entries) -> None:
    db.session.rollback()
    assert count(Order) == 0
    assert count(LedgerEntry) == before_entries
    assert wallet_of(user) == before_wallet


@pytest.mark.parametrize(
    ("ask", "code"),
    [
        ({"use_balance_fen": 5_01}, "insufficient_balance"),
        ({"use_points": 101}, "insufficient_points"),
        ({"use_balance_fen": 1_00, "use_points": 101}, "insufficient_points"),
    ],
)
def test_asking_for_more_than_the_person_holds_is_409_and_writes_nothing(
    make_user, make_product, client, user_headers, ask, code
):
    gina = make_user()
    fund(gina, cash_fen=5_00, points=100)
    product = make_product(price_fen=50_00)
    before, entries = wallet_of(gina), count(LedgerEntry)

    answer = post_order(client, user_headers(gina), product, **ask)

    assert (answer.status_code, answer.json["error"]) == (409, code)
    nothing_written(gina, before, entries)


def test_a_balance_owed_back_cannot_be_spent(make_user, make_product, make_campaign, client, user_headers):
    # given: a person whose balance is below zero (a refund clawed back a rebate that had left)
    hank = make_user()
    post_entry(
        "owed",
        "clawback beyond the balance",
        [Leg(account(K.USER_CASH, "user", hank.id), -1_00), Leg(account(K.PLATFORM_MARKETING_FUND), 1_00)],
    )
    campaign = make_campaign({"roles": [{"role": "consumer", "rate_bps": 100, "form": "balance", "cap_fen": 1_00}]})
    db.session.add(
        Receivable(
            beneficiary_type="user", beneficiary_id=hank.id, kind="cash", campaign_id=campaign.id, outstanding_fen=1_00
        )
    )
    db.session.commit()
    answer = post_order(client, user_headers(hank), make_product(), use_balance_fen=1)
    assert (answer.status_code, answer.json["error"]) == (409, "insufficient_balance")
    assert "you hold 0.00" in answer.json["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("use_balance_fen", -1),
        ("use_balance_fen", 1.5),
        ("use_balance_fen", True),
        ("use_balance_fen", "100"),
        ("use_balance_fen", None),
        ("use_points", -5),
        ("use_points", 2.0),
        ("use_points", False),
        ("use_points", "10"),
        ("use_points", 10**14),
    ],
)
def test_a_bad_wallet_amount_is_422_naming_the_field(make_user, make_product, client, user_headers, field, value):
    ivan = make_user()
    fund(ivan, cash_fen=5_00, points=100)
    before, entries = wallet_of(ivan), count(LedgerEntry)

    answer = post_order(client, user_headers(ivan), make_product(), **{field: value})

    assert answer.status_code == 422, answer.json
    assert field in str(answer.json)
    nothing_written(ivan, before, entries)


@pytest.mark.parametrize(("balance_fen", "points"), [(-1, 0), (0, -1), (True, 0), (0, 1.0), (0, "1")])
def test_the_operation_refuses_bad_amounts_itself(balance_fen, points):
    with pytest.raises(Invalid) as refused:
        WalletAsk(balance_fen, points)
    assert refused.value.code in ("invalid_use_balance_fen", "invalid_use_points")


def test_a_banned_person_cannot_spend_their_wallet(make_user, make_product, client, user_headers):
    judy = make_user()
    fund(judy, cash_fen=5_00)
    headers = user_headers(judy)
    judy.status = UserStatus.BANNED
    db.session.commit()
    before, entries = wallet_of(judy), count(LedgerEntry)

    answer = post_order(client, headers, make_product(), use_balance_fen=1_00)

    assert (answer.status_code, answer.json["error"]) == (403, "user_banned")
    nothing_written(judy, before, entries)


def test_a_ban_seen_under_the_row_lock_refuses_the_operation(make_user, make_product):
    # the web layer refuses a banned person first; the operation sees a ban committed before its lock too
    kim = make_user()
    fund(kim, cash_fen=5_00)
    product = make_product()
    db.session.execute(
        User.__table__.update().where(User.__table__.c.id == kim.id).values(status=UserStatus.BANNED.value)
    )
    db.session.commit()
    before, entries = wallet_of(kim), count(LedgerEntry)
    with pytest.raises(RebateError) as refused:
        create_order(kim, [LineRequest(product.id, 1)], None, utcnow(), wallet=WalletAsk(1_00))
    assert (refused.value.code, refused.value.kind) == ("user_banned", "forbidden")
    nothing_written(kim, before, entries)


def test_service_provider_mode_refuses_wallet_use_and_says_why(app, make_user, make_product, client, user_headers):
    app.config["FUND_FLOW"] = "service_provider"
    leo = make_user()
    fund(leo, cash_fen=5_00, points=100)
    product = make_product()
    db.session.get(Merchant, product.merchant_id).sub_mchid = "1900000109"  # paid to it as a sub-merchant
    db.session.commit()
    before, entries = wallet_of(leo), count(LedgerEntry)

    for ask in ({"use_balance_fen": 1_00}, {"use_points": 10}):
        answer = post_order(client, user_headers(leo), product, **ask)
        assert (answer.status_code, answer.json["error"]) == (409, "wallet_not_in_service_provider_mode")
        assert "outside WeChat Pay" in answer.json["message"]
    nothing_written(leo, before, entries)

    # an order that spends nothing from the wallet is still taken
    plain = post_order(client, user_headers(leo), product, use_balance_fen=0, use_points=0)
    assert plain.status_code == 201
    assert plain.json["wallet"]["balance_fen"] == 0


# --- release on close, once -----------------------------------------------------------------------------


def test_closing_an_unpaid_order_gives_the_wallet_back_exactly_once(make_user, make_product):
    mia = make_user()
    fund(mia, cash_fen=5_00, points=100)
    order = buy(mia, make_product(price_fen=10_00), balance_fen=3_00, points=40)
    assert wallet_of(mia) == (2_00, 3_00, 60, 40)
    ledger_ok()

    close_order(order, utcnow())
    db.session.commit()
    assert order.status == "closed"
    assert wallet_of(mia) == (5_00, 0, 100, 0)
    # she is told, once
    assert told(mia) == [("wallet_returned", 3_00, 40, "未支付已关闭")]

    with pytest.raises(StateConflict):
        close_order(order, utcnow())
    db.session.rollback()
    assert wallet_of(mia) == (5_00, 0, 100, 0)
    assert len(told(mia)) == 1
    ledger_ok()


def told(user) -> list[tuple]:
    from models import Notice

    rows = db.session.execute(select(Notice).where(Notice.user_id == user.id).order_by(Notice.id)).scalars()
    return [(n.event, n.facts["amount_fen"], n.facts["points"], n.facts["reason"]) for n in rows]


def test_a_payment_after_the_close_moves_no_wallet_money(make_user, make_product):
    nina = make_user()
    fund(nina, cash_fen=5_00)
    order = buy(nina, make_product(price_fen=10_00), balance_fen=5_00)
    close_order(order, utcnow())
    db.session.commit()

    outcome = pay_as_wechat(order.out_trade_no, "tx-late", order.payable_fen, utcnow())
    db.session.commit()

    assert outcome == "paid_after_close"
    assert wallet_of(nina) == (5_00, 0, 0, 0)
    ledger_ok()


# --- refunds: in proportion, rounded down, cumulative ---------------------------------------------------------


def test_refunds_give_the_wallet_back_rounded_down_and_cumulatively(make_user, make_product, pay):
    # given: a 13.33-yuan order paying 10 yuan, 3.33 from the balance
    olga = make_user()
    fund(olga, cash_fen=3_33, points=7)
    order = buy(olga, make_product(price_fen=13_40), balance_fen=3_33, points=7)
    assert (order.payable_fen, order.balance_used_fen, order.points_used) == (10_00, 3_33, 7)
    pay(order)
    db.session.refresh(order)

    # when / then: a third at a time; each step gives back what the refunded total entitles, less what was given
    refund(order, "P1", 3_33)  # 333 * 333 // 1000 = 110; 7 * 333 // 1000 = 2
    assert (order.balance_returned_fen, order.points_returned) == (1_10, 2)
    refund(order, "P2", 3_33)  # 333 * 666 // 1000 = 221 (111 more); 7 * 666 // 1000 = 4 (2 more)
    assert (order.balance_returned_fen, order.points_returned) == (2_21, 4)
    assert wallet_of(olga) == (2_21, 0, 4, 0)
    refund(order, "P3", 3_34)  # the rest: all of it
    assert (order.balance_returned_fen, order.points_returned) == (3_33, 7)
    assert wallet_of(olga) == (3_33, 0, 7, 0)
    # each refund told her what came back
    assert told(olga) == [("wallet_returned", c, p, "已退款") for c, p in ((1_10, 2), (1_11, 2), (1_12, 3))]
    assert bal(K.MERCHANT_PAYABLE, "merchant", order.merchant_id) == 0
    ledger_ok()


def test_an_order_without_wallet_use_refunds_as_before(make_user, make_product, pay):
    pete = make_user()
    order = buy(pete, make_product(price_fen=10_00))
    pay(order)
    refund(order, "N1", 4_00)
    assert (order.balance_returned_fen, order.points_returned) == (0, 0)
    assert wallet_of(pete) == (0, 0, 0, 0)


# --- the database's own guards -----------------------------------------------------------------------------


def test_the_database_refuses_an_order_whose_amounts_do_not_add_up(make_user, make_product):
    quinn = make_user()
    order = buy(quinn, make_product(price_fen=10_00))
    for values in (
        {"balance_used_fen": 1_00},  # total != payable + discount + wallet
        {"balance_used_fen": 1_00, "payable_fen": 9_00, "balance_returned_fen": 2_00},  # more back than used
        {"points_used": 5, "payable_fen": 10_00},  # points without their value
    ):
        with pytest.raises(IntegrityError), db.session.begin_nested():
            db.session.execute(Order.__table__.update().where(Order.__table__.c.id == order.id).values(**values))
    db.session.rollback()


def test_the_ledger_check_finds_a_hold_no_open_order_explains(make_user):
    rosa = make_user()
    fund(rosa, cash_fen=1_00)
    stray = post_entry(
        "stray-hold",
        "a hold no order made",
        [Leg(account(K.USER_CASH, "user", rosa.id), -50), Leg(account(K.USER_CASH_HELD, "user", rosa.id), 50)],
    )
    db.session.commit()
    report = check_ledger()
    assert f"user_cash_held of user {rosa.id} holds 50 but their open orders reserve 0" in report.violations
    from ledger import reverse_entry

    reverse_entry(stray, "stray-hold:undo", "undo")
    db.session.commit()
    ledger_ok()


# --- the trace shows it -------------------------------------------------------------------------------------


def test_the_trace_shows_the_wallet_amounts(make_user, make_product, make_operator, client, pay):
    sam = make_user()
    fund(sam, cash_fen=2_00, points=50)
    order = buy(sam, make_product(price_fen=10_00), balance_fen=2_00, points=50)
    pay(order)
    refund(order, "T1", order.paid_fen)
    _, headers = make_operator("admin")

    traced = client.get(f"/admin/api/trace/orders/{order.id}", headers=headers).json

    assert traced["order"]["balance_used_fen"] == 2_00
    assert (traced["order"]["points_used"], traced["order"]["points_value_fen"]) == (50, 50)
    assert (traced["order"]["balance_returned_fen"], traced["order"]["points_returned"]) == (2_00, 50)
    assert "2.00 yuan (200 fen) from the rebate balance, 50 points worth 0.50 yuan (50 fen)" in traced["lines"][0]
