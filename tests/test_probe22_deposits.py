"""Probe 22 of the merchants' money side: deposits (top-ups with four eyes, what they promise), fees, invoices,
statements and who among a merchant's staff may read or write what.

Each test pins a behaviour probe 22 checked (as a merchant, another merchant's staff, a suspended merchant and an
operator); all held when written, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from ledger import Leg, account, balance, check_ledger, post_entry
from models import AccountKind, DepositProposal, FeeInvoice, LedgerEntry, Merchant, db, utcnow
from rebate.fees import month_bounds, month_of
from tests.test_fees import refund
from tests.test_worked_examples import buy


def deposit(merchant_id: int) -> int:
    db.session.rollback()
    return balance(account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", merchant_id))


def propose(client, headers: dict, merchant_id: int, amount_fen: int, key: str = "p1") -> int:
    resp = client.post(
        f"/admin/api/merchants/{merchant_id}/deposit/top-ups",
        json={"amount_fen": amount_fen, "reason": "bank transfer 0042", "transfer_ref": f"TR-{key}"},
        headers={**headers, "Idempotency-Key": key},
    )
    assert resp.status_code == 201, resp.json
    return resp.json["id"]


# --- deposit top-ups: credited once, for the amount recorded ---------------------------------------------------


def test_two_operators_approving_one_top_up_at_once_credit_it_once(app, client, make_operator, make_merchant):
    from tests.concurrency import post_together

    shop = make_merchant()
    _, finance = make_operator("finance")
    _, admin = make_operator("admin")
    _, admin2 = make_operator("admin")
    proposal = propose(client, finance, shop.id, 300_00)
    path = f"/admin/api/deposit-proposals/{proposal}/approve"

    results = post_together(app, [(path, admin, {"reason": "slip seen"}), (path, admin2, {"reason": "slip seen"})])

    assert sorted(results) == [(200, None), (409, "proposal_decided")], results
    assert deposit(shop.id) == 300_00
    keys = select(func.count()).where(LedgerEntry.idempotency_key.like(f"deposit:{shop.id}:%"))
    assert db.session.execute(keys).scalar_one() == 1


def test_an_approval_replayed_or_sent_again_credits_once(client, make_operator, make_merchant):
    shop = make_merchant()
    _, finance = make_operator("finance")
    _, admin = make_operator("admin")
    proposal = propose(client, finance, shop.id, 300_00)
    path = f"/admin/api/deposit-proposals/{proposal}/approve"

    first = client.post(path, json={"reason": "slip seen"}, headers={**admin, "Idempotency-Key": "a1"})
    replay = client.post(path, json={"reason": "slip seen"}, headers={**admin, "Idempotency-Key": "a1"})
    again = client.post(path, json={"reason": "slip seen"}, headers=admin)

    assert first.status_code == 200 and first.json["deposit_fen"] == 300_00, first.json
    assert replay.status_code == 200 and replay.json == first.json
    assert (again.status_code, again.json["error"]) == (409, "proposal_decided")
    assert deposit(shop.id) == 300_00


def test_an_approval_naming_another_amount_is_refused_and_moves_nothing(client, make_operator, make_merchant):
    shop = make_merchant()
    _, finance = make_operator("finance")
    _, admin = make_operator("admin")
    proposal = propose(client, finance, shop.id, 300_00)

    resp = client.post(
        f"/admin/api/deposit-proposals/{proposal}/approve",
        json={"reason": "slip seen", "amount_fen": 3_000_00},
        headers=admin,
    )

    assert resp.status_code == 422, resp.json
    assert deposit(shop.id) == 0
    assert db.session.get(DepositProposal, proposal).status == "pending"


# --- statements: a month's figures are exactly the ledger's movements in that Beijing month --------------------


def book_at(monkeypatch, when) -> None:
    monkeypatch.setattr("ledger.posting.utcnow", lambda: when)


def test_the_statement_month_ends_at_beijing_midnight(app, client, monkeypatch, make_operator, make_merchant):
    from rebate.deposits import top_up

    shop = make_merchant()
    _, admin = make_operator("admin")
    start, end = month_bounds("2031-03")  # 2031-02-28 16:00 UTC to 2031-03-31 16:00 UTC
    for when, amount, key in (
        (start - timedelta(microseconds=1), 1, "before"),  # February 23:59:59.999999 Beijing
        (start, 10, "first"),  # March 1 00:00 Beijing
        (end - timedelta(microseconds=1), 100, "last"),  # March 31 23:59:59.999999 Beijing
        (end, 1000, "after"),  # April 1 00:00 Beijing
    ):
        book_at(monkeypatch, when)
        top_up(shop.id, amount, key, f"top-up {key}")
        db.session.commit()

    march = client.get(f"/admin/api/merchants/{shop.id}/statement?month=2031-03", headers=admin).json
    april = client.get(f"/admin/api/merchants/{shop.id}/statement?month=2031-04", headers=admin).json

    top_ups = {f["name"]: f["fen"] for f in march["figures"]}["deposit_top_ups"]
    assert top_ups == 110
    assert {f["name"]: f["fen"] for f in april["figures"]}["deposit_top_ups"] == 1000
    acc = {a["account"]: a for a in march["accounts"]}[f"merchant_marketing_deposit:merchant:{shop.id}"]
    assert (acc["opening_fen"], acc["movement_fen"], acc["closing_fen"], acc["reconciles"]) == (1, 110, 111, True)


def merchant_movements(merchant_id: int, start, end) -> dict[str, int]:
    """Every posting on the merchant's accounts booked in [start, end), summed per account, straight from the
    ledger."""
    from models import LedgerAccount, LedgerPosting

    rows = db.session.execute(
        select(LedgerAccount.code, func.sum(LedgerPosting.amount))
        .join(LedgerPosting, LedgerPosting.account_id == LedgerAccount.id)
        .join(LedgerEntry, LedgerEntry.id == LedgerPosting.entry_id)
        .where(
            LedgerAccount.owner_type == "merchant",
            LedgerAccount.owner_id == merchant_id,
            LedgerEntry.created_at >= start,
            LedgerEntry.created_at < end,
        )
        .group_by(LedgerAccount.code)
    ).all()
    return {code: int(total) for code, total in rows if total}


TWO_WAY = {
    "roles": [
        {"role": "issuer", "rate_bps": 1000, "form": "merchant_credit", "cap_fen": 100_00},
        {"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 50_00},
    ]
}


def test_a_month_with_a_refund_and_clawback_after_it_sums_to_the_ledger_and_csv_is_the_same_money(
    app, client, monkeypatch, make_user, make_merchant, make_product, make_campaign, make_operator, pay
):
    from rebate import issue_packet

    app.config["PLATFORM_FEE_BPS"] = 333  # 3.33 %: fees with fractions of a fen, rounded down
    shop = make_merchant()
    bowl = make_product(shop, price_fen=99_99)
    _, staff = make_operator("merchant_staff", merchant=shop)
    month = "2031-05"
    start, end = month_bounds(month)
    book_at(monkeypatch, start + timedelta(days=3))
    campaign = make_campaign(
        TWO_WAY,
        fund_deposit_fen=500_00,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        budget_limit_fen=400_00,
        packet_amount_fen=20_00,
        packet_merchant_id=shop.id,
    )
    alice = make_user()
    packet = issue_packet(campaign, alice, source="test", source_ref="a", now=utcnow())
    db.session.commit()
    order = buy(alice, bowl, quantity=1, packet=packet)
    book_at(monkeypatch, end - timedelta(seconds=1))  # paid the month's last second, Beijing
    assert pay(order) == "applied"
    book_at(monkeypatch, end)  # refunded at midnight: the next month's
    refund(order, "R-1", 33_33)

    s = client.get(f"/admin/api/merchants/{shop.id}/statement?month={month}", headers=staff)
    assert s.status_code == 200, s.json
    s = s.json
    truth = merchant_movements(shop.id, start, end)
    by_account: dict[str, int] = {}
    for f in s["figures"]:
        by_account[f["account"]] = by_account.get(f["account"], 0) + f["fen"]
    assert {k: v for k, v in by_account.items() if v} == truth
    assert all(a["reconciles"] for a in s["accounts"])
    figures = {f["name"]: f["fen"] for f in s["figures"]}
    assert figures["refunds"] == 0 and figures["rebates_clawed_back"] == 0 and figures["fees_reduced_by_refunds"] == 0
    assert figures["fees_accrued"] == -(99_99 * 333 // 10000)
    for name, fen in figures.items():
        listed = client.get(
            f"/admin/api/merchants/{shop.id}/statement?month={month}&figure={name}&entries=1", headers=staff
        ).json
        assert listed["total_fen"] == fen, name

    # the next month has the refund and its clawbacks, and also sums to the ledger
    following = month_of(end)
    nxt = client.get(f"/admin/api/merchants/{shop.id}/statement?month={following}", headers=staff).json
    nfig = {f["name"]: f["fen"] for f in nxt["figures"]}
    assert nfig["refunds"] == -33_33 and nfig["fees_reduced_by_refunds"] > 0 and nfig["rebates_clawed_back"] > 0
    ntruth = merchant_movements(shop.id, *month_bounds(following))
    nsum: dict[str, int] = {}
    for f in nxt["figures"]:
        nsum[f["account"]] = nsum.get(f["account"], 0) + f["fen"]
    assert {k: v for k, v in nsum.items() if v} == ntruth

    # the CSV is the same money, line by line
    raw = client.get(f"/admin/api/merchants/{shop.id}/statement?month={month}&format=csv", headers=staff)
    rows = list(csv.DictReader(io.StringIO(raw.data.decode("utf-8-sig"))))
    csv_figures = {r["name"]: int(r["amount_fen"]) for r in rows if r["section"] == "figure"}
    assert csv_figures == figures
    for r in rows:
        if r["amount_fen"] not in ("", None):
            fen = int(r["amount_fen"])
            assert r["amount_yuan"] == f"{'-' if fen < 0 else ''}{abs(fen) // 100}.{abs(fen) % 100:02d}", r
    csv_summary = {r["name"]: int(r["amount_fen"]) for r in rows if r["section"] == "summary"}
    assert csv_summary == {n: v["fen"] for n, v in s["summary"].items()}
    csv_flight = {r["name"]: int(r["amount_fen"]) for r in rows if r["section"] == "in_flight"}
    assert csv_flight == {n: v["fen"] for n, v in s["in_flight"].items()}


FORMULAS = ("=1+1", "+1+1", "-1+cmd", "@SUM(A1)", "\t=1", "\r=1")


@pytest.mark.parametrize("text", FORMULAS)
def test_the_postings_csv_escapes_a_memo_that_would_run_as_a_formula(client, make_operator, make_merchant, text):
    shop = make_merchant()
    _, admin = make_operator("admin")
    post_entry(
        f"deposit:{shop.id}:evil",
        text,
        [
            Leg(account(AccountKind.WECHAT_SETTLEMENT), -1_00),
            Leg(account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id), 1_00),
        ],
    )
    db.session.commit()
    month = month_of(utcnow())

    raw = client.get(
        f"/admin/api/merchants/{shop.id}/statement?month={month}&figure=deposit_top_ups&entries=1&format=csv",
        headers=admin,
    )

    rows = list(csv.reader(io.StringIO(raw.data.decode("utf-8-sig"))))
    cells = [c for row in rows for c in row]
    assert ("'" + text) in cells
    assert not any(c[:1] in ("=", "+", "@", "\t", "\r") for c in cells)
    assert all(c[:1] != "-" or c.lstrip("-").replace(".", "").isdigit() for c in cells)


# --- fees --------------------------------------------------------------------------------------------------------


def test_a_refund_notified_twice_lowers_the_fee_once(app, make_user, make_merchant, make_product, pay):
    from models import OrderFee
    from rebate import apply_refund
    from tests.money_helpers import app_money

    app.config["PLATFORM_FEE_BPS"] = 250
    shop = make_merchant()
    order = buy(make_user(), make_product(shop, price_fen=100_01))
    pay(order)
    refund(order, "R-1", 50_00)
    apply_refund(order.out_trade_no, "R-1", 50_00, utcnow(), money=app_money())
    db.session.commit()
    refund(order, "R-2", 50_01)

    fee = db.session.get(OrderFee, order.id)
    assert (fee.accrued_fen, fee.fee_fen) == (100_01 * 250 // 10000, 0)
    entries = select(func.count()).where(LedgerEntry.idempotency_key.like("fee:refund:%"))
    assert db.session.execute(entries).scalar_one() == 2
    assert balance(account(AccountKind.MERCHANT_FEES_DUE, "merchant", shop.id)) == 0


# --- merchant staff: who reads and writes what --------------------------------------------------------------------


def test_a_suspended_merchants_staff_read_their_money_but_write_nothing(
    client, make_operator, make_merchant, make_user, make_product, pay
):
    shop = make_merchant()
    _, staff = make_operator("merchant_staff", merchant=shop)
    order = buy(make_user(), make_product(shop))
    pay(order)
    db.session.get(Merchant, shop.id).status = "suspended"
    db.session.commit()
    month = month_of(utcnow())

    reads = [
        f"/admin/api/merchants/{shop.id}/statement?month={month}",
        f"/admin/api/merchants/{shop.id}/statement?month={month}&format=csv",
        f"/admin/api/merchants/{shop.id}/fee-invoices",
        f"/admin/api/merchants/{shop.id}/fee-rate",
        f"/admin/api/deposit-proposals?merchant_id={shop.id}",
        f"/admin/api/merchants/{shop.id}/deposit",
    ]
    for path in reads:
        assert client.get(path, headers=staff).status_code == 200, path
    resp = client.post(
        f"/admin/api/orders/{order.id}/milestones",
        json={"name": "lessons_10"},
        headers={**staff, "Idempotency-Key": "m1"},
    )
    assert (resp.status_code, resp.json["error"]) == (403, "merchant_suspended")


def test_merchant_staff_write_no_money_and_see_nothing_of_another_merchant(
    client, make_operator, make_merchant, make_user, make_product, pay
):
    shop, other = make_merchant(), make_merchant()
    _, staff = make_operator("merchant_staff", merchant=shop)
    _, finance = make_operator("finance")
    theirs = propose(client, finance, other.id, 1_00)
    mine = propose(client, finance, shop.id, 1_00, key="p2")
    other_order = buy(make_user(), make_product(other))
    pay(other_order)
    month = month_of(utcnow())

    writes = [
        ("POST", f"/admin/api/merchants/{shop.id}/deposit/top-ups", {"amount_fen": 1_00, "reason": "mine"}),
        ("POST", f"/admin/api/merchants/{shop.id}/fee-payments", {"amount_fen": 1_00, "reason": "mine"}),
        ("POST", f"/admin/api/deposit-proposals/{mine}/approve", {"reason": "mine"}),
        ("POST", f"/admin/api/deposit-proposals/{mine}/reject", {"reason": "mine"}),
        ("POST", f"/admin/api/merchants/{shop.id}/credit/spends", {"amount_fen": 1_00, "reason": "mine"}),
        ("PUT", f"/admin/api/merchants/{shop.id}/fee-rate", {"rate_bps": 0, "reason": "mine"}),
        ("PUT", f"/admin/api/merchants/{shop.id}/wechat-pay", {"sub_mchid": None, "reason": "mine"}),
    ]
    for method, path, body in writes:
        resp = client.open(path, method=method, json=body, headers={**staff, "Idempotency-Key": f"k-{path}"})
        assert resp.status_code == 403, (path, resp.json)
    for path in (
        f"/admin/api/merchants/{other.id}/statement?month={month}",
        f"/admin/api/merchants/{other.id}/fee-invoices",
        f"/admin/api/merchants/{other.id}/fee-rate",
        f"/admin/api/deposit-proposals?merchant_id={other.id}",
        f"/admin/api/merchants/{other.id}/deposit",
    ):
        assert client.get(path, headers=staff).status_code == 404, path
    listed = client.get("/admin/api/deposit-proposals", headers=staff).json["items"]
    assert [p["id"] for p in listed] == [mine] and theirs not in [p["id"] for p in listed]
    resp = client.post(
        f"/admin/api/orders/{other_order.id}/milestones",
        json={"name": "lessons_10"},
        headers={**staff, "Idempotency-Key": "m2"},
    )
    assert resp.status_code == 404
    assert deposit(shop.id) == 0 and check_ledger().ok
    assert db.session.execute(select(func.count()).select_from(FeeInvoice)).scalar_one() == 0


def test_a_top_up_resent_under_its_key_with_another_amount_is_422_and_records_one_proposal(
    client, make_operator, make_merchant
):
    shop = make_merchant()
    _, finance = make_operator("finance")
    propose(client, finance, shop.id, 300_00, key="slip-42")

    again = client.post(
        f"/admin/api/merchants/{shop.id}/deposit/top-ups",
        json={"amount_fen": 3_000_00, "reason": "bank transfer 0042", "transfer_ref": "TR-slip-42"},
        headers={**finance, "Idempotency-Key": "slip-42"},
    )

    assert again.status_code == 422, again.json
    rows = db.session.execute(select(DepositProposal).filter_by(merchant_id=shop.id)).scalars().all()
    assert [p.amount_fen for p in rows] == [300_00]


def test_a_top_up_proposed_twice_at_once_under_one_key_is_one_proposal(app, client, make_operator, make_merchant):
    from tests.concurrency import post_together

    shop = make_merchant()
    _, finance = make_operator("finance")
    path = f"/admin/api/merchants/{shop.id}/deposit/top-ups"
    body = {"amount_fen": 300_00, "reason": "bank transfer 0042", "transfer_ref": "TR-slip-43"}
    headers = {**finance, "Idempotency-Key": "slip-43"}

    results = post_together(app, [(path, headers, body)] * 3)

    assert all(status in (201, 409) for status, _ in results) and (201, None) in results, results
    db.session.rollback()
    rows = db.session.execute(select(DepositProposal).filter_by(merchant_id=shop.id)).scalars().all()
    assert len(rows) == 1


def test_an_approval_and_a_rejection_at_once_decide_once(app, client, make_operator, make_merchant):
    from tests.concurrency import post_together

    shop = make_merchant()
    _, finance = make_operator("finance")
    _, admin = make_operator("admin")
    _, admin2 = make_operator("admin")
    proposal = propose(client, finance, shop.id, 300_00)

    results = post_together(
        app,
        [
            (f"/admin/api/deposit-proposals/{proposal}/approve", admin, {"reason": "slip seen"}),
            (f"/admin/api/deposit-proposals/{proposal}/reject", admin2, {"reason": "no slip"}),
        ],
    )

    assert sorted(r[0] for r in results) == [200, 409], results
    db.session.rollback()
    status = db.session.get(DepositProposal, proposal).status
    assert deposit(shop.id) == (300_00 if status == "approved" else 0)


def test_three_invoice_jobs_at_once_invoice_each_merchant_once(app, make_user, make_merchant, make_product, pay):
    from jobs.invoices import invoice_fees
    from tests.concurrency import together
    from tests.test_fees import give_credit

    app.config["PLATFORM_FEE_BPS"] = 333
    shops = [make_merchant() for _ in range(3)]
    for i, shop in enumerate(shops):
        pay(buy(make_user(), make_product(shop, price_fen=100_01 + i)))
        if i:
            give_credit(shop.id, 1_00 * i, key=f"c{i}")
    month = month_of(utcnow())
    later = month_bounds(month)[1] + timedelta(minutes=1)

    results = together(3, lambda i: invoice_fees(later), app=app)

    assert not any(isinstance(r, Exception) for r in results), results
    assert sum(r["invoiced"] for r in results) == 3, results
    db.session.rollback()
    invoices = db.session.execute(select(FeeInvoice).order_by(FeeInvoice.merchant_id)).scalars().all()
    assert [(i.merchant_id, i.month) for i in invoices] == [(s.id, month) for s in shops]
    for i, inv in enumerate(invoices):
        fee = (100_01 + i) * 333 // 10000
        assert (inv.fee_fen, inv.credit_applied_fen, inv.due_fen) == (fee, min(1_00 * i, fee), fee - min(1_00 * i, fee))
    entries = select(func.count()).where(LedgerEntry.idempotency_key.like("invoice:%"))
    assert db.session.execute(entries).scalar_one() == 2
    assert check_ledger().ok
