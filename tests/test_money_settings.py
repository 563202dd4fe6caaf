"""The money settings are passed in by the shell: the ones given are the ones used, whatever the app's config says.

``MoneySettings`` (number prefix, payout minimum, point value) reaches ``rebate`` and ``payouts`` only as an
argument; forgetting it is a TypeError at the operation the shell calls, never the defaults in silence.
"""

from __future__ import annotations

import inspect

import pytest
from sqlalchemy import select

from ledger import Leg, account, balance, post_entry
from models import AccountKind, Order, Payout, Rebate, RebateAdjustment, db, utcnow
from payouts import MoneySettings
from payouts.operations import manual_payout, withdraw
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings, apply_result
from payouts.transitions import move
from rebate import (
    PayAccount,
    apply_payment,
    apply_refund,
    apply_refund_notice,
    begin_refund,
    create_order,
    issue_packet,
)
from rebate.milestones import report_milestone
from rebate.orders import LineRequest
from tests.payment_helpers import wechat_payment

CASH = {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "wechat_change", "cap_fen": 50_00}]}
POINTS = {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "points", "cap_fen": 50_00}]}


@pytest.fixture
def paid_with(app, make_campaign, make_user, make_product):
    """A 5-yuan packet spent on a 100-yuan order, paid through the intake with ``money``; the consumer earns
    10 % of the 95 yuan paid (9.50 yuan). Returns the consumer's rebate."""

    def pay(rules: dict, money: MoneySettings) -> Rebate:
        campaign = make_campaign(rules, budget_limit_fen=1_000_00, packet_amount_fen=5_00)
        buyer = make_user()
        packet = issue_packet(campaign, buyer, source="t", source_ref="m", now=utcnow())
        order = create_order(buyer, [LineRequest(make_product(price_fen=100_00).id, 1)], [packet.id], utcnow())
        db.session.commit()
        tx = wechat_payment(order.out_trade_no, "tx-m", order.payable_fen, success_time=utcnow())
        assert apply_payment(tx, PayAccount.from_config(app.config), utcnow(), money=money) == "applied"
        db.session.commit()
        return db.session.execute(select(Rebate).filter_by(order_id=order.id)).scalar_one()

    return pay


def payouts_of(rebate: Rebate) -> list[Payout]:
    return list(db.session.execute(select(Payout).filter_by(rebate_id=rebate.id)).scalars())


def test_the_number_prefix_passed_in_is_the_one_on_the_payout(app, paid_with):
    # given: the app says "APP"; the caller passes "S"
    app.config["WECHAT_NUMBER_PREFIX"] = "APP"
    # when
    rebate = paid_with(CASH, MoneySettings(number_prefix="S"))
    # then
    [payout] = payouts_of(rebate)
    assert (payout.amount_fen, payout.external_no) == (9_50, f"STB{payout.id:012d}")


def test_the_payout_minimum_passed_in_is_the_one_applied(app, paid_with):
    # given: the app would send 9.50 yuan (minimum 1 yuan); the caller's minimum is 10 yuan
    assert app.config["PAYOUT_MIN_FEN"] <= 9_50
    # when
    rebate = paid_with(CASH, MoneySettings(payout_min_fen=10_00))
    # then: it waits in the balance, and the rebate says why
    assert payouts_of(rebate) == []
    assert balance(account(AccountKind.USER_CASH, "user", rebate.beneficiary_id)) == 9_50
    assert "950 fen kept in your balance (payouts start at 1000 fen)" in rebate.reasons


def test_the_point_value_passed_in_prices_the_award_and_the_clawback(app, paid_with):
    # given: the app says a point costs 1 fen; the caller says 10
    app.config["POINT_VALUE_FEN"] = 1
    money = MoneySettings(point_value_fen=10)
    rebate = paid_with(POINTS, money)
    assert rebate.points == 95
    # when: the whole order is refunded with the same settings
    order = db.session.get(Order, rebate.order_id)
    begin_refund(order, "R-m", 95_00)
    apply_refund(order.out_trade_no, "R-m", 95_00, utcnow(), money=money)
    db.session.commit()
    # then: 95 points back are worth the whole 9.50 yuan (at 1 fen each, 8.55 yuan would be owed)
    [adjustment] = db.session.execute(select(RebateAdjustment).filter_by(rebate_id=rebate.id)).scalars()
    assert (adjustment.amount_fen, adjustment.recovered_fen, adjustment.receivable_fen) == (9_50, 9_50, 0)
    assert balance(account(AccountKind.USER_POINTS, "user", rebate.beneficiary_id)) == 0


def test_withdrawals_and_manual_payouts_take_the_prefix_passed_in(app, make_user, make_operator):
    app.config["WECHAT_NUMBER_PREFIX"] = "APP"
    user = make_user()
    cash = account(AccountKind.USER_CASH, "user", user.id)
    post_entry("fund:m", "rebate", [Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -5_00), Leg(cash, 5_00)])
    operator, _ = make_operator()
    # when
    out = withdraw(user, 5_00, 1_00, "k", money=MoneySettings(number_prefix="W"))
    gift = manual_payout(operator.id, user, 2_00, "wechat_change", "k", "sorry", 100_00, money=MoneySettings("M"))
    # then
    assert out.external_no == f"WTB{out.id:012d}" and gift.external_no == f"MTB{gift.id:012d}"


def test_the_dispatchers_retry_takes_the_prefix_of_its_settings(app, make_user, make_operator):
    # given: a transfer WeChat failed for good, under settings whose prefix is "F"
    app.config["WECHAT_NUMBER_PREFIX"] = "APP"
    user = make_user()
    operator, _ = make_operator()
    gift = manual_payout(operator.id, user, 2_00, "wechat_change", "k", "sorry", 100_00, money=MoneySettings())
    move(gift, "sending")
    settings = DispatchSettings(money=MoneySettings(number_prefix="F"))
    # when
    apply_result(gift, RailResult(Outcome.FAILED, "FAIL", "bank refused"), utcnow(), settings)
    # then: the retry is a new row with the prefix passed in
    retry = db.session.execute(select(Payout).filter_by(retry_of_id=gift.id)).scalar_one()
    assert retry.external_no == f"FTB{retry.id:012d}"


@pytest.mark.parametrize(
    "operation", [apply_payment, apply_refund_notice, apply_refund, report_milestone, withdraw, manual_payout]
)
def test_the_operations_the_shell_calls_require_the_money_settings(operation):
    money = inspect.signature(operation).parameters["money"]
    assert money.default is inspect.Parameter.empty and money.kind is inspect.Parameter.KEYWORD_ONLY


def test_forgetting_the_money_settings_is_a_type_error(app):
    with pytest.raises(TypeError, match="money"):
        apply_payment(wechat_payment("O-1", "tx", 1_00), PayAccount.from_config(app.config), utcnow())
    with pytest.raises(TypeError, match="money"):
        DispatchSettings()


def test_money_settings_are_built_from_the_config_by_the_shell():
    cfg = {"WECHAT_NUMBER_PREFIX": "STG1", "PAYOUT_MIN_FEN": 300, "POINT_VALUE_FEN": 5}
    assert MoneySettings.from_config(cfg) == MoneySettings("STG1", 300, 5)
    assert MoneySettings.from_config({}) == MoneySettings()
    with pytest.raises(ValueError, match="positive"):
        MoneySettings(point_value_fen=0)
