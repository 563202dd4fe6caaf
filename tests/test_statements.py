"""A merchant's monthly statement (issue 16): every figure is the sum of the ledger postings it lists.

The worked example: a merchant's month with two paid orders, a merchant-funded two-way rebate, a partial
refund that claws back both sides and lowers the service fee, credit spent on a promotion, and the month's
fee invoice paid by the credit first. The statement's figures are checked against the story's own numbers,
against the postings each lists, and against the accounts' opening and closing balances.
"""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from sqlalchemy import select

from ledger import check_ledger
from models import AuditLog, FeeInvoice, RedPacket, db, utcnow
from rebate import apply_refund, begin_refund
from rebate.fees import month_bounds, month_of
from tests.money_helpers import app_money
from tests.test_worked_examples import buy

TWO_WAY = {
    "roles": [
        {"role": "issuer", "rate_bps": 1000, "form": "merchant_credit", "cap_fen": 100_00},
        {"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 50_00},
    ]
}


def url(merchant_id: int, month: str, **extra) -> str:
    args = "".join(f"&{k}={v}" for k, v in extra.items())
    return f"/admin/api/merchants/{merchant_id}/statement?month={month}{args}"


@pytest.fixture
def story(client, make_user, make_merchant, make_product, make_campaign, make_operator, pay):
    """The month of the noodle house, told through the admin API where an operator acts."""
    shop = make_merchant("noodle house")
    bowl = make_product(shop, price_fen=100_00)
    _, admin = make_operator("admin")
    _, finance = make_operator("finance")
    # the merchant's own fee: 3 % of each order's total
    fee = client.put(
        f"/admin/api/merchants/{shop.id}/fee-rate", json={"rate_bps": 300, "reason": "contract 2026"}, headers=admin
    )
    assert fee.status_code == 200, fee.json
    # a 500-yuan deposit top-up, proposed by finance and approved by an admin
    proposed = client.post(
        f"/admin/api/merchants/{shop.id}/deposit/top-ups",
        json={"amount_fen": 500_00, "reason": "bank transfer 0042", "transfer_ref": "TR-0042"},
        headers={**finance, "Idempotency-Key": "t1"},
    )
    approved = client.post(
        f"/admin/api/deposit-proposals/{proposed.json['id']}/approve", json={"reason": "slip seen"}, headers=admin
    )
    assert approved.status_code == 200 and approved.json["deposit_fen"] == 500_00
    campaign = make_campaign(
        TWO_WAY,
        fund_deposit_fen=0,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        budget_limit_fen=400_00,
        packet_amount_fen=20_00,
        packet_min_spend_fen=50_00,
        packet_merchant_id=shop.id,
        trigger={"kind": "order_paid", "min_order_fen": 200_00, "first_order_only": True},
    )
    alice = make_user()
    first = buy(alice, bowl, quantity=2)  # 200 yuan: earns the packet
    assert pay(first) == "applied"
    packet = db.session.execute(select(RedPacket).filter_by(owner_id=alice.id)).scalar_one()
    second = buy(alice, bowl, quantity=1, packet=packet)  # 100 yuan, pays 80
    assert pay(second) == "applied"
    # half of the second order's payment is refunded: the rebates and the fee come down in proportion
    begin_refund(second, "R-1", 40_00)
    apply_refund(second.out_trade_no, "R-1", 40_00, utcnow(), money=app_money())
    db.session.commit()
    # 1 yuan of the credit funds the campaign
    spent = client.post(
        f"/admin/api/merchants/{shop.id}/credit/spends",
        json={"amount_fen": 1_00, "campaign_id": campaign.id, "reason": "spring promotion"},
        headers={**finance, "Idempotency-Key": "s1"},
    )
    assert spent.status_code == 201, spent.json
    # the month is invoiced (as the job does after it ends): the credit pays first
    from jobs.invoices import invoice_fees

    month = month_of(utcnow())
    assert invoice_fees(month_bounds(month)[1] + timedelta(hours=1), month) == {"invoiced": 1}
    return shop, month, admin


def figures(statement: dict) -> dict[str, int]:
    return {f["name"]: f["fen"] for f in statement["figures"]}


def test_the_worked_example_statement_sums_to_its_ledger(client, story):
    shop, month, admin = story

    # when: the merchant's statement for the month
    resp = client.get(url(shop.id, month), headers=admin)

    # then: the story's numbers, in fen, each signed as it moved the merchant's account
    assert resp.status_code == 200, resp.json
    s = resp.json
    assert figures(s) == {
        "sales": 300_00,  # 200 + 100 (goods value; the packet paid 20 of it)
        "refunds": -40_00,
        "payable_other": 0,
        "deposit_top_ups": 500_00,
        "deposit_withdrawals": 0,
        "deposit_from_credit": 1_00,
        "discounts_funded": -20_00,
        "rebates_clawed_back": 6_00,  # half of 8 (credit) and of 4 (balance)
        "rebates_paid": -12_00,  # 10 % and 5 % of the 80 paid
        "credit_clawed_back": -4_00,
        "credit_applied_to_fees": -3_00,
        "credit_spent_on_promotions": -1_00,
        "credit_earned": 8_00,
        "fees_accrued": -9_00,  # 3 % of 200 and of 100
        "fees_reduced_by_refunds": 1_50,  # the second order's fee falls to 3 % of 50 (half refunded)
        "fees_paid_by_credit": 3_00,
        "fees_paid": 0,
        "fees_other": 0,
        "frozen_sales": 0,  # direct mode: nothing is paid to a sub-merchant, frozen or profit-shared
        "frozen_refunds": 0,
        "shared_to_persons": 0,
        "frozen_released": 0,
        "frozen_sales_other": 0,
        "own_sales": 0,
        "own_refunds": 0,
        "own_released": 0,
        "own_rebates_clawed_back": 0,
        "own_shares_returned": 0,
        "own_share_debts_settled": 0,
        "own_rebates_funded": 0,
    }
    assert s["summary"]["net_sales"]["fen"] == 260_00 and s["summary"]["net_sales"]["yuan"] == "260.00"
    assert s["summary"]["platform_fees"]["fen"] == -7_50 and s["summary"]["credit_used"]["fen"] == -4_00
    assert s["invoice"]["fee"]["fen"] == 7_50 and s["invoice"]["credit_applied"]["fen"] == 3_00
    assert s["invoice"]["due"]["fen"] == 4_50
    assert s["in_flight"]["fees_owed"]["fen"] == 4_50
    assert s["profit_shares"]["mode"] == "direct" and s["profit_shares"]["shared_to_persons"]["fen"] == 0
    # every account: opening + the month's figures = closing
    assert all(a["reconciles"] for a in s["accounts"]) and len(s["accounts"]) == 6
    # and every figure is the sum of the postings its link lists
    for figure in s["figures"]:
        listed = client.get(figure["entries"], headers=admin)
        assert listed.status_code == 200, (figure["name"], listed.json)
        postings = listed.json["postings"]
        assert sum(p["amount_fen"] for p in postings) == figure["fen"] == listed.json["total_fen"], figure["name"]
        assert len(postings) == figure["postings"]
        assert all(p["account"] == figure["account"] for p in postings)
    db.session.rollback()
    assert check_ledger().ok


def test_the_statement_exports_as_csv_for_excel(client, story):
    shop, month, admin = story

    resp = client.get(url(shop.id, month, format="csv"), headers=admin)

    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    assert resp.data.startswith("\ufeff".encode()) and "attachment" in resp.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(resp.data.decode("utf-8-sig"))))
    assert rows[0] == ["section", "name", "label", "account", "amount_yuan", "amount_fen", "postings"]
    by_name = {(r[0], r[1]): r for r in rows[1:]}
    assert by_name[("figure", "sales")][4:6] == ["300.00", "30000"]
    assert by_name[("figure", "fees_reduced_by_refunds")][4:6] == ["1.50", "150"]
    assert by_name[("summary", "net_sales")][4:6] == ["260.00", "26000"]
    # a figure's postings as CSV too, with their total
    entries = client.get(url(shop.id, month, figure="sales", entries=1, format="csv"), headers=admin)
    lines = list(csv.reader(io.StringIO(entries.data.decode("utf-8-sig"))))
    assert lines[0][-2:] == ["amount_yuan", "amount_fen"] and lines[-1][-2:] == ["300.00", "30000"]
    assert len(lines) == 4  # header, two sales, total


def test_merchant_staff_see_only_their_own_statement(client, story, make_operator, make_merchant):
    shop, month, _ = story
    _, own = make_operator("merchant_staff", merchant=shop)
    _, other = make_operator("merchant_staff")

    assert client.get(url(shop.id, month), headers=own).status_code == 200
    assert client.get(url(shop.id, month), headers=other).status_code == 404
    assert client.get(url(shop.id, month, figure="sales", entries=1), headers=other).status_code == 404


@pytest.mark.parametrize(
    "query, field",
    [
        ("month=2026-13", "month"),
        ("month=2026-1", "month"),
        ("month=26-01", "month"),
        ("month=", "month"),
        ("", "month"),
        ("month=2026-01&format=xls", "format"),
        ("month=2026-01&figure=nope&entries=1", "figure"),
    ],
)
def test_a_bad_query_is_422_naming_the_field(client, make_operator, make_merchant, query, field):
    _, admin = make_operator("admin")
    shop = make_merchant()

    resp = client.get(f"/admin/api/merchants/{shop.id}/statement?{query}", headers=admin)

    assert resp.status_code == 422, resp.json
    assert field in str(resp.json), resp.json


def test_entries_without_a_figure_is_422_and_an_unknown_merchant_404(client, make_operator, make_merchant):
    _, admin = make_operator("admin")
    shop = make_merchant()

    assert client.get(url(shop.id, "2026-01", entries=1), headers=admin).status_code == 422
    assert client.get(url(999_999, "2026-01"), headers=admin).status_code == 404


def test_an_empty_month_is_all_zero_and_reconciles(client, make_operator, make_merchant):
    _, admin = make_operator("admin")
    shop = make_merchant()

    s = client.get(url(shop.id, "2020-02"), headers=admin).json

    assert set(figures(s).values()) == {0} and s["invoice"] is None
    assert all(a["reconciles"] for a in s["accounts"])
    assert not db.session.execute(select(AuditLog)).first()  # reading changes nothing
    assert not db.session.execute(select(FeeInvoice)).first()


def test_in_service_provider_mode_the_statement_names_the_mode(app, client, make_operator, make_merchant):
    _, admin = make_operator("admin")
    shop = make_merchant()
    app.config["FUND_FLOW"] = "service_provider"

    s = client.get(url(shop.id, "2026-01"), headers=admin).json

    assert s["fund_flow"] == "service_provider" and s["profit_shares"]["mode"] == "service_provider"
    assert s["profit_shares"]["shared_to_persons"]["fen"] == 0 and s["profit_shares"]["in_flight"]["payout_ids"] == []
