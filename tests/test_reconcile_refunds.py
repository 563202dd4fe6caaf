"""Refunds in WeChat's trade bill: REFUND rows, read and matched by reconciliation, written so by the simulator.

WeChat's ``ALL`` trade bill lists every refund applied for that day as a row of its own (交易状态 REFUND, with
微信退款单号, 商户退款单号, 退款金额, 申请退款金额 and 退款状态 frozen at bill time) beside the payment rows.
Reconciliation matches each on 商户退款单号 against our refund, amounts in fen: one the bill lists that we lack,
one of ours (begun that day and succeeded) the bill lacks, another amount or a closed refund are findings; a
REFUND row without its number fails the run. Bills written by hand (served through ``responses``) and, end to
end, the simulator's own bills in direct and in service-provider mode.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from jobs.payouts import job_context, reconcile_day
from models import Order, ReconciliationMismatch, Refund, db, utcnow
from models.base import beijing
from payouts.bill_lines import trade_line
from tests.test_partner_flow import admin, keyed, order_body, set_sub_mchid  # noqa: F401 - fixture
from tests.test_reconciliation import (
    DAY,
    NOW,
    alerts,
    bj,
    findings,
    fund_bill,
    merchant_key,  # noqa: F401 - fixture
    ours,  # noqa: F401 - fixture
    paid,
    pay_client,  # noqa: F401 - fixture
    refunded,
    runs,
    trade_bill,
    wechat,  # noqa: F401 - fixture
    wechat_keys,  # noqa: F401 - fixture
)
from tests.test_simulator_e2e import app_settings, delivered, login, pay_at_checkout  # noqa: F401 - fixture
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture
from wechat.bills import parse_bill_csv
from wechat.sim.errors import SimError

NOODLES, TEA = "1900000201", "1900000202"


def trade_summary() -> tuple:
    run = runs()["trade"]
    return run.status, run.lines_read, run.matched, run.mismatches


# -- bills written by hand ---------------------------------------------------------------------------------


def test_each_refund_row_matches_ours_by_its_number_and_a_difference_either_way_is_found(ours, wechat, pay_client):  # noqa: F811
    # given: three orders paid and five refunds of ours begun that day; WeChat's bill lists four of the refunds
    # (one a fen more, one closed) and one we never made
    bowl = ours.order("ORD-BOWL", 50_00, bj(10))
    cup = ours.order("ORD-CUP", 20_00, bj(11))
    plate = ours.order("ORD-PLATE", 30_00, bj(12))
    ours.refund(bowl, "RF-OK", 10_00, bj(14))
    ours.refund(bowl, "RF-FEN", 5_00, bj(15))
    ours.refund(cup, "RF-LOST", 20_00, bj(16))
    ours.refund(plate, "RF-CLOSED", 3_00, bj(17))
    ours.refund(plate, "RF-PENDING", 2_00, bj(18), status="pending")  # WeChat still PROCESSING: not a finding
    wechat.serve(
        "trade",
        trade_bill(
            paid("ORD-BOWL", "50.00"),
            paid("ORD-CUP", "20.00"),
            paid("ORD-PLATE", "30.00"),
            refunded("ORD-BOWL", "RF-OK", "10.00"),
            refunded("ORD-BOWL", "RF-FEN", "5.01"),
            refunded("ORD-PLATE", "RF-CLOSED", "3.00", state="CLOSED"),
            refunded("ORD-PLATE", "RF-PENDING", "2.00", state="PROCESSING"),
            refunded("ORD-CUP", "RF-STRANGER", "7.00"),
        ),
    )
    wechat.serve("fund", fund_bill())
    # when
    reconcile_day(pay_client, DAY, NOW)
    # then
    assert findings() == {
        ("amount_differs", "refund", "RF-FEN", 5_00, 5_01),
        ("status_differs", "refund", "RF-CLOSED", 3_00, 3_00),
        ("missing_here", "refund", "RF-STRANGER", None, 7_00),
        ("missing_there", "refund", "RF-LOST", 20_00, None),
    }
    assert trade_summary() == ("done", 8, 5, 4)  # 3 orders, RF-OK and RF-PENDING matched
    [alert] = alerts("reconciliation_mismatch")
    assert "RF-STRANGER" in alert.message and "RF-LOST" in alert.message


def test_a_refund_begun_before_midnight_is_on_that_days_bill_only(ours, wechat, pay_client):  # noqa: F811
    # given: a refund begun at 23:50 on the 1st (Beijing) that WeChat finished at 00:20 on the 2nd
    bowl = ours.order("ORD-BOWL", 50_00, bj(10))
    ours.refund(bowl, "RF-MIDNIGHT", 10_00, bj(23, 50), finished=bj(0, 20, day=2))
    wechat.serve("trade", trade_bill(paid("ORD-BOWL", "50.00"), refunded("ORD-BOWL", "RF-MIDNIGHT", "10.00")))
    wechat.serve("fund", fund_bill())
    wechat.serve("trade", trade_bill(), bill_date="2024-05-02")
    wechat.serve("fund", fund_bill(), bill_date="2024-05-02")
    # when: both days are reconciled
    reconcile_day(pay_client, DAY, NOW)
    first = trade_summary()
    reconcile_day(pay_client, "2024-05-02", NOW + timedelta(days=1))
    # then: matched on the 1st's bill; the 2nd's bill does not list it, and nothing says it should
    assert first == ("done", 2, 2, 0)
    assert findings() == set()


@pytest.mark.parametrize(
    ("number", "amount", "error"),
    [("0", "10.00", "line 3: a REFUND row without 商户退款单号"), ("RF-X", "10.0.0", "line 3, 申请退款金额")],
)
def test_a_bad_refund_row_fails_the_run_and_records_nothing(ours, wechat, pay_client, number, amount, error):  # noqa: F811
    # given: a refund we lack (it would be a finding) and a refund row without its number or with a bad amount
    bowl = ours.order("ORD-BOWL", 50_00, bj(10))
    ours.refund(bowl, "RF-LOST", 10_00, bj(14))
    bad = refunded("ORD-BOWL", number, amount)
    wechat.serve("trade", trade_bill(paid("ORD-BOWL", "50.00"), bad))
    wechat.serve("fund", fund_bill())
    # when
    reconcile_day(pay_client, DAY, NOW)
    # then: the run failed whole, naming the line; no partial results
    trade = runs()["trade"]
    assert trade.status == "failed" and error in trade.error, trade.error
    assert findings() == set() and (trade.matched, trade.mismatches) == (0, 0)
    assert len(alerts("reconciliation_failed")) == 1


# -- the simulator's bills -----------------------------------------------------------------------------------


def test_the_simulators_bill_lists_a_refund_as_wechat_does(app):
    # given: an order paid and partly refunded at the simulator, its refund left PROCESSING
    sim = simulator(app)
    sim.refund_auto_succeed = False
    order = sim.open_order(
        {
            "appid": "wxapp",
            "mchid": sim.mchid,
            "description": "noodles, large",
            "out_trade_no": "ORD-SIM-1",
            "notify_url": "",  # no callback: the bill is what is read
            "amount": {"total": 50_00, "currency": "CNY"},
            "payer": {"openid": "o-alice"},
        }
    )
    sim.pay(order["prepay_id"])
    sim.create_refund(
        {"out_trade_no": "ORD-SIM-1", "out_refund_no": "RF-SIM-1", "amount": {"refund": 12_34, "total": 50_00}}
    )
    day = sim.refunds["RF-SIM-1"]["create_time"][:10]
    # when
    details, summary = parse_bill_csv(sim.trade_bill_csv(day))
    # then: the payment row and a REFUND row with the refund's numbers, amounts and state as it is now
    pay_row, refund_row = details
    assert (pay_row["交易状态"], pay_row["商户订单号"], pay_row["订单金额"]) == ("SUCCESS", "ORD-SIM-1", "50.00")
    assert {k: refund_row[k] for k in ("交易状态", "商户订单号", "商户退款单号", "微信退款单号")} == {
        "交易状态": "REFUND",
        "商户订单号": "ORD-SIM-1",
        "商户退款单号": "RF-SIM-1",
        "微信退款单号": sim.refunds["RF-SIM-1"]["refund_id"],
    }
    assert (refund_row["退款金额"], refund_row["申请退款金额"], refund_row["退款状态"]) == (
        "12.34",
        "12.34",
        "PROCESSING",
    )
    assert (refund_row["应结订单金额"], refund_row["订单金额"], refund_row["微信订单号"]) == (
        "0.00",
        "0.00",
        pay_row["微信订单号"],
    )
    line = trade_line(refund_row, 3)
    assert (line.state, line.out_refund_no, line.refund_fen, line.refund_state) == (
        "REFUND",
        "RF-SIM-1",
        12_34,
        "PROCESSING",
    )
    assert (summary["总交易单数"], summary["退款总金额"], summary["申请退款总金额"]) == ("2", "12.34", "12.34")


def test_a_sub_merchant_whose_day_has_only_a_refund_gets_a_bill_with_it(app):
    # given: an order paid to the noodle house on an earlier day, refunded today
    sim = simulator(app)
    sim.refund_auto_succeed = False
    order = sim.open_order(
        {
            "sp_appid": "wxapp",
            "sp_mchid": sim.mchid,
            "sub_mchid": NOODLES,
            "description": "noodles",
            "out_trade_no": "ORD-SIM-2",
            "notify_url": "",  # no callback: the bill is what is read
            "amount": {"total": 30_00, "currency": "CNY"},
            "payer": {"sp_openid": "o-alice"},
        }
    )
    sim.pay(order["prepay_id"])
    sim.orders["ORD-SIM-2"]["success_time"] = "2024-04-30T12:00:00+08:00"
    body = {"out_trade_no": "ORD-SIM-2", "out_refund_no": "RF-SIM-2", "sub_mchid": NOODLES}
    sim.create_refund({**body, "amount": {"refund": 5_00, "total": 30_00}})
    day = sim.refunds["RF-SIM-2"]["create_time"][:10]
    # then: the noodle house has a bill that day (its refund), the tea shop none; the day before lists the payment
    assert sim.apply_partner_trade_bill(day, None, "http://sim", NOODLES)["hash_type"] == "SHA1"
    details, _ = parse_bill_csv(sim.trade_bill_csv(day, NOODLES))
    assert [(d["交易状态"], d["特约商户号"], d["商户退款单号"]) for d in details] == [("REFUND", NOODLES, "RF-SIM-2")]
    with pytest.raises(SimError) as refused:
        sim.apply_partner_trade_bill(day, None, "http://sim", TEA)
    assert refused.value.code == "NO_STATEMENT_EXIST"
    assert parse_bill_csv(sim.trade_bill_csv(day, TEA))[0] == []
    assert [d["交易状态"] for d in parse_bill_csv(sim.trade_bill_csv("2024-04-30", NOODLES))[0]] == ["SUCCESS"]


def _sell(client, products: list) -> list[int]:
    """Alice buys each product through the app and pays at the simulator's checkout; the orders' ids."""
    alice = login(client, "alice")
    ids = []
    for product in products:
        created = client.post("/api/v1/orders", json=order_body(product), headers=alice)
        assert created.status_code == 201, created.json
        pay_at_checkout(client, created.json["payment"])
        ids.append(created.json["id"])
    return ids


def _refund(client, finance: dict, order_id: int, amount_fen: int) -> dict:
    body = {"amount_fen": amount_fen, "reason": "cold"}
    resp = client.post(f"/admin/api/orders/{order_id}/refunds", json=body, headers=keyed(finance))
    assert resp.status_code == 201, resp.json
    return resp.json


def _day_and_after(sim) -> tuple[str, object]:
    """The Beijing day the simulator's orders were paid, and a time after it ended."""
    day, now = next(iter(sim.orders.values()))["success_time"][:10], utcnow() + timedelta(days=1)
    assert beijing(now).date().isoformat() > day
    return day, now


def test_direct_mode_end_to_end_refund_rows_match_and_a_tampered_bill_is_found(
    app,
    client,
    make_product,
    make_operator,
    delivered,  # noqa: F811
    no_network,  # noqa: F811
):
    # given: two orders paid through the app at the simulator; one refunded in part, the other in full
    sim = simulator(app)
    finance = make_operator("finance")[1]
    bowl, cup = _sell(client, [make_product(price_fen=50_00), make_product(price_fen=20_00)])
    delivered()
    made = [_refund(client, finance, bowl, 12_00), _refund(client, finance, cup, 20_00)]
    delivered()
    assert [db.session.get(Refund, r["id"]).status for r in made] == ["succeeded", "succeeded"]
    day, now = _day_and_after(sim)
    # when: the day is reconciled against the simulator's bill through the app's own WeChat client
    reconcile_day(job_context().pay, day, now)
    # then: two payment rows and two refund rows, each matched
    assert trade_summary() == ("done", 4, 4, 0) and findings() == set()
    # when: WeChat's records differ: one refund a fen more, the other gone, and one we never asked for
    partial, full = (r["out_refund_no"] for r in made)
    sim.refunds[partial]["refund_fen"] = 12_01
    del sim.refunds[full]
    sim.refund_auto_succeed = False  # no REFUND.SUCCESS reaches us: we never hear of it
    bowl_order = db.session.get(Order, bowl)
    body = {"out_trade_no": bowl_order.out_trade_no, "out_refund_no": "RF-NOT-OURS"}
    sim.create_refund({**body, "amount": {"refund": 1_00, "total": bowl_order.payable_fen}})
    reconcile_day(job_context().pay, day, now + timedelta(hours=1))
    # then: each is a finding of the trade run, amounts in fen
    assert findings() == {
        ("amount_differs", "refund", partial, 12_00, 12_01),
        ("missing_there", "refund", full, 20_00, None),
        ("missing_here", "refund", "RF-NOT-OURS", None, 1_00),
    }
    assert trade_summary() == ("done", 4, 2, 3)


def test_service_provider_mode_end_to_end_each_sub_merchants_bill_lists_its_own_refunds(
    app,
    client,
    admin,  # noqa: F811
    make_merchant,
    make_product,
    make_operator,
    delivered,  # noqa: F811
    no_network,  # noqa: F811
):
    # given: two shops onboarded as sub-merchants; alice buys at both; the noodle house refunds 5 yuan
    app.config["FUND_FLOW"] = "service_provider"
    sim = simulator(app)
    products = []
    for sub_mchid, price in ((NOODLES, 30_00), (TEA, 12_00)):
        shop = make_merchant(f"shop {sub_mchid}")
        assert set_sub_mchid(client, admin, shop.id, sub_mchid=sub_mchid).status_code == 200
        products.append(make_product(shop, price_fen=price))
    noodles, _ = _sell(client, products)
    delivered()
    refund = _refund(client, make_operator("finance")[1], noodles, 5_00)
    delivered()
    assert sim.refunds[refund["out_refund_no"]]["sub_mchid"] == NOODLES
    day, now = _day_and_after(sim)
    # when
    reconcile_day(job_context().pay, day, now, service_provider=True)
    # then: the noodle house's bill held its order and its refund, the tea shop's its order only; all matched
    got = {(r.kind, r.sub_mchid): (r.status, r.lines_read, r.matched, r.mismatches) for r in _all_runs()}
    assert got[("trade", NOODLES)] == ("done", 2, 2, 0)
    assert got[("trade", TEA)] == ("done", 1, 1, 0)
    assert findings() == set()
    # when: WeChat's record of the refund says 5.10
    sim.refunds[refund["out_refund_no"]]["refund_fen"] = 5_10
    reconcile_day(job_context().pay, day, now + timedelta(hours=1), service_provider=True)
    # then: a finding of the noodle house's run
    assert findings() == {("amount_differs", "refund", refund["out_refund_no"], 5_00, 5_10)}
    [mismatch] = db.session.execute(select(ReconciliationMismatch)).scalars()
    run_of = {r.id: r.sub_mchid for r in _all_runs()}
    assert run_of[mismatch.run_id] == NOODLES


def _all_runs():
    from models import ReconciliationRun

    db.session.rollback()
    return list(db.session.execute(select(ReconciliationRun)).scalars())
