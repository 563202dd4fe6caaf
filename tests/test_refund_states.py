"""A refund's states as WeChat moves them, told by signed notifications: what may follow what.

PENDING → SUCCESS, CLOSED or ABNORMAL. CLOSED is final (and so is FAILED: WeChat refused the request): the hold is
released and the amount may be refunded anew, so a later SUCCESS of that refund is a contradiction, refused and
flagged, nothing moved. ABNORMAL is not final: the merchant can resolve it at WeChat, which then tells SUCCESS; its
amount stays reserved and the order's payouts held meanwhile. A refund never takes more than WeChat charged, and a
notification naming another payment or order total is refused."""

from __future__ import annotations

from sqlalchemy import select

from jobs import orders as order_jobs
from models import Alert, LedgerEntry, Order, Refund, db, utcnow
from rebate import begin_refund
from rebate.errors import StateConflict
from tests.test_wechat_callbacks import (  # noqa: F401 - fixtures
    count,
    deliver,
    deliver_refund,
    make_order,
    no_network,
    refund_resource,
    transaction_resource,
)


def paid_order(app, client, make_order) -> Order:
    order = make_order(100_00)
    assert deliver(client, app, transaction_resource(app, order)).status_code == 204
    db.session.rollback()
    return db.session.get(Order, order.id)


def told(client, app, order, number, fen, status="SUCCESS", **amount):
    resource = refund_resource(app, order, number, fen, status)
    resource["amount"] = {**resource["amount"], **amount}
    return deliver_refund(client, app, resource, event=f"REFUND.{status}").status_code


def test_a_closed_refund_told_as_succeeded_later_is_refused_and_moves_nothing(app, client, make_order, no_network):
    order = paid_order(app, client, make_order)
    begin_refund(order, "R-CLOSED", 100_00)
    db.session.commit()
    assert told(client, app, order, "R-CLOSED", 100_00, "CLOSED") == 204
    begin_refund(db.session.get(Order, order.id), "R-ANEW", 100_00)  # the amount is refundable again
    db.session.commit()
    entries = count(LedgerEntry)

    assert told(client, app, order, "R-CLOSED", 100_00) == 400

    db.session.rollback()
    assert db.session.get(Order, order.id).refunded_fen == 0
    assert count(LedgerEntry) == entries
    assert db.session.execute(select(Refund.status).where(Refund.out_refund_no == "R-CLOSED")).scalar_one() == "closed"
    assert "refund_state_mismatch" in db.session.execute(select(Alert.kind)).scalars().all()
    assert told(client, app, order, "R-ANEW", 100_00) == 204  # the refund begun anew is applied
    db.session.rollback()
    assert db.session.get(Order, order.id).refunded_fen == 100_00


def test_an_abnormal_refund_keeps_its_amount_and_may_still_succeed(app, client, make_order, no_network):
    order = paid_order(app, client, make_order)
    begin_refund(order, "R-ABNORMAL", 60_00)
    db.session.commit()

    assert told(client, app, order, "R-ABNORMAL", 60_00, "ABNORMAL") == 204
    db.session.rollback()
    order = db.session.get(Order, order.id)
    try:  # its 60 yuan are still reserved: only 40 may be refunded meanwhile
        begin_refund(order, "R-TOO-MUCH", 40_01)
    except StateConflict as exc:
        assert exc.code == "refund_in_progress" and "4000 fen can be refunded now" in str(exc)
    else:
        raise AssertionError("an abnormal refund's amount was refundable again")
    db.session.rollback()
    assert told(client, app, order, "R-ABNORMAL", 60_00, "ABNORMAL") == 204  # told again: one alert
    assert told(client, app, order, "R-ABNORMAL", 60_00) == 204  # resolved at WeChat: it succeeds

    db.session.rollback()
    assert db.session.get(Order, order.id).refunded_fen == 60_00
    assert db.session.execute(select(Refund.status)).scalar_one() == "succeeded"
    assert db.session.execute(select(Alert.kind)).scalars().all() == ["refund_abnormal"]


def test_a_refund_begun_elsewhere_beyond_what_is_left_is_refused_not_an_error(app, client, make_order, no_network):
    order = paid_order(app, client, make_order)
    assert told(client, app, order, "MP-1", 70_00) == 204  # begun at the merchant platform

    assert told(client, app, order, "MP-2", 40_00) == 409  # 30 yuan are left

    db.session.rollback()
    assert db.session.get(Order, order.id).refunded_fen == 70_00
    assert "refund_refused" in db.session.execute(select(Alert.kind)).scalars().all()


def test_a_refund_naming_another_payment_or_order_total_is_refused(app, client, make_order, no_network):
    order = paid_order(app, client, make_order)
    begin_refund(order, "R-NAMED", 10_00)
    db.session.commit()
    other_total = refund_resource(app, order, "R-NAMED", 10_00)
    other_total["amount"] = {**other_total["amount"], "total": 100_01}
    other_payment = {**refund_resource(app, order, "R-NAMED", 10_00), "transaction_id": "4200999999999999"}

    answers = [deliver_refund(client, app, r).status_code for r in (other_total, other_payment)]

    assert answers == [400, 400]
    db.session.rollback()
    assert db.session.get(Order, order.id).refunded_fen == 0
    assert db.session.execute(select(Refund.status)).scalar_one() == "pending"


def test_one_refund_the_job_cannot_check_does_not_stop_the_others(app, make_order, monkeypatch):
    from datetime import timedelta

    from tests.payment_helpers import pay_as_wechat

    refunds = []
    for n in range(2):
        order = make_order(10_00)
        pay_as_wechat(order.out_trade_no, f"tx-{n}", 10_00, utcnow())
        refunds.append(begin_refund(order, f"R-JOB-{n}", 1_00))
        refunds[-1].created_at = utcnow() - timedelta(minutes=5)
    db.session.commit()
    broken, fine = refunds[0].id, refunds[1].id
    checked = []

    def check(refund_id, now):
        checked.append(refund_id)
        if refund_id == broken:
            raise RuntimeError("a fault in one refund's intake")
        return "processing"

    monkeypatch.setattr(order_jobs, "check_refund", check)

    assert order_jobs.query_stuck_refunds() == {"error": 1, "processing": 1}
    assert checked == [broken, fine]


def test_an_abnormal_refund_begun_elsewhere_is_reserved_as_ours_are(app, client, make_order, no_network):
    order = paid_order(app, client, make_order)

    assert told(client, app, order, "MP-ABNORMAL", 30_00, "ABNORMAL") == 204

    db.session.rollback()
    assert db.session.execute(select(Refund.out_refund_no, Refund.status)).all() == [("MP-ABNORMAL", "abnormal")]
    try:  # its 30 yuan are reserved
        begin_refund(db.session.get(Order, order.id), "R-REST", 70_01)
    except StateConflict as exc:
        assert exc.code == "refund_in_progress" and "7000 fen can be refunded now" in str(exc)
    else:
        raise AssertionError("an abnormal refund's amount was refundable again")
    db.session.rollback()
    assert told(client, app, order, "MP-ABNORMAL", 30_00) == 204
    db.session.rollback()
    assert db.session.get(Order, order.id).refunded_fen == 30_00


def test_abnormal_told_after_the_refund_succeeded_is_a_late_repeat_not_a_contradiction(
    app, client, make_order, no_network
):
    order = paid_order(app, client, make_order)
    begin_refund(order, "R-RACE", 50_00)
    db.session.commit()
    assert told(client, app, order, "R-RACE", 50_00) == 204  # SUCCESS arrives first

    assert told(client, app, order, "R-RACE", 50_00, "ABNORMAL") == 204  # the earlier ABNORMAL, late

    db.session.rollback()
    assert db.session.execute(select(Refund.status)).scalar_one() == "succeeded"
    assert db.session.get(Order, order.id).refunded_fen == 50_00
    assert db.session.execute(select(Alert.kind)).scalars().all() == []
    assert told(client, app, order, "R-RACE", 50_00, "CLOSED") == 400  # closed after succeeded: a contradiction
