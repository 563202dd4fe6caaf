"""Reconciliation in service-provider mode (``FUND_FLOW=service_provider``): one trade bill per sub-merchant.

The orders are paid to the merchants' sub-merchant numbers, so the day's trade bills are asked for one
sub-merchant at a time (``GET /v3/bill/tradebill?bill_date=…&sub_mchid=…``, pay.weixin.qq.com partner
"申请单个子商户交易账单"; ``wechatpayv3``'s ``trade_bill(…, sub_mchid=)``), each matched against the orders
paid to that sub-merchant and recorded as its own run. The bills are served through ``responses`` (a
request without the expected ``sub_mchid`` matches nothing and fails), and once end to end by the simulator.
"""

from __future__ import annotations

import gzip
import json
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from responses import matchers
from sqlalchemy import func, select

import jobs.reconcile_cli
from jobs.payouts import job_context, reconcile_day, run_daily_checks
from jobs.reconcile_cli import reconcile_command
from models import Merchant, Order, ReconciliationMismatch, ReconciliationRun, db, utcnow
from models.base import beijing
from payouts import reconcile
from tests.test_partner_flow import admin, keyed, order_body, set_sub_mchid  # noqa: F401 - fixture
from tests.test_partner_flow import app_settings as partner_settings  # noqa: F401 - fixture chain
from tests.test_reconciliation import (
    BASE,
    DAY,
    NOW,
    FakeBills,
    alerts,
    bj,
    findings,
    flow,
    fund_bill,
    merchant_key,  # noqa: F401 - fixture
    ours,  # noqa: F401 - fixture
    paid,
    pay_client,  # noqa: F401 - fixture
    refunded,
    sha1,
    trade_bill,
    wechat_keys,  # noqa: F401 - fixture
)
from tests.test_simulator_e2e import app_settings as sim_settings  # noqa: F401 - fixture chain
from tests.test_simulator_e2e import delivered, login, pay_at_checkout  # noqa: F401 - fixture
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture

NOODLES, TEA, QUIET = "1900000201", "1900000202", "1900000203"
NO_BILL = ("NO_STATEMENT_EXIST", "请求的账单文件不存在")


@pytest.fixture
def app_settings(partner_settings):  # noqa: F811
    return partner_settings


class PartnerBills(FakeBills):
    """FakeBills, plus each sub-merchant's trade bill: answered only when the query names that sub_mchid."""

    def serve_sub(self, sub_mchid: str, content: bytes, hash_value: str | None = None) -> None:
        token = f"trade-{sub_mchid}-{DAY}"
        answer = {
            "hash_type": "SHA1",
            "hash_value": hash_value or sha1(content),
            "download_url": f"{BASE}/v3/billdownload/file?token={token}",
        }
        self._answer_sub(sub_mchid, 200, answer)

        def download(request):  # unsigned, like WeChat's file answer
            self.downloads.append((request.headers.get("Authorization", ""), db.session().in_transaction()))
            return 200, {}, gzip.compress(content)  # asked with tar_type=GZIP; the hash covers the plain file

        token_matcher = matchers.query_param_matcher({"token": token})
        self.rsps.add_callback(responses.GET, f"{BASE}/v3/billdownload/file", download, match=[token_matcher])

    def refuse_sub(self, sub_mchid: str, code: str, message: str) -> None:
        self._answer_sub(sub_mchid, 400, {"code": code, "message": message})

    def _answer_sub(self, sub_mchid: str, status: int, data: dict) -> None:
        body = json.dumps(data).encode()
        query = {"bill_date": DAY, "bill_type": "ALL", "tar_type": "GZIP", "sub_mchid": sub_mchid}
        self.rsps.add(
            responses.GET,
            f"{BASE}/v3/bill/tradebill",
            body=body,
            status=status,
            headers=self.keys.sign_headers(body),
            content_type="application/json",
            match=[matchers.query_param_matcher(query)],
        )

    def asked(self) -> list[str | None]:
        """The sub_mchid of each trade-bill request, in order (None: asked without one)."""
        urls = [urlsplit(c.request.url) for c in self.rsps.calls if "/v3/bill/tradebill" in c.request.url]
        return [parse_qs(url.query).get("sub_mchid", [None])[0] for url in urls]


@pytest.fixture
def wechat(wechat_keys):  # noqa: F811
    with responses.RequestsMock() as rsps:
        yield PartnerBills(rsps, wechat_keys)


@pytest.fixture
def shops(app, make_merchant):
    """Three sub-merchants: a noodle house, a tea shop, and a quiet one that sells nothing that day."""
    made = {}
    for sub_mchid in (NOODLES, TEA, QUIET):
        merchant = make_merchant(f"shop {sub_mchid}")
        merchant.sub_mchid = sub_mchid
        made[sub_mchid] = merchant
    db.session.commit()
    return made


def sold(ours, sub_mchid: str, out_trade_no: str, fen: int, at) -> Order:  # noqa: F811
    order = ours.order(out_trade_no, fen, at)
    order.sub_mchid = sub_mchid
    db.session.commit()
    return order


def at(line: list[str], sub_mchid: str) -> list[str]:
    """A bill line as a service provider's bill writes it: 特约商户号 is the sub-merchant paid."""
    return [*line[:3], sub_mchid, *line[4:]]


def runs() -> dict[tuple[str, str], ReconciliationRun]:
    db.session.rollback()
    return {(r.kind, r.sub_mchid): r for r in db.session.execute(select(ReconciliationRun)).scalars()}


def summary() -> dict[tuple[str, str], tuple]:
    return {key: (r.status, r.lines_read, r.matched, r.mismatches) for key, r in runs().items()}


# -- a day of two sub-merchants --------------------------------------------------------------------


@pytest.fixture
def day_of_two(shops, ours, wechat):  # noqa: F811
    """The noodle house sold two bowls (one partly refunded), the tea shop one cup; each bill lists its own."""
    bowl = sold(ours, NOODLES, "ORD-N1", 30_00, bj(11))
    sold(ours, NOODLES, "ORD-N2", 18_00, bj(12))
    sold(ours, TEA, "ORD-T1", 12_50, bj(15))
    ours.refund(bowl, "RF-N1", 5_00, bj(13))
    wechat.serve_sub(
        NOODLES,
        trade_bill(
            at(paid("ORD-N1", "30.00"), NOODLES),
            at(paid("ORD-N2", "18.00"), NOODLES),
            at(refunded("ORD-N1", "RF-N1", "5.00"), NOODLES),
        ),
    )
    wechat.serve_sub(TEA, trade_bill(at(paid("ORD-T1", "12.50"), TEA)))
    wechat.refuse_sub(QUIET, *NO_BILL)  # a day without trades: no bill, and nothing wrong
    wechat.serve("fund", fund_bill())
    return wechat


def test_a_service_provider_day_reconciles_each_sub_merchants_bill(day_of_two, pay_client):  # noqa: F811
    # when
    returned = reconcile_day(pay_client, DAY, NOW, service_provider=True)
    # then: a trade run per sub-merchant, all matched; the quiet one's "no bill" is a clean, empty run
    assert summary() == {
        ("trade", NOODLES): ("done", 3, 3, 0),
        ("trade", TEA): ("done", 1, 1, 0),
        ("trade", QUIET): ("done", 0, 0, 0),
        ("fundflow", ""): ("done", 0, 0, 0),
    }
    assert [(r.kind, r.sub_mchid) for r in returned] == [
        ("trade", NOODLES),
        ("trade", TEA),
        ("trade", QUIET),
        ("fundflow", ""),
    ]
    assert findings() == set() and alerts("reconciliation_mismatch") == alerts("reconciliation_failed") == []
    # every trade bill was asked for one sub-merchant (the URL carries it); none for our own number
    assert sorted(day_of_two.asked()) == [NOODLES, TEA, QUIET]
    assert [(auth.split(" ")[0], open_tx) for auth, open_tx in day_of_two.downloads] == [
        ("WECHATPAY2-SHA256-RSA2048", False)
    ] * 3  # the two sub-merchants' files and the fund-flow file: signed, no transaction open across them


def test_a_partner_order_missing_from_its_bill_is_the_same_mismatch_and_alert(shops, ours, wechat, pay_client):  # noqa: F811
    # given: the tea shop's bill lacks a cup we saw paid, lists one we lack, and the noodle house's bill lists
    # an order of the tea shop's (paid to the wrong sub-merchant)
    sold(ours, TEA, "ORD-T1", 12_50, bj(15))
    sold(ours, TEA, "ORD-T-LOST", 9_00, bj(16))
    sold(ours, TEA, "ORD-T-ASTRAY", 7_00, bj(17))
    wechat.serve_sub(NOODLES, trade_bill(at(paid("ORD-T-ASTRAY", "7.00"), NOODLES)))
    wechat.serve_sub(TEA, trade_bill(at(paid("ORD-T1", "12.50"), TEA), at(paid("ORD-T-STRANGER", "3.00"), TEA)))
    wechat.refuse_sub(QUIET, *NO_BILL)
    wechat.serve("fund", fund_bill())
    # when
    reconcile_day(pay_client, DAY, NOW, service_provider=True)
    # then: the findings direct mode would make, each under the run of the bill that shows it
    assert findings() == {
        ("missing_there", "order", "ORD-T-LOST", 9_00, None),
        ("missing_there", "order", "ORD-T-ASTRAY", 7_00, None),
        ("missing_here", "order", "ORD-T-STRANGER", None, 3_00),
        ("status_differs", "order", "ORD-T-ASTRAY", 7_00, 7_00),
    }
    run_of = {r.id: r.sub_mchid for r in runs().values()}
    by_run = {
        (run_of[m.run_id], m.subject_ref): m.detail
        for m in db.session.execute(select(ReconciliationMismatch)).scalars()
    }
    assert by_run[(NOODLES, "ORD-T-ASTRAY")] == f"paid to sub-merchant {NOODLES}, ours names {TEA}"
    assert (TEA, "ORD-T-LOST") in by_run and (TEA, "ORD-T-STRANGER") in by_run
    assert summary()[("trade", TEA)] == ("done", 2, 1, 3)
    [alert] = alerts("reconciliation_mismatch")
    assert alert.subject == f"bills {DAY}" and alert.message.startswith(f"4 mismatches on {DAY}")
    assert "ORD-T-LOST" in alert.message and "ORD-T-STRANGER" in alert.message


def test_a_line_of_another_sub_merchant_or_merchant_is_flagged_in_the_bill_that_lists_it(
    shops,
    ours,  # noqa: F811
    wechat,
    pay_client,  # noqa: F811
):
    # given: the tea shop's cup is listed in its own bill, and again in the noodle house's bill under the tea
    # shop's number; the noodle house's bill also lists a payment of a service provider we are not
    sold(ours, TEA, "ORD-T1", 12_50, bj(15))
    sold(ours, NOODLES, "ORD-N1", 30_00, bj(11))
    elsewhere = at(paid("ORD-N1", "30.00"), NOODLES)
    elsewhere[2] = "1999999999"
    wechat.serve_sub(NOODLES, trade_bill(at(paid("ORD-T1", "12.50"), TEA), elsewhere))
    wechat.serve_sub(TEA, trade_bill(at(paid("ORD-T1", "12.50"), TEA)))
    wechat.refuse_sub(QUIET, *NO_BILL)
    wechat.serve("fund", fund_bill())
    # when
    reconcile_day(pay_client, DAY, NOW, service_provider=True)
    # then: each stray line is a finding of the noodle house's run, never matched to our order of that number
    assert findings() == {
        ("missing_here", "order", f"ORD-T1@{TEA}", None, 12_50),
        ("missing_here", "order", "ORD-N1@1999999999", None, 30_00),
        ("missing_there", "order", "ORD-N1", 30_00, None),
    }
    assert summary()[("trade", NOODLES)] == ("done", 2, 0, 3)
    assert summary()[("trade", TEA)] == ("done", 1, 1, 0)
    details = {m.subject_ref: m.detail for m in db.session.execute(select(ReconciliationMismatch)).scalars()}
    assert details[f"ORD-T1@{TEA}"] == f"line 2: 特约商户号 {TEA} is not this bill's ({NOODLES})"


def test_a_rerun_updates_the_same_runs_and_keeps_an_operators_resolution(
    day_of_two,
    ours,  # noqa: F811
    pay_client,  # noqa: F811
    make_operator,
):
    # given: a first run that found the noodle house's bill lacking an order; an operator resolved it
    sold(ours, NOODLES, "ORD-N-LOST", 4_00, bj(18))
    reconcile_day(pay_client, DAY, NOW, service_provider=True)
    operator, _ = make_operator("finance")
    lost = db.session.execute(select(ReconciliationMismatch)).scalar_one()
    lost.resolved_at, lost.resolved_by, lost.resolution = NOW, operator.id, "WeChat closed it; refunded by hand"
    db.session.commit()
    # when: the day runs twice more
    reconcile_day(pay_client, DAY, NOW + timedelta(hours=1), service_provider=True)
    reconcile_day(pay_client, DAY, NOW + timedelta(hours=2), service_provider=True)
    # then: still one run per bill and sub-merchant, one finding, the resolution kept
    assert db.session.execute(select(func.count(ReconciliationRun.id))).scalar_one() == 4
    [lost] = db.session.execute(select(ReconciliationMismatch)).scalars()
    assert (lost.subject_ref, lost.resolved_by) == ("ORD-N-LOST", operator.id)
    assert summary()[("trade", NOODLES)] == ("done", 3, 3, 1)
    assert runs()[("trade", NOODLES)].finished_at == NOW + timedelta(hours=2)
    # the first run paged; the reruns found only what an operator had resolved, and page nobody again
    assert len(alerts("reconciliation_mismatch")) == 1


def test_a_bad_or_absent_sub_merchant_bill_fails_only_its_own_run(shops, ours, wechat, pay_client):  # noqa: F811
    # given: the noodle house's file is not what WeChat announced, the tea shop's bill is not ready yet,
    # and the quiet shop has no bill while we saw one of its orders paid
    sold(ours, NOODLES, "ORD-N1", 30_00, bj(11))
    sold(ours, QUIET, "ORD-Q1", 6_00, bj(9))
    content = trade_bill(at(paid("ORD-N1", "30.00"), NOODLES))
    wechat.serve_sub(NOODLES, content, hash_value=sha1(content + b"tampered"))
    wechat.refuse_sub(TEA, "STATEMENT_CREATING", "账单生成中")
    wechat.refuse_sub(QUIET, *NO_BILL)
    wechat.serve("fund", fund_bill())
    # when
    runs_returned = reconcile_day(pay_client, DAY, NOW, service_provider=True)
    # then: two failed runs, each with its own alert naming the sub-merchant; no partial results for them;
    # the quiet shop's "no bill" is WeChat listing nothing, so our paid order is missing there
    got = runs()
    assert got[("trade", NOODLES)].status == "failed" and "HASH_MISMATCH" in got[("trade", NOODLES)].error
    assert got[("trade", TEA)].status == "failed" and "STATEMENT_CREATING" in got[("trade", TEA)].error
    assert summary()[("trade", QUIET)] == ("done", 0, 0, 1)
    assert findings() == {("missing_there", "order", "ORD-Q1", 6_00, None)}
    assert sorted(a.subject for a in alerts("reconciliation_failed")) == [
        f"trade bill {DAY} of sub-merchant {NOODLES}",
        f"trade bill {DAY} of sub-merchant {TEA}",
    ]
    assert len(runs_returned) == 4


def test_a_malformed_sub_mchid_fails_its_run_without_asking_wechat(shops, wechat, pay_client):  # noqa: F811
    # given: a sub-merchant number that is not 8 to 12 digits (written past the admin API's check)
    shops[QUIET].sub_mchid = "19-bad"
    db.session.commit()
    wechat.serve_sub(NOODLES, trade_bill())
    wechat.serve_sub(TEA, trade_bill())
    wechat.serve("fund", fund_bill())
    # when
    reconcile_day(pay_client, DAY, NOW, service_provider=True)
    # then
    bad = runs()[("trade", "19-bad")]
    assert bad.status == "failed" and bad.error.startswith("BAD_SUB_MCHID")
    assert sorted(wechat.asked()) == [NOODLES, TEA]


def test_which_sub_merchants_a_day_reconciles(app, shops, ours):  # noqa: F811
    # given: an order paid to the tea shop's former number (its merchant has moved to a new one since),
    # and a run a first attempt made for a number no merchant holds any more
    sold(ours, "1900000299", "ORD-OLD-NUMBER", 5_00, bj(10))
    sold(ours, "1900000298", "ORD-OTHER-DAY", 5_00, bj(10, day=2))
    db.session.add(ReconciliationRun(bill_date=DAY, kind="trade", sub_mchid="1900000297"))
    db.session.add(Merchant(name="direct shop"))  # no sub-merchant number: not asked for
    db.session.commit()
    # then
    day = reconcile.bill_day(DAY, NOW)
    assert reconcile.sub_merchants_to_reconcile(day) == sorted([NOODLES, TEA, QUIET, "1900000299", "1900000297"])


def test_direct_mode_still_asks_for_one_bill_of_our_own_number(shops, ours, wechat, pay_client):  # noqa: F811
    # given: the same data, reconciled as a direct merchant (FUND_FLOW=direct)
    sold(ours, TEA, "ORD-T1", 12_50, bj(15))
    wechat.serve("trade", trade_bill(paid("ORD-T1", "12.50")))
    wechat.serve("fund", fund_bill(flow("交易", "收入", "12.50", voucher="ORD-T1")))
    # when
    reconcile_day(pay_client, DAY, NOW)
    # then: one trade run keyed "" (our own), its request without sub_mchid
    assert summary() == {("trade", ""): ("done", 1, 1, 0), ("fundflow", ""): ("done", 1, 0, 0)}
    assert wechat.asked() == [None]


def test_the_daily_job_and_the_command_reconcile_per_sub_merchant(app, day_of_two, pay_client, monkeypatch):  # noqa: F811
    # the daily job, for yesterday in Beijing
    checks = run_daily_checks(pay_client, NOW, point_value_fen=1, service_provider=True)
    assert [(r.kind, r.sub_mchid) for r in checks.runs][-1] == ("fundflow", "") and len(checks.runs) == 4
    # the command reads FUND_FLOW from the configuration and prints a line per sub-merchant's run
    monkeypatch.setattr(jobs.reconcile_cli, "job_context", lambda: type("Ctx", (), {"pay": pay_client}))
    result = app.test_cli_runner().invoke(reconcile_command, ["--date", DAY])
    assert result.exit_code == 0, result.output
    assert "3 sub-merchants' trade bills" in result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
        f"{DAY} trade {NOODLES}",
        f"{DAY} trade {TEA}",
        f"{DAY} trade {QUIET}",
        f"{DAY} fundflow",
        "ledger",
    ]


# -- end to end on the simulator ------------------------------------------------------------------


def test_the_simulator_serves_each_sub_merchant_its_own_bill(
    app,
    client,
    admin,  # noqa: F811
    make_merchant,
    make_product,
    delivered,  # noqa: F811
    no_network,  # noqa: F811
    monkeypatch,
):
    # given: two shops onboarded as sub-merchants, a third that sells nothing; alice buys at the first two
    sim = simulator(app)
    products = {}
    for sub_mchid, price in ((NOODLES, 30_00), (TEA, 12_00), (QUIET, 9_00)):
        shop = make_merchant(f"shop {sub_mchid}")
        assert set_sub_mchid(client, admin, shop.id, sub_mchid=sub_mchid).status_code == 200
        products[sub_mchid] = make_product(shop, price_fen=price)
    alice = login(client, "alice")
    for sub_mchid in (NOODLES, TEA):
        created = client.post("/api/v1/orders", json=order_body(products[sub_mchid]), headers=alice)
        assert created.status_code == 201, created.json
        pay_at_checkout(client, created.json["payment"])
    delivered()
    assert db.session.execute(select(func.count(Order.id)).where(Order.status == "paid")).scalar_one() == 2
    asked = []
    monkeypatch.setattr(sim, "apply_partner_trade_bill", _spy(sim.apply_partner_trade_bill, asked))
    # when: the day is over (in Beijing) and reconciled through the app's own WeChat client
    day = next(iter(sim.orders.values()))["success_time"][:10]
    now = utcnow() + timedelta(days=1)
    assert beijing(now).date().isoformat() > day
    reconcile_day(job_context().pay, day, now, service_provider=True)
    # then: each sub-merchant's bill held its own order only and matched; the quiet one's was "no bill"
    assert sorted(asked) == [NOODLES, TEA, QUIET]
    got = summary()
    assert got[("trade", NOODLES)] == got[("trade", TEA)] == ("done", 1, 1, 0)
    assert got[("trade", QUIET)] == ("done", 0, 0, 0) and got[("fundflow", "")][0] == "done"
    assert findings() == set()


def _spy(apply, asked: list):
    def spy(bill_date, tar_type, download_base, sub_mchid):
        asked.append(sub_mchid)
        return apply(bill_date, tar_type, download_base, sub_mchid)

    return spy
