"""The one payment intake and the one refund intake, called directly as the callback and the jobs call them.

``apply_payment(tx, expected, now, money=...)`` compares mchid, appid and amount once; each disagreement
flags the order with one alert and moves nothing. ``apply_refund_notice`` does the same for
refunds. The account compared with is the one passed in, never read from the app.
"""

from __future__ import annotations

import pytest
from flask import current_app
from sqlalchemy import select

from models import Alert, Order, PaymentNotification, Refund, db, utcnow
from rebate import PayAccount, apply_payment, apply_refund_notice, begin_refund
from tests.money_helpers import app_money
from tests.payment_helpers import wechat_payment
from tests.test_packets_orders import RESERVATION, RULES, give, order_for, packet_state
from tests.test_wechat_callbacks import table_counts
from wechat.transactions import Amount, RefundNotice


@pytest.fixture
def account(app) -> PayAccount:
    return PayAccount.from_config(app.config)


@pytest.fixture
def packet_order(make_campaign, make_user, make_product):
    """A 100-yuan order paying 90 with a 10-yuan packet whose campaign pays the buyer 5 %."""
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    buyer = make_user()
    packet = give(campaign, buyer)
    return order_for(buyer, make_product(price_fen=100_00), packet), packet


def paid(order: Order, **changes):
    return wechat_payment(order.out_trade_no, f"tx-{order.out_trade_no}", order.payable_fen, **changes)


def alerts() -> list[tuple[str, str]]:
    return [(a.kind, a.subject) for a in db.session.execute(select(Alert).order_by(Alert.id)).scalars()]


# -- payments ------------------------------------------------------------------------

MISMATCHES = {
    "mchid": ({"mchid": "1999999999"}, "mchid '1999999999' is not ours"),
    "appid": ({"appid": "wx-someone-else"}, "appid 'wx-someone-else' is not ours"),
    "amount": ({"amount": Amount(8_999, 8_999)}, "WeChat says 8999 fen was paid; the order asks 9000"),
}


@pytest.mark.parametrize("field", sorted(MISMATCHES))
def test_each_disagreement_is_flagged_once_and_moves_nothing(app, account, packet_order, field):
    # given
    order, packet = packet_order
    change, reason = MISMATCHES[field]
    before = table_counts()
    # when: WeChat says it twice (a notification and its retry)
    first = apply_payment(paid(order, **change), account, utcnow(), notification_id="N-1", money=app_money())
    db.session.commit()
    again = apply_payment(paid(order, **change), account, utcnow(), notification_id="N-1", money=app_money())
    db.session.commit()
    # then: flagged, one alert, not recorded as seen (WeChat is refused and retries), nothing else
    assert first == again == "mismatch_flagged"
    db.session.refresh(order)
    assert (order.status, order.review_reason, order.transaction_id) == ("created", reason, None)
    assert alerts() == [("payment_mismatch", order.out_trade_no)]
    after = table_counts()
    assert after.pop("alerts") == before.pop("alerts") + 1
    assert after == before  # no ledger entry, rebate, payout or notification
    assert packet_state(packet) == ("locked", order.user_id, RESERVATION, order.id)


def test_every_disagreement_is_named_in_one_flag(app, account, packet_order):
    order, _ = packet_order
    tx = paid(order, mchid="1999999999", appid="wx-someone-else", amount=Amount(1, 1))
    assert apply_payment(tx, account, utcnow(), money=app_money()) == "mismatch_flagged"
    db.session.commit()
    db.session.refresh(order)
    assert order.review_reason == (
        "mchid '1999999999' is not ours; appid 'wx-someone-else' is not ours; "
        "WeChat says 1 fen was paid; the order asks 9000"
    )
    assert len(alerts()) == 1


def test_the_account_compared_with_is_the_one_passed_in(app, packet_order):
    # given: a transaction that names the app's own settings
    order, _ = packet_order
    elsewhere = PayAccount(mchid="1888888888", appid=current_app.config["WECHAT_APPID"])
    # when: the caller says our account is another one
    outcome = apply_payment(paid(order), elsewhere, utcnow(), money=app_money())
    db.session.commit()
    # then
    assert outcome == "mismatch_flagged"
    assert db.session.get(Order, order.id).status == "created"


def test_an_agreeing_payment_is_applied_with_what_the_payer_paid(app, account, packet_order):
    order, packet = packet_order
    at = utcnow()
    outcome = apply_payment(
        paid(order, payer_total_fen=8_000, success_time=at), account, utcnow(), "N-1", money=app_money()
    )
    db.session.commit()
    assert outcome == "applied"
    db.session.refresh(order)
    assert (order.status, order.paid_fen, order.transaction_id, order.paid_at) == (
        "paid",
        8_000,
        f"tx-{order.out_trade_no}",
        at,
    )
    assert packet_state(packet)[0] == "used"
    [seen] = db.session.execute(select(PaymentNotification)).scalars()
    assert (seen.notification_id, seen.out_trade_no, seen.outcome) == ("N-1", order.out_trade_no, "applied")
    assert alerts() == []


def test_a_transaction_that_is_not_paid_changes_nothing(app, account, packet_order):
    order, _ = packet_order
    before = table_counts()
    tx = wechat_payment(order.out_trade_no, "", order.payable_fen, trade_state="NOTPAY", amount=None)
    assert apply_payment(tx, account, utcnow(), notification_id="N-1", money=app_money()) == "not_paid"
    db.session.commit()
    assert table_counts() == before
    assert db.session.get(Order, order.id).review_reason is None


def test_a_seen_notification_is_a_duplicate_before_anything_is_compared(app, account, packet_order):
    order, _ = packet_order
    assert apply_payment(paid(order), account, utcnow(), notification_id="N-1", money=app_money()) == "applied"
    db.session.commit()
    before = table_counts()
    # the same notification id again, even saying something else: answered, not looked at
    outcome = apply_payment(
        paid(order, mchid="1999999999"), account, utcnow(), notification_id="N-1", money=app_money()
    )
    db.session.commit()
    assert outcome == "duplicate_notification"
    assert table_counts() == before


# -- refunds -------------------------------------------------------------------------


@pytest.fixture
def refunding(app, account, packet_order):
    """The packet order, paid, with a 40-yuan refund asked of WeChat."""
    order, _ = packet_order
    assert apply_payment(paid(order), account, utcnow(), money=app_money()) == "applied"
    db.session.commit()
    refund = begin_refund(db.session.get(Order, order.id), "R-1", 40_00)
    db.session.commit()
    return db.session.get(Order, order.id), refund


def notice(order: Order, out_refund_no: str = "R-1", status: str = "SUCCESS", refund_fen: int = 40_00, **changes):
    fields = {
        "out_trade_no": order.out_trade_no,
        "out_refund_no": out_refund_no,
        "status": status,
        "refund_fen": refund_fen,
        "refund_id": "5030-1",
        "mchid": current_app.config["WECHAT_MCHID"],
        **changes,
    }
    return RefundNotice(**fields)


REFUND_MISMATCHES = {
    "mchid": (lambda order: notice(order, mchid="1999999999"), "refund_mismatch"),
    "amount": (lambda order: notice(order, refund_fen=41_00), "refund_amount_mismatch"),
}


@pytest.mark.parametrize("field", sorted(REFUND_MISMATCHES))
def test_a_refund_disagreement_is_flagged_once_and_moves_nothing(app, account, refunding, field):
    order, refund = refunding
    build, kind = REFUND_MISMATCHES[field]
    before = table_counts()
    outcomes = []
    for _ in range(2):
        outcomes.append(apply_refund_notice(build(order), account, utcnow(), notification_id="RN-1", money=app_money()))
        db.session.commit()
    assert outcomes == ["mismatch_flagged"] * 2
    assert alerts() == [(kind, order.out_trade_no)]
    after = table_counts()
    assert after.pop("alerts") == before.pop("alerts") + 1
    assert after == before
    assert db.session.get(Refund, refund.id).status == "pending"
    assert db.session.get(Order, order.id).review_reason


def test_a_refund_of_another_order_is_flagged(app, account, refunding, make_user, make_product):
    order, refund = refunding
    other = order_for(make_user(), make_product(price_fen=50_00))
    outcome = apply_refund_notice(notice(other, status="CLOSED"), account, utcnow(), money=app_money())
    db.session.commit()
    assert outcome == "mismatch_flagged"
    assert alerts() == [("refund_order_mismatch", other.out_trade_no)]
    assert db.session.get(Refund, refund.id).status == "pending"


def test_a_refund_our_rules_refuse_is_flagged_and_moves_nothing(app, account, refunding):
    order, _ = refunding
    before = table_counts()
    # WeChat says a refund we never asked for succeeded, for more than is left to refund
    outcome = apply_refund_notice(
        notice(order, "R-ELSEWHERE", refund_fen=60_00), account, utcnow(), "RN-9", money=app_money()
    )
    db.session.commit()
    assert outcome == "refused"
    assert alerts() == [("refund_refused", order.out_trade_no)]
    after = table_counts()
    assert after.pop("alerts") == before.pop("alerts") + 1
    assert after == before


def test_a_refund_answer_without_mchid_is_applied_once(app, account, refunding):
    order, refund = refunding
    answer = notice(order, mchid=None)
    assert apply_refund_notice(answer, account, utcnow(), money=app_money()) == "success"
    db.session.commit()
    before = table_counts()
    assert (
        apply_refund_notice(answer, account, utcnow(), money=app_money()) == "success"
    )  # already succeeded: nothing again
    db.session.commit()
    assert table_counts() == before
    done = db.session.get(Refund, refund.id)
    assert (done.status, done.refund_id) == ("succeeded", "5030-1")
    assert db.session.get(Order, order.id).refunded_fen == 40_00


def test_a_processing_refund_and_an_unknown_closed_one_change_nothing(app, account, refunding):
    order, refund = refunding
    assert apply_refund_notice(notice(order, status="PROCESSING"), account, utcnow(), money=app_money()) == "processing"
    before = table_counts()
    # a refund begun elsewhere that WeChat closed moved nothing: acknowledged (its notification id kept), no refund
    assert (
        apply_refund_notice(notice(order, "R-NOT-OURS", status="CLOSED"), account, utcnow(), "RN-2", money=app_money())
        == "closed"
    )
    db.session.commit()
    assert table_counts() == {**before, "payment_notifications": before["payment_notifications"] + 1}
    assert db.session.get(Refund, refund.id).status == "pending"


def test_a_refund_of_an_order_that_cannot_be_refunded_is_refused(app, account, packet_order):
    # given: an order never paid; WeChat says a refund of it succeeded
    order, _ = packet_order
    before = table_counts()
    # when
    outcome = apply_refund_notice(
        notice(order, "R-UNPAID", refund_fen=10_00), account, utcnow(), "RN-3", money=app_money()
    )
    db.session.commit()
    # then: refused (a conflict with our state), flagged, nothing else
    assert outcome == "refused"
    assert alerts() == [("refund_refused", order.out_trade_no)]
    assert "cannot be refunded" in db.session.get(Order, order.id).review_reason
    after = table_counts()
    assert after.pop("alerts") == before.pop("alerts") + 1
    assert after == before


def test_an_order_keeps_every_distinct_reason_it_was_flagged_for(app, make_user, make_product):
    from rebate import create_order
    from rebate.intake import REVIEW_REASON_CHARS, flag_order
    from rebate.orders import LineRequest

    order = create_order(make_user(), [LineRequest(make_product(price_fen=10_00).id, 1)], None, utcnow())
    flag_order(order, "payment_mismatch", "amount 1 fen")
    flag_order(order, "second_payment", "a second transaction tx-2")
    flag_order(order, "payment_mismatch", "amount 1 fen")  # WeChat repeating itself: said once
    assert order.review_reason == "a second transaction tx-2 | amount 1 fen"  # the latest last
    for i in range(400):
        flag_order(order, "payment_mismatch", f"reason {i:04d} " + "x" * 20)
    assert len(order.review_reason) <= REVIEW_REASON_CHARS and order.review_reason.endswith("reason 0399 " + "x" * 20)


def test_a_refund_id_of_another_refund_or_another_for_this_refund_is_flagged_and_moves_nothing(
    app, account, refunding, make_user, make_product
):
    # given: refund R-1 applied as WeChat's 5030-1; another paid order with a refund asked (outside probe)
    order, refund = refunding
    assert apply_refund_notice(notice(order), account, utcnow(), "RN-1", money=app_money()) == "success"
    db.session.commit()
    other = order_for(make_user(), make_product(price_fen=50_00))
    assert apply_payment(paid(other), account, utcnow(), money=app_money()) == "applied"
    db.session.commit()
    begin_refund(db.session.get(Order, other.id), "R-2", 10_00)
    db.session.commit()
    before = table_counts()
    # when: the other order's refund names WeChat's 5030-1 (R-1's), and R-1 is told again as 5030-9
    reused = apply_refund_notice(notice(other, "R-2", refund_fen=10_00), account, utcnow(), "RN-2", money=app_money())
    db.session.commit()
    renamed = apply_refund_notice(notice(order, refund_id="5030-9"), account, utcnow(), "RN-3", money=app_money())
    db.session.commit()
    # then: both flagged for an operator, nothing moves
    assert (reused, renamed) == ("mismatch_flagged", "mismatch_flagged")
    after = table_counts()
    assert after.pop("alerts") == before.pop("alerts") + 2
    assert after == before
    assert db.session.execute(select(Refund.status).where(Refund.out_refund_no == "R-2")).scalar_one() == "pending"
    assert db.session.get(Order, other.id).refunded_fen == 0
