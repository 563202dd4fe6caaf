"""Probe 20, refunds' times: a refund is finished at WeChat's success_time (the reports' day), reconciled on the day
WeChat's trade bill lists it (the day WeChat took the request), and a refund WeChat never heard of is sent again
under its number a bounded number of times, then an operator is told."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from flask import current_app
from sqlalchemy import select, update

from insights.reports import overview
from jobs.insights import days_between, rebuild
from jobs.orders import MAX_RESENDS, query_stuck_refunds
from jobs.payouts import reconcile_day
from models import Alert, Order, Refund, db, utcnow
from models.base import BEIJING
from rebate import PayAccount, apply_payment, apply_refund_notice, begin_refund, create_order
from rebate.orders import LineRequest
from tests.money_helpers import app_money
from tests.payment_helpers import wechat_payment
from tests.test_order_jobs import alice, new_order, paid  # noqa: F401 - fixture
from tests.test_reconciliation import (
    DAY,
    NOW,
    bj,
    findings,
    fund_bill,
    merchant_key,  # noqa: F401 - fixture
    ours,  # noqa: F401 - fixture
    pay_client,  # noqa: F401 - fixture
    refunded,
    runs,
    trade_bill,
    wechat,  # noqa: F401 - fixture
    wechat_keys,  # noqa: F401 - fixture
)
from tests.test_reconciliation import paid as paid_row
from tests.test_simulator_e2e import app_settings, delivered  # noqa: F401 - fixture
from tests.test_wechat_callbacks import (
    deliver_refund,
    make_order,  # noqa: F401 - fixture
    no_network,  # noqa: F401 - fixture
    paid_order_with_refund,  # noqa: F401 - fixture
    refund_resource,
    simulator,
)
from wechat.transactions import RefundNotice

CST = timezone(timedelta(hours=8))
DAY2 = "2024-05-02"


def alerts(kind: str) -> list[Alert]:
    db.session.rollback()
    return list(db.session.execute(select(Alert).where(Alert.kind == kind)).scalars())


def notice(order: Order, out_refund_no: str, fen: int, success_time: datetime | None) -> RefundNotice:
    return RefundNotice(
        out_trade_no=order.out_trade_no,
        out_refund_no=out_refund_no,
        status="SUCCESS",
        refund_fen=fen,
        total_fen=order.payable_fen,
        refund_id=f"5030{out_refund_no}",
        mchid=current_app.config["WECHAT_MCHID"],
        success_time=success_time,
    )


# -- 1. finished at WeChat's success_time --------------------------------------------------------------------


def test_a_refund_wechat_finished_before_midnight_and_told_after_counts_on_its_own_day(
    make_merchant, make_user, make_product
):
    # given: an order paid on 5 March, refunded by WeChat at 23:59:50 Beijing on 6 March, told at 00:00:10 on the 7th
    merchant = make_merchant()
    product = make_product(merchant, price_fen=100_00)
    paid_at = datetime(2026, 3, 5, 10, tzinfo=BEIJING).astimezone(UTC)
    order = create_order(make_user(), [LineRequest(product.id, 1)], None, paid_at)
    db.session.commit()
    tx = wechat_payment(order.out_trade_no, "tx-p20-1", 100_00, success_time=paid_at)
    assert apply_payment(tx, PayAccount.from_config(current_app.config), paid_at, money=app_money()) == "applied"
    begin_refund(order, "R-P20-MIDNIGHT", 30_00)
    db.session.commit()
    succeeded = datetime(2026, 3, 6, 23, 59, 50, tzinfo=CST)
    told = datetime(2026, 3, 7, 0, 0, 10, tzinfo=BEIJING).astimezone(UTC)
    # when
    outcome = apply_refund_notice(
        notice(order, "R-P20-MIDNIGHT", 30_00, succeeded),
        PayAccount.from_config(current_app.config),
        told,
        money=app_money(),
    )
    db.session.commit()
    # then: finished when WeChat finished it; our clock kept beside it
    assert outcome == "success"
    refund = db.session.execute(select(Refund).where(Refund.out_refund_no == "R-P20-MIDNIGHT")).scalar_one()
    assert refund.finished_at == succeeded.astimezone(UTC)
    # and the reports count it on 6 March, the day WeChat refunded it
    rebuild(days_between(date(2026, 3, 5), date(2026, 3, 7)), told + timedelta(hours=12))
    report = overview(date(2026, 3, 5), date(2026, 3, 7), merchant_id=merchant.id)
    days = {p["period"]: p["refunds_fen"] for p in report["series"]}
    assert days == {"2026-03-05": 0, "2026-03-06": 30_00, "2026-03-07": 0}
    assert refund.applied_at == told


def test_a_refund_notification_with_a_garbled_success_time_is_applied_at_our_clock_and_noted(
    app, client, paid_order_with_refund
):
    # given: a verified REFUND.SUCCESS whose success_time is no RFC 3339 time
    order, refund = paid_order_with_refund
    resource = refund_resource(app, order, refund.out_refund_no, 4_000)
    resource["success_time"] = "2026-11-25 11:00"  # no offset, no seconds
    before = utcnow()
    # when
    response = deliver_refund(client, app, resource)
    # then: applied (its money has moved at WeChat), finished at our clock, an operator told once
    assert response.status_code == 204, response.get_data()
    db.session.rollback()
    refund = db.session.get(Refund, refund.id)
    assert refund.status == "succeeded" and refund.finished_at == refund.applied_at >= before
    [alert] = alerts("refund_time_unreadable")
    assert "2026-11-25 11:00" in alert.message and alert.subject == refund.out_refund_no


def test_a_success_time_in_the_future_is_not_believed(app, paid_order_with_refund):
    order, refund = paid_order_with_refund
    now = utcnow()
    outcome = apply_refund_notice(
        notice(order, refund.out_refund_no, 4_000, now + timedelta(days=2)),
        PayAccount.from_config(current_app.config),
        now,
        money=app_money(),
    )
    db.session.commit()
    assert outcome == "success"
    assert db.session.get(Refund, refund.id).finished_at == now
    assert len(alerts("refund_time_unreadable")) == 1


# -- 2. reconciled on the day WeChat's bill lists it ---------------------------------------------------------


def refund_row(out_trade_no: str, out_refund_no: str, yuan: str, at: str) -> list[str]:
    row = refunded(out_trade_no, out_refund_no, yuan)
    row[0] = at  # 交易时间: when WeChat took the request
    return row


def serve_days(wechat, day1: list[list[str]], day2: list[list[str]]) -> None:  # noqa: F811
    wechat.serve("trade", trade_bill(*day1))
    wechat.serve("fund", fund_bill())
    wechat.serve("trade", trade_bill(*day2), bill_date=DAY2)
    wechat.serve("fund", fund_bill(), bill_date=DAY2)


def test_a_refund_begun_elsewhere_and_told_after_midnight_is_no_finding_on_the_next_day(
    ours,  # noqa: F811
    wechat,  # noqa: F811
    pay_client,  # noqa: F811
    time_machine,
):
    # given: a refund begun on the merchant platform and finished at 23:59:55 on the 1st, recorded here when WeChat's
    # notification came at 00:00:10 on the 2nd; the 1st's bill lists it, the 2nd's does not
    bowl = ours.order("ORD-BOWL", 50_00, bj(10))
    told = bj(0, 0, day=2) + timedelta(seconds=10)
    real = datetime.now(UTC)
    time_machine.move_to(told, tick=False)
    succeeded = datetime(2024, 5, 1, 23, 59, 55, tzinfo=CST)
    account = PayAccount.from_config(current_app.config)
    assert (
        apply_refund_notice(notice(bowl, "RF-ELSEWHERE", 10_00, succeeded), account, told, money=app_money())
        == "success"
    )
    db.session.commit()
    time_machine.move_to(real)
    row = refund_row("ORD-BOWL", "RF-ELSEWHERE", "10.00", "2024-05-01 23:59:50")
    serve_days(wechat, [paid_row("ORD-BOWL", "50.00"), row], [])
    # when: the 2nd is reconciled (a catch-up of the 1st may come after it), then the 1st
    reconcile_day(pay_client, DAY2, NOW + timedelta(days=1))
    second = runs()["trade"]
    assert (second.bill_date, second.matched, second.mismatches) == (DAY2, 0, 0)
    reconcile_day(pay_client, DAY, NOW + timedelta(days=1))
    # then: matched once, on the 1st; a finding on neither day
    assert findings() == set()
    refund = db.session.execute(select(Refund).where(Refund.out_refund_no == "RF-ELSEWHERE")).scalar_one()
    assert refund.requested_at == bj(23, 59) + timedelta(seconds=50)  # the bill's time of it


def test_a_refund_recorded_before_midnight_and_taken_by_wechat_after_it_matches_on_the_second_day(
    ours,  # noqa: F811
    wechat,  # noqa: F811
    pay_client,  # noqa: F811
):
    # given: a late payment's refund recorded at 23:59 on the 1st, sent by the refund job at 00:01 on the 2nd (WeChat's
    # create_time, kept from its answer), finished at 00:01:05; the 2nd's bill lists it
    bowl = ours.order("ORD-BOWL", 50_00, bj(10))
    refund = ours.refund(bowl, "RF-LATE", 10_00, bj(23, 59), finished=bj(0, 1, day=2) + timedelta(seconds=5))
    db.session.execute(update(Refund).where(Refund.id == refund.id).values(requested_at=bj(0, 1, day=2)))
    db.session.commit()
    serve_days(
        wechat,
        [paid_row("ORD-BOWL", "50.00")],
        [refund_row("ORD-BOWL", "RF-LATE", "10.00", "2024-05-02 00:01:00")],
    )
    # when
    reconcile_day(pay_client, DAY, NOW)
    first = runs()["trade"]
    first_summary = (first.matched, first.mismatches)
    reconcile_day(pay_client, DAY2, NOW + timedelta(days=1))
    # then: the 1st matches its payment only, the 2nd the refund; no finding
    assert first_summary == (1, 0)
    assert findings() == set()


def test_a_bill_listing_a_refund_tells_a_rerun_of_another_day_not_to_expect_it(ours, wechat, pay_client):  # noqa: F811
    # given: a refund recorded at 23:59:59 on the 1st that WeChat took at 00:00:02 on the 2nd (its answer lost: no
    # time of WeChat's known); the 2nd's bill lists it
    bowl = ours.order("ORD-BOWL", 50_00, bj(10))
    ours.refund(
        bowl, "RF-EDGE", 10_00, bj(23, 59) + timedelta(seconds=59), finished=bj(0, 0, day=2) + timedelta(seconds=9)
    )
    serve_days(
        wechat,
        [paid_row("ORD-BOWL", "50.00")],
        [refund_row("ORD-BOWL", "RF-EDGE", "10.00", "2024-05-02 00:00:02")],
    )
    # when: the 1st (expecting it: nothing said otherwise yet), the 2nd (which lists it), the 1st again
    reconcile_day(pay_client, DAY, NOW)
    assert findings() == {("missing_there", "refund", "RF-EDGE", 10_00, None)}
    reconcile_day(pay_client, DAY2, NOW + timedelta(days=1))
    reconcile_day(pay_client, DAY, NOW + timedelta(days=1))
    # then: the rerun of the 1st no longer expects it
    assert findings() == set()


def test_a_refund_row_without_a_readable_time_fails_the_run(ours, wechat, pay_client):  # noqa: F811
    bowl = ours.order("ORD-BOWL", 50_00, bj(10))
    ours.refund(bowl, "RF-OK", 10_00, bj(14))
    wechat.serve(
        "trade", trade_bill(paid_row("ORD-BOWL", "50.00"), refund_row("ORD-BOWL", "RF-OK", "10.00", "2024/05/01"))
    )
    wechat.serve("fund", fund_bill())
    reconcile_day(pay_client, DAY, NOW)
    trade = runs()["trade"]
    assert trade.status == "failed" and "交易时间" in trade.error, trade.error


# -- the refund job: WeChat's times from its answers ---------------------------------------------------------


def stuck(order: Order, number: str) -> Refund:
    refund = begin_refund(order, number, 1_000)
    refund.created_at = utcnow() - timedelta(minutes=5)
    db.session.commit()
    return refund


def test_the_refund_job_keeps_wechats_create_time_of_a_refund_it_sends(app, paid):  # noqa: F811
    # given: a refund WeChat never heard of (a late payment's, say, which the job sends)
    refund = stuck(paid, "R-P20-SENT")
    sim = simulator(app)
    sim.refund_auto_succeed = False
    # when
    assert query_stuck_refunds() == {"processing": 1}
    # then: the day WeChat's bill lists it is known
    db.session.rollback()
    created = datetime.fromisoformat(sim.refunds["R-P20-SENT"]["create_time"])
    assert db.session.get(Refund, refund.id).requested_at == created.astimezone(UTC)


def test_a_query_answer_with_a_garbled_success_time_is_applied_at_our_clock(app, paid):  # noqa: F811
    # given: a refund WeChat took and finished, whose query answer's success_time is garbled (its notification lost)
    refund = stuck(paid, "R-P20-GARBLED")
    sim = simulator(app)
    sim.refund_auto_succeed = False
    assert query_stuck_refunds() == {"processing": 1}
    sim.refunds["R-P20-GARBLED"].update(status="SUCCESS", success_time="yesterday")
    # when
    assert query_stuck_refunds() == {"success": 1}
    # then
    db.session.rollback()
    refund = db.session.get(Refund, refund.id)
    assert refund.status == "succeeded" and refund.finished_at == refund.applied_at
    assert len(alerts("refund_time_unreadable")) == 1


# -- 3. a refund WeChat never heard of -----------------------------------------------------------------------


def test_a_refund_wechat_never_heard_of_is_sent_again_a_bounded_number_of_times_then_an_operator_is_told(
    app,
    paid,  # noqa: F811
    monkeypatch,
):
    from jobs.payouts import job_context
    from wechat.errors import WeChatBusinessError

    # given: a refund whose query WeChat answers NOT_FOUND, and every send of it refused for now (NOT_ENOUGH)
    refund = stuck(paid, "R-P20-NEVER")
    sends = []

    def refuse(*args, **_kwargs):
        sends.append(args[1])
        raise WeChatBusinessError("NOT_ENOUGH (refused by the test)", code="NOT_ENOUGH", retryable=True)

    monkeypatch.setattr(job_context().wechat.pay, "refund", refuse)
    # when: the job runs more often than the bound
    results = [query_stuck_refunds() for _ in range(MAX_RESENDS + 3)]
    # then: sent MAX_RESENDS times under its own number, then only asked about; one alert; still pending
    assert sends == ["R-P20-NEVER"] * MAX_RESENDS
    assert results == [{"unknown": 1}] * MAX_RESENDS + [{"never_reached": 1}] * 3
    [alert] = alerts("refund_never_reached")
    assert "R-P20-NEVER" in alert.message and f"{MAX_RESENDS} times" in alert.message
    db.session.rollback()
    assert db.session.get(Refund, refund.id).status == "pending"
    assert db.session.get(Order, paid.id).refunded_fen == 0
    # and once an operator resolved the alert (the merchant account topped up), it is sent again, as often
    db.session.execute(update(Alert).where(Alert.id == alert.id).values(resolved_at=utcnow()))
    db.session.commit()
    monkeypatch.undo()
    simulator(app).refund_auto_succeed = False
    assert query_stuck_refunds() == {"processing": 1}
    assert simulator(app).refunds["R-P20-NEVER"]["refund_fen"] == 1_000
    db.session.rollback()
    assert db.session.get(Refund, refund.id).resends == 1


def test_a_refund_sent_again_and_refused_for_good_is_still_failed_at_once(app, paid, monkeypatch):  # noqa: F811
    from jobs.payouts import job_context
    from wechat.errors import WeChatNotFound

    refund = stuck(paid, "R-P20-GONE")

    def refuse(*_args, **_kwargs):  # the refund's order unknown to WeChat: it will never make it
        raise WeChatNotFound("RESOURCE_NOT_EXISTS (refused by the test)", code="RESOURCE_NOT_EXISTS")

    monkeypatch.setattr(job_context().wechat.pay, "refund", refuse)
    assert query_stuck_refunds() == {"failed": 1}
    db.session.rollback()
    assert db.session.get(Refund, refund.id).status == "failed"


@pytest.mark.parametrize("status", ["closed", "abnormal"])
def test_a_refund_wechat_closed_keeps_our_clock_as_its_end(app, paid_order_with_refund, status):
    order, refund = paid_order_with_refund
    now = utcnow()
    closed = RefundNotice(
        order.out_trade_no, refund.out_refund_no, status.upper(), mchid=current_app.config["WECHAT_MCHID"]
    )
    assert apply_refund_notice(closed, PayAccount.from_config(current_app.config), now, money=app_money()) == status
    db.session.commit()
    refund = db.session.get(Refund, refund.id)
    assert (refund.status, refund.finished_at, refund.applied_at) == (status, now, now)
