"""Probe 21, refunds' days: an operator's refund keeps WeChat's create_time as the job's does (one reader of
WeChat's refund answers), a refund applied days after WeChat finished it is reconciled again on the day it
belongs to, and the Beijing midnight edges of the request, success and bill times."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from flask import current_app
from sqlalchemy import select

from insights.reports import overview
from jobs.insights import due_days, rebuild
from jobs.payouts import reconcile_day, run_daily_checks
from models import Alert, ReconciliationRun, Refund, db
from models.base import BEIJING
from payouts.reconcile import _day_window, _refunds_made_in, request_day
from rebate import PayAccount, apply_payment, apply_refund_notice, begin_refund, create_order
from rebate.orders import LineRequest
from tests.money_helpers import app_money
from tests.payment_helpers import wechat_payment
from tests.test_probe20_refunds import refund_row
from tests.test_reconciliation import (
    DAY,
    NOW,
    bj,
    findings,
    fund_bill,
    merchant_key,  # noqa: F401 - fixture
    ours,  # noqa: F401 - fixture
    pay_client,  # noqa: F401 - fixture
    trade_bill,
    wechat,  # noqa: F401 - fixture
    wechat_keys,  # noqa: F401 - fixture
)
from tests.test_reconciliation import paid as paid_row
from tests.test_refund_admin import REFUNDS, finance, keyed, paid_order  # noqa: F401 - fixtures
from tests.test_simulator_e2e import app_settings, delivered  # noqa: F401 - fixture
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture
from wechat.transactions import RefundAnswer, RefundNotice

CST = timezone(timedelta(hours=8))
DAY2 = "2024-05-02"


def expected_on(day) -> set[str]:
    """The out_refund_nos the Beijing ``day``'s trade bill must list, as reconciliation reads them."""
    start, end = _day_window(day)
    return set(db.session.execute(select(Refund.out_refund_no).where(*_refunds_made_in(start, end))).scalars())


# -- 1. an operator's refund keeps WeChat's create_time ----------------------------------------------------------


@pytest.fixture
def wechat_takes_it_after_midnight(app, monkeypatch):
    """WeChat's refund answers say it took the request at 00:00:01 Beijing on 2 March (our clock: 1 March, 23:59:59)."""
    sim, taken = simulator(app), datetime(2026, 3, 2, 0, 0, 1, tzinfo=CST)
    original = sim._new_refund

    def new_refund(*args, **kwargs):
        refund = original(*args, **kwargs)
        refund["create_time"] = taken.isoformat()
        return refund

    monkeypatch.setattr(sim, "_new_refund", new_refund)
    return taken


def test_an_operators_refund_taken_by_wechat_after_midnight_is_expected_on_wechats_day(
    app,
    client,
    paid_order,  # noqa: F811
    finance,  # noqa: F811
    wechat_takes_it_after_midnight,
    delivered,  # noqa: F811
):
    # given: an operator refunds at 23:59:59 Beijing on 1 March; WeChat takes it at 00:00:01 on the 2nd and succeeds
    ours = datetime(2026, 3, 1, 23, 59, 59, tzinfo=BEIJING).astimezone(UTC)
    # when
    response = client.post(
        REFUNDS.format(paid_order.id), json={"amount_fen": 4_000, "reason": "damaged"}, headers=keyed(finance)
    )
    assert response.status_code == 201, response.json
    delivered()
    db.session.rollback()
    number = response.json["out_refund_no"]
    refund = db.session.execute(select(Refund).where(Refund.out_refund_no == number)).scalar_one()
    refund.created_at = ours  # recorded here before midnight (the route's clock is not moved in this test)
    db.session.commit()
    # then: WeChat's create_time is the refund's request time, as the refund job keeps it
    db.session.rollback()
    refund = db.session.get(Refund, refund.id)
    assert refund.status == "succeeded"
    assert refund.requested_at == wechat_takes_it_after_midnight.astimezone(UTC)
    # and reconciliation expects it on the 2nd's bill (WeChat's day), not the 1st's
    assert refund.out_refund_no not in expected_on(datetime(2026, 3, 1).date())
    assert refund.out_refund_no in expected_on(datetime(2026, 3, 2).date())


def test_an_operators_refund_answered_with_a_garbled_success_time_is_applied_as_the_jobs_would(
    app,
    client,
    paid_order,  # noqa: F811
    finance,  # noqa: F811
    monkeypatch,
):
    # given: WeChat answers the refund's creation with SUCCESS at once, its success_time no RFC 3339 time
    sim = simulator(app)
    sim.refund_auto_succeed = False
    original = sim.create_refund

    def create_refund(body):
        answer = original(body)
        return {**answer, "status": "SUCCESS", "success_time": "2026-03-02 00:00:03"}

    monkeypatch.setattr(sim, "create_refund", create_refund)
    # when
    response = client.post(
        REFUNDS.format(paid_order.id), json={"amount_fen": 4_000, "reason": "damaged"}, headers=keyed(finance)
    )
    # then: applied (its money moved), at our clock, an operator told; WeChat's create_time kept
    assert response.status_code == 201, response.json
    assert response.json["status"] == "succeeded" and "wechat_error" not in response.json
    db.session.rollback()
    refund = db.session.get(Refund, response.json["id"])
    assert refund.finished_at == refund.applied_at and refund.requested_at is not None
    assert db.session.execute(select(Alert).where(Alert.kind == "refund_time_unreadable")).first() is not None


# -- 2. a refund applied days after WeChat finished it -----------------------------------------------------------


def late_notice(order, out_refund_no: str, fen: int, success_time: datetime) -> RefundNotice:
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


def serve_quiet_days(wechat, *days: str) -> None:  # noqa: F811
    for day in days:
        wechat.serve("trade", trade_bill(), bill_date=day)
        wechat.serve("fund", fund_bill(), bill_date=day)


def daily_checks(pay_client, now: datetime):  # noqa: F811
    return run_daily_checks(pay_client, now, point_value_fen=current_app.config["POINT_VALUE_FEN"])


@pytest.mark.parametrize("begun_here", [True, False], ids=["begun-here", "begun-on-the-merchant-platform"])
def test_a_refund_applied_days_after_wechat_finished_it_is_reconciled_again_on_its_own_day(
    ours,  # noqa: F811
    wechat,  # noqa: F811
    pay_client,  # noqa: F811
    begun_here,
):
    # given: a refund WeChat took at 14:00:05 Beijing on 1 May and finished at 14:00:30; its notification was lost,
    # so the 1st's reconciliation (on the 2nd) found WeChat's SUCCESS against ours pending (or a refund we lacked)
    bowl = ours.order("ORD-BOWL", 50_00, bj(10))
    bowl.created_at = bj(9)  # the first order: the daily job's catch-up looks back to its day
    db.session.commit()
    if begun_here:
        ours.refund(bowl, "RF-LATE", 10_00, bj(14), status="pending")
    row = refund_row("ORD-BOWL", "RF-LATE", "10.00", "2024-05-01 14:00:05")
    wechat.serve("trade", trade_bill(paid_row("ORD-BOWL", "50.00"), row))
    wechat.serve("fund", fund_bill())
    reconcile_day(pay_client, DAY, NOW)
    assert {f[2] for f in findings()} == {"RF-LATE"}
    # when: WeChat's word on it is applied on the 4th, more than 48 hours after it finished (a late query), and the
    # daily job of the 5th runs
    applied = bj(12, day=4)
    succeeded = datetime(2024, 5, 1, 14, 0, 30, tzinfo=CST)
    account = PayAccount.from_config(current_app.config)
    outcome = apply_refund_notice(late_notice(bowl, "RF-LATE", 10_00, succeeded), account, applied, money=app_money())
    db.session.commit()
    assert outcome == "success"
    serve_quiet_days(wechat, "2024-05-02", "2024-05-03", "2024-05-04")
    daily_checks(pay_client, bj(10, 30, day=5))
    # then: the 1st was reconciled again against its own bill: the refund matches there, and no other day
    # (today's bill included) expects it
    assert findings() == set()
    first = db.session.execute(
        select(ReconciliationRun).where(ReconciliationRun.bill_date == DAY, ReconciliationRun.kind == "trade")
    ).scalar_one()
    assert (first.status, first.matched, first.mismatches) == ("done", 2, 0)


def test_a_refund_another_days_bill_lists_is_no_longer_a_finding_on_the_day_that_expected_it(
    ours,  # noqa: F811
    wechat,  # noqa: F811
    pay_client,  # noqa: F811
):
    # given: a refund recorded here at 23:59:59 Beijing on 1 May whose answer was lost (no time of WeChat's known);
    # WeChat took it at 00:00:02 on the 2nd, and the 2nd's bill lists it
    bowl = ours.order("ORD-BOWL", 50_00, bj(10))
    bowl.created_at = bj(9)
    db.session.commit()
    at = bj(23, 59) + timedelta(seconds=59)
    ours.refund(bowl, "RF-EDGE", 10_00, at, finished=bj(0, 0, day=2) + timedelta(seconds=9))
    wechat.serve("trade", trade_bill(paid_row("ORD-BOWL", "50.00")))
    wechat.serve("fund", fund_bill())
    wechat.serve("trade", trade_bill(refund_row("ORD-BOWL", "RF-EDGE", "10.00", "2024-05-02 00:00:02")), bill_date=DAY2)
    wechat.serve("fund", fund_bill(), bill_date=DAY2)
    # when: the daily job of the 2nd (the 1st expects it: nothing says otherwise yet), then the 3rd's
    daily_checks(pay_client, bj(10, 30, day=2))
    assert findings() == {("missing_there", "refund", "RF-EDGE", 10_00, None)}
    daily_checks(pay_client, bj(10, 30, day=3))
    # then: the 2nd's bill told its day, and the 1st was reconciled again without it: no finding on either day
    assert findings() == set()


def test_a_refund_applied_after_its_day_left_the_catch_up_window_is_told_to_an_operator(
    ours,  # noqa: F811
    wechat,  # noqa: F811
    pay_client,  # noqa: F811
):
    # given: the 1st reconciled with WeChat's SUCCESS against our pending refund
    bowl = ours.order("ORD-BOWL", 50_00, bj(10))
    ours.refund(bowl, "RF-LONG", 10_00, bj(14), status="pending")
    row = refund_row("ORD-BOWL", "RF-LONG", "10.00", "2024-05-01 14:00:05")
    wechat.serve("trade", trade_bill(paid_row("ORD-BOWL", "50.00"), row))
    wechat.serve("fund", fund_bill())
    reconcile_day(pay_client, DAY, NOW)
    # when: WeChat's word on it is applied on the 20th: the daily job no longer reconciles the 1st by itself
    succeeded = datetime(2024, 5, 1, 14, 0, 30, tzinfo=CST)
    account = PayAccount.from_config(current_app.config)
    outcome = apply_refund_notice(
        late_notice(bowl, "RF-LONG", 10_00, succeeded), account, bj(12, day=20), money=app_money()
    )
    db.session.commit()
    # then: applied, and an operator is told which day to reconcile again
    assert outcome == "success"
    [alert] = db.session.execute(select(Alert).where(Alert.kind == "refund_after_reconciliation")).scalars()
    assert alert.subject == "RF-LONG" and "2024-05-01" in alert.message and "flask jobs reconcile" in alert.message


def test_a_refund_applied_within_the_catch_up_window_tells_nobody(ours, wechat, pay_client):  # noqa: F811
    bowl = ours.order("ORD-BOWL", 50_00, bj(10))
    ours.refund(bowl, "RF-SOON", 10_00, bj(14), status="pending")
    wechat.serve("trade", trade_bill(paid_row("ORD-BOWL", "50.00")))
    wechat.serve("fund", fund_bill())
    reconcile_day(pay_client, DAY, NOW)
    succeeded = datetime(2024, 5, 1, 14, 0, 30, tzinfo=CST)
    account = PayAccount.from_config(current_app.config)
    assert (
        apply_refund_notice(late_notice(bowl, "RF-SOON", 10_00, succeeded), account, bj(12, day=4), money=app_money())
        == "success"
    )
    db.session.commit()
    assert db.session.execute(select(Alert).where(Alert.kind == "refund_after_reconciliation")).first() is None


@pytest.mark.parametrize("released", [False, True], ids=["own", "partner_money_released"])
def test_a_refund_applied_after_its_day_was_final_in_the_reports_is_counted_on_that_day(
    make_merchant, make_user, make_product, released
):
    # given: an order paid on 5 March, refunded by WeChat at 23:59:50 Beijing on the 6th; the reports' days are
    # rebuilt on the 9th at noon, the 6th final by then (48 hours after it ended)
    merchant = make_merchant()
    product = make_product(merchant, price_fen=100_00)
    paid_at = datetime(2026, 3, 5, 10, tzinfo=BEIJING).astimezone(UTC)
    order = create_order(make_user(), [LineRequest(product.id, 1)], None, paid_at)
    db.session.commit()
    tx = wechat_payment(order.out_trade_no, "tx-p21-late", 100_00, success_time=paid_at)
    assert apply_payment(tx, PayAccount.from_config(current_app.config), paid_at, money=app_money()) == "applied"
    if released:  # a partner order whose share finished: its refund posts no ledger entry of its own
        from models.profit_sharing import ProfitShare

        order.frozen_fen = 0
        db.session.add(
            ProfitShare(
                order_id=order.id,
                merchant_id=merchant.id,
                sub_mchid="1900000109",
                transaction_id="tx-p21-late",
                out_order_no="PS-p21-late",
                status="finished",
                kind="share",
                due_at=paid_at,
                wechat_order_id="3008",
            )
        )
    begin_refund(order, "R-P21-FINAL", 30_00)
    db.session.commit()
    noon = datetime(2026, 3, 9, 12, tzinfo=BEIJING).astimezone(UTC)
    rebuild(due_days(noon), noon)
    # when: WeChat's word on the refund is applied at 13:00 on the 9th (its notification lost), and the rollup job
    # runs an hour later
    succeeded = datetime(2026, 3, 6, 23, 59, 50, tzinfo=CST)
    applied = noon + timedelta(hours=1)
    outcome = apply_refund_notice(
        late_notice(order, "R-P21-FINAL", 30_00, succeeded),
        PayAccount.from_config(current_app.config),
        applied,
        money=app_money(),
    )
    db.session.commit()
    assert outcome == "success"
    later = applied + timedelta(hours=1)
    rebuild(due_days(later), later)
    # then: the reports count it on the 6th, the day WeChat refunded it, though that day was final
    report = overview(date(2026, 3, 5), date(2026, 3, 9), merchant_id=merchant.id)
    days = {p["period"]: p["refunds_fen"] for p in report["series"]}
    assert days["2026-03-06"] == 30_00 and sum(days.values()) == 30_00


# -- 3. Beijing midnight edges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("create_time", "day"),
    [
        ("2024-05-01T23:59:59+08:00", "2024-05-01"),
        ("2024-05-02T00:00:00+08:00", "2024-05-02"),
        ("2024-05-01T16:00:00+00:00", "2024-05-02"),  # the same instant as Beijing midnight, told in UTC
        ("2024-05-01T15:59:59Z", "2024-05-01"),
    ],
)
def test_wechats_create_time_puts_a_refund_on_the_bill_of_its_beijing_day(ours, create_time, day):  # noqa: F811
    # given: a refund recorded here on the 1st in the afternoon and finished at 00:05 on the 2nd (our clocks say
    # nothing of midnight), whose create_time WeChat's answer gives
    bowl = ours.order("ORD-BOWL", 50_00, bj(10))
    refund = ours.refund(bowl, "RF-TZ", 10_00, bj(14), finished=bj(0, 5, day=2))
    answer = {
        "out_trade_no": "ORD-BOWL",
        "out_refund_no": "RF-TZ",
        "status": "PROCESSING",
        "create_time": create_time,
        "amount": {"refund": 10_00, "total": 50_00},
    }
    read = RefundAnswer.read(answer, "ORD-BOWL", "RF-TZ")
    # when
    refund.requested_at = read.requested_at.astimezone(UTC)
    db.session.commit()
    # then: expected on that Beijing day's bill only, as the request day says
    first, second = date(2024, 5, 1), date(2024, 5, 2)
    assert request_day(refund).isoformat() == day
    assert {d.isoformat() for d in (first, second) if "RF-TZ" in expected_on(d)} == {day}


@pytest.mark.parametrize("create_time", ["2024-05-02 00:00:01", "2024-05-02T00:00:01", "yesterday", 1714579201, ""])
def test_a_create_time_without_an_offset_is_no_request_time_and_the_answer_still_reads(create_time):
    answer = {
        "out_trade_no": "ORD-BOWL",
        "out_refund_no": "RF-TZ",
        "status": "SUCCESS",
        "create_time": create_time,
        "success_time": "2024-05-02T00:00:03+08:00",
        "amount": {"refund": 10_00, "total": 50_00},
    }
    read = RefundAnswer.read(answer, "ORD-BOWL", "RF-TZ")
    assert read.requested_at is None and read.notice.succeeded
    assert read.notice.success_time == datetime(2024, 5, 2, 0, 0, 3, tzinfo=CST)


def test_the_bills_refund_time_is_beijing_time(ours, wechat, pay_client):  # noqa: F811
    # given: a refund whose WeChat time we do not know, recorded at 00:00:30 Beijing on the 2nd (16:00:30 UTC on the
    # 1st); the 1st's bill lists it at 23:59:58 Beijing
    bowl = ours.order("ORD-BOWL", 50_00, bj(10))
    refund = ours.refund(bowl, "RF-BJ", 10_00, bj(0, 0, day=2) + timedelta(seconds=30))
    row = refund_row("ORD-BOWL", "RF-BJ", "10.00", "2024-05-01 23:59:58")
    wechat.serve("trade", trade_bill(paid_row("ORD-BOWL", "50.00"), row))
    wechat.serve("fund", fund_bill())
    # when
    reconcile_day(pay_client, DAY, NOW)
    # then: matched on the 1st, its request time the bill's, read as Beijing time
    assert findings() == set()
    db.session.rollback()
    refund = db.session.get(Refund, refund.id)
    assert refund.requested_at == datetime(2024, 5, 1, 15, 59, 58, tzinfo=UTC)
    assert request_day(refund) == date(2024, 5, 1)
    assert "RF-BJ" not in expected_on(date(2024, 5, 2))
