"""The merchants' half tried from outside (probe C): a merchant's staff, an attacker and the month's edges.

Every merchant-facing id (path, query) and amount at the edges is a 4xx and changes nothing; an order paid at
23:59:59 Beijing on a month's last day and refunded on the 1st lands in the two months as the ledger booked
it, on the statement and on the month's invoice; reasons at their longest are kept or cut, never a 500; the
invoice job does not skip a merchant because someone is writing a row that names it (PostgreSQL).
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, insert, select, update

from jobs.profit_sharing import query_profit_shares, share_due_orders
from models import DepositProposal, LedgerEntry, Product, ProfitShare, db, utcnow
from rebate.fees import month_bounds, month_of
from tests.conftest import on_postgres
from tests.test_fees import book_in, invoice_at, refund, row
from tests.test_partner_flow import keyed
from tests.test_service_provider_worked_example import ledger_holds, paid_partner_order
from tests.test_simulator_e2e import delivered  # noqa: F401 - fixture
from tests.test_statements import figures, url
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture
from tests.test_worked_examples import buy

EDGE_IDS = [2**31, 2**63, 2**64, -1, 0]
EDGE_AMOUNTS = [0, 2**63, 2**63 - 1, -1, "1", 1.0, 1.5, True, None, "１", [1], {"fen": 1}]


def test_every_merchant_facing_id_and_amount_at_the_edges_is_a_4xx_and_changes_nothing(
    client, make_operator, make_merchant
):
    _, admin = make_operator("admin")
    shop = make_merchant()
    _, staff = make_operator("merchant_staff", merchant=shop)
    server_errors = []
    for headers in (admin, staff):
        for mid in [*EDGE_IDS, shop.id]:
            for path in (
                f"/admin/api/merchants/{mid}/statement?month=2026-01",
                f"/admin/api/merchants/{mid}/statement?month=2026-01&format=csv",
                f"/admin/api/merchants/{mid}/statement?month=2026-01&figure=sales&entries=1&format=csv",
                f"/admin/api/merchants/{mid}/fee-invoices?limit=500&offset=10000000",
                f"/admin/api/merchants/{mid}/fee-rate",
                f"/admin/api/merchants/{mid}/wechat-pay",
                f"/admin/api/deposit-proposals?merchant_id={mid}",
                f"/admin/api/profit-shares?merchant_id={mid}",
                f"/admin/api/profit-shares?order_id={mid}",
                f"/admin/api/deposit-proposals/{mid}/approve",
                f"/admin/api/orders/{mid}/milestones",
            ):
                got = client.get(path, headers=headers)
                if got.status_code >= 500:
                    server_errors.append(("GET", path, got.status_code))
                got = client.post(
                    path, json={"reason": "xyz", "name": "a"}, headers={**headers, "Idempotency-Key": "k"}
                )
                if got.status_code >= 500:
                    server_errors.append(("POST", path, got.status_code))
    accepted = []
    for amount in EDGE_AMOUNTS:
        for path in (
            f"/admin/api/merchants/{shop.id}/deposit/top-ups",
            f"/admin/api/merchants/{shop.id}/fee-payments",
            f"/admin/api/merchants/{shop.id}/credit/spends",
        ):
            got = client.post(
                path, json={"amount_fen": amount, "reason": "edge"}, headers={**admin, "Idempotency-Key": f"{amount!r}"}
            )
            if got.status_code >= 500:
                server_errors.append((path, amount, got.status_code))
            elif got.status_code < 400:
                accepted.append((path, amount))
    for rate in [10001, -1, 2**63, "5", 5.0, True, None]:
        got = client.put(
            f"/admin/api/merchants/{shop.id}/fee-rate", json={"rate_bps": rate, "reason": "edge"}, headers=admin
        )
        if got.status_code >= 500 or got.status_code < 400:
            server_errors.append(("fee-rate", rate, got.status_code))
    for query in ["limit=0", "limit=501", "offset=-1", "offset=99999999999", "status=bogus", "merchant_id=abc"]:
        for path in (
            "/admin/api/deposit-proposals",
            "/admin/api/profit-shares",
            f"/admin/api/merchants/{shop.id}/fee-invoices",
        ):
            got = client.get(f"{path}?{query}", headers=staff)
            if got.status_code != 422:
                server_errors.append((path, query, got.status_code))

    assert not server_errors, server_errors
    assert not accepted, accepted
    db.session.rollback()
    assert db.session.execute(select(func.count()).select_from(DepositProposal)).scalar() == 0
    assert db.session.execute(select(func.count()).select_from(LedgerEntry)).scalar() == 0


def test_an_order_paid_at_235959_on_the_last_day_and_refunded_on_the_1st_splits_between_the_two_months(
    app, client, monkeypatch, make_operator, make_user, make_merchant, make_product, pay
):
    # given: 2 % fees; a 100-yuan order booked 1 µs before January ends in Beijing (15:59:59.999999 UTC)
    app.config["PLATFORM_FEE_BPS"] = 200
    _, admin = make_operator("admin")
    shop = make_merchant()
    end = month_bounds("2025-01")[1]
    monkeypatch.setattr("ledger.posting.utcnow", lambda: end - timedelta(microseconds=1))
    order = buy(make_user(), make_product(shop, price_fen=100_00))
    pay(order)
    # when: half of it is refunded at 00:00:00 on 1 February, Beijing time
    monkeypatch.setattr("ledger.posting.utcnow", lambda: end)
    refund(order, "R-1", 50_00)
    # then: the sale and its fee are January's, the refund and the fee it gave back February's
    jan, feb = (
        {
            f["name"]: f["fen"]
            for f in client.get(f"/admin/api/merchants/{shop.id}/statement?month={m}", headers=admin).json["figures"]
        }
        for m in ("2025-01", "2025-02")
    )
    assert (jan["sales"], jan["refunds"], jan["fees_accrued"], jan["fees_reduced_by_refunds"]) == (100_00, 0, -2_00, 0)
    assert (feb["sales"], feb["refunds"], feb["fees_accrued"], feb["fees_reduced_by_refunds"]) == (0, -50_00, 0, 1_00)
    # and January's invoice bills January's fee; the refund's part is netted by February's
    assert invoice_at(monkeypatch, "2025-01") == {"invoiced": 1}
    assert row(shop.id, "2025-01") == (2_00, 0, 2_00)


def test_reasons_at_their_longest_are_kept_or_cut_never_a_500(client, make_operator, make_merchant):
    _, admin = make_operator("admin")
    _, finance = make_operator("finance")
    shop = make_merchant()
    longest = "长" * 500
    proposed = client.post(
        f"/admin/api/merchants/{shop.id}/deposit/top-ups",
        json={"amount_fen": 100, "reason": longest, "transfer_ref": "TR-A"},
        headers={**finance, "Idempotency-Key": "a"},
    )
    assert proposed.status_code == 201, proposed.json
    approved = client.post(
        f"/admin/api/deposit-proposals/{proposed.json['id']}/approve", json={"reason": longest}, headers=admin
    )
    assert approved.status_code == 200 and approved.json["deposit_fen"] == 100, approved.json
    rate = client.put(
        f"/admin/api/merchants/{shop.id}/fee-rate", json={"rate_bps": 5, "reason": longest}, headers=admin
    )
    assert rate.status_code == 200, rate.json
    ids = {"sub_mchid": "12345678", "reason": longest}
    assert client.put(f"/admin/api/merchants/{shop.id}/wechat-pay", json=ids, headers=admin).status_code == 200
    again = client.post(
        f"/admin/api/merchants/{shop.id}/deposit/top-ups",
        json={"amount_fen": 100, "reason": longest, "transfer_ref": "TR-C"},
        headers={**finance, "Idempotency-Key": "c"},
    )
    rejected = client.post(
        f"/admin/api/deposit-proposals/{again.json['id']}/reject", json={"reason": longest}, headers=admin
    )
    assert rejected.status_code == 200, rejected.json


class TestServiceProvider:
    @pytest.fixture
    def app_settings(self, app_settings):
        holder: dict = {}

        def post_into_app(url: str, headers: dict, body: bytes) -> int:
            return holder["app"].test_client().post(urlsplit(url).path, data=body, headers=headers).status_code

        return {
            **app_settings,
            "WECHAT_SIM_NOTIFY_TRANSPORT": post_into_app,
            "WECHAT_SIM_NOTIFY_DELAY_S": 0.01,
            "WECHAT_RETRY_BACKOFF_S": 0,
            "_NOTIFY_HOLDER": holder,
            "FUND_FLOW": "service_provider",
            "PROFIT_SHARING_HOLD_DAYS": 7,
        }

    @pytest.fixture
    def admin(self, make_operator):
        return make_operator("admin")[1]

    def test_a_refund_while_the_share_is_at_wechat_is_not_taken_from_money_already_unfrozen(
        self, app, client, admin, make_merchant, make_product, make_campaign, make_operator, delivered, no_network
    ):
        # given: the worked example's order (90 yuan frozen; 13.50 to share), its share sent and PROCESSING: the
        # simulator, as WeChat with unfreeze_unsplit, unfroze the other 76.50 to the merchant when it took it
        sim = simulator(app)
        ids = paid_partner_order(client, admin, make_merchant, make_product, make_campaign, delivered)
        order_id = ids["order"]
        assert share_due_orders()["opened"] == 1
        later = utcnow() - timedelta(seconds=1)
        db.session.execute(
            update(ProfitShare).where(ProfitShare.order_id == order_id).values(due_at=later, next_attempt_at=later)
        )
        db.session.commit()
        assert share_due_orders() == {"processing": 1}
        assert sim.frozen[ids["transaction_id"]]["unsplit_fen"] == 0
        # when: 40 yuan are refunded meanwhile, then the share finishes
        finance = make_operator("finance")[1]
        body = {"amount_fen": 40_00, "reason": "cold"}
        refunded = client.post(f"/admin/api/orders/{order_id}/refunds", json=body, headers=keyed(finance))
        assert refunded.status_code == 201, refunded.json
        delivered()
        db.session.execute(update(ProfitShare).where(ProfitShare.order_id == order_id).values(next_attempt_at=later))
        db.session.commit()
        assert query_profit_shares() == {"finished": 1}
        ledger_holds()
        # then: the ledger released what WeChat unfroze (76.50), as the statement says; the refund came from the
        # merchant's own unfrozen money, nothing of it from the frozen money
        s = client.get(url(ids["shop"], month_of(utcnow())), headers=admin).json
        got = figures(s)
        assert s["profit_shares"]["unfrozen_to_merchant"]["fen"] == got["frozen_released"] == 76_50
        assert got["frozen_refunds"] == 0


@pytest.mark.skipif(not on_postgres(), reason="row locks: PostgreSQL (SQLite serialises its transactions)")
def test_a_buyers_payment_in_flight_does_not_make_the_invoice_job_skip_its_merchant(
    app, monkeypatch, make_user, make_merchant, make_product, pay
):
    """The invoice job claims the merchant's row so that two invoicers never invoice it at once. A transaction
    writing a row that names the merchant (a payment's order fee, a new product) is no invoicer: the merchant is
    invoiced, not skipped until a run finds nobody paying it (a busy merchant: rarely)."""
    app.config["PLATFORM_FEE_BPS"] = 200
    shop = make_merchant()
    book_in(monkeypatch, "2025-01")
    pay(buy(make_user(), make_product(shop, price_fen=100_00)))
    db.session.commit()
    # a transaction writing a row that names the merchant, not yet committed (a payment's order fee row, or as
    # here a product being added): PostgreSQL's foreign-key check holds a key-share lock on the merchant's row
    paying = db.engine.connect()
    paying.begin()
    try:
        paying.execute(
            insert(Product).values(
                merchant_id=shop.id, name="new bowl", category="food", price_fen=1, created_at=utcnow()
            )
        )
        done = invoice_at(monkeypatch, "2025-01")
    finally:
        paying.rollback()
        paying.close()
    assert done == {"invoiced": 1}
    assert row(shop.id, "2025-01") == (2_00, 0, 2_00)
