"""The console's "商户对账 Statements" page (web/console/statements.py): the statement API's own figures, its
CSV, merchant scoping, and the deposit top-ups awaiting a second operator with their approve form.

A second story (``shared_month``, service-provider mode) gives every line an accountant reads a value that is
not zero: a fee invoice that gave credit back and carried the rest forward, a share that came back to the
merchant and shares clawed back after they were paid (owed by the persons). The page and the CSV must show
each of them with the API's amount."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import pytest

from jobs.invoices import invoice_fees
from jobs.profit_sharing import share_due_orders
from ledger import account, balance
from models import AccountKind, db, utcnow
from money import format_yuan
from rebate.fees import month_bounds, month_of
from tests.browser import browser, live_server, page, shot, sign_in  # noqa: F401 - fixtures
from tests.console_helpers import csrf_of, post, token_of
from tests.console_helpers import sign_in as client_sign_in
from tests.test_fees import book_in, give_credit
from tests.test_partner_flow import admin, keyed  # noqa: F401 - fixture
from tests.test_profit_sharing import sim  # noqa: F401 - fixture
from tests.test_share_debts import payouts_of, shop  # noqa: F401 - fixture
from tests.test_statements import story  # noqa: F401 - fixture
from web.statements_api import INVOICE_LINES, PROFIT_SHARE_LINES


def test_the_page_shows_the_apis_figures_and_downloads_its_csv(client, story):  # noqa: F811
    shop, month, admin = story
    api = client.get(f"/admin/api/merchants/{shop.id}/statement?month={month}", headers=admin).json
    client_sign_in(client, admin)

    html = client.get(f"/console/statements?merchant_id={shop.id}&month={month}").get_data(as_text=True)
    csv = client.get(f"/console/statements?merchant_id={shop.id}&month={month}&format=csv")

    assert 'data-figure="sales"' in html and "¥300.00" in html and "¥-9.00" in html
    assert "✗" not in html and html.count("✓ reconciles") == 6
    assert "商户对账 Statements" in html  # in the menu
    assert csv.status_code == 200 and csv.mimetype == "text/csv" and csv.data.startswith("\ufeff".encode())
    assert (
        csv.data == client.get(f"/admin/api/merchants/{shop.id}/statement?month={month}&format=csv", headers=admin).data
    )
    assert api["summary"]["net_sales"]["fen"] == 260_00


def test_merchant_staff_open_their_own_statement_and_404_for_another(client, story, make_operator):  # noqa: F811
    shop, month, _ = story
    _, own = make_operator("merchant_staff", merchant=shop)
    _, stranger = make_operator("merchant_staff")

    client_sign_in(client, own)
    mine = client.get(f"/console/statements?month={month}")  # no merchant asked: their own
    client_sign_in(client, stranger)
    theirs = client.get(f"/console/statements?merchant_id={shop.id}&month={month}")

    assert mine.status_code == 200 and "noodle house" in mine.get_data(as_text=True)
    assert theirs.status_code == 404


def test_a_bad_month_shows_the_apis_422(client, make_operator, make_merchant):
    _, admin = make_operator("admin")
    shop = make_merchant()
    client_sign_in(client, admin)
    assert client.get(f"/console/statements?merchant_id={shop.id}&month=2026-13").status_code == 422


def test_a_pending_top_up_is_approved_on_the_page_by_a_second_operator_only(client, make_operator, make_merchant):
    _, finance = make_operator("finance")
    _, admin = make_operator("admin")
    shop = make_merchant()
    proposed = client.post(
        f"/admin/api/merchants/{shop.id}/deposit/top-ups",
        json={"amount_fen": 50_00, "reason": "bank transfer", "transfer_ref": "TR-0001"},
        headers={**finance, "Idempotency-Key": "k"},
    ).json
    page_url = f"/console/statements?merchant_id={shop.id}&month=2026-01"
    approve = f"/console/deposit-proposals/{proposed['id']}/approve"

    # when: the proposer tries on the page
    csrf = client_sign_in(client, finance)
    assert f'data-proposal="{proposed["id"]}"' in client.get(page_url).get_data(as_text=True)
    own = post(
        client, approve, {"reason": "mine", "merchant_id": shop.id, "month": "2026-01"}, csrf, follow_redirects=True
    )

    # then: refused with the API's words; nothing moved
    assert "another operator must approve" in own.get_data(as_text=True)
    assert balance(account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id)) == 0

    # when: an admin approves it
    client_sign_in(client, admin)
    csrf = csrf_of(client.get(page_url).get_data(as_text=True))
    done = post(client, approve, {"reason": "slip seen", "merchant_id": shop.id, "month": "2026-01"}, csrf)

    # then: posted; the list is empty
    assert done.status_code == 302
    db.session.rollback()
    assert balance(account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id)) == 50_00
    assert "None pending" in client.get(page_url).get_data(as_text=True)


def test_the_statement_page_in_a_browser(client, story, live_server, page):  # noqa: F811
    shop, month, admin = story
    merchant_id = shop.id
    sign_in(page, live_server, token_of(admin))
    page.goto(f"{live_server.url}/console/statements")
    page.fill("input[name=merchant_id]", str(merchant_id))
    page.fill("input[name=month]", month)
    page.click("#show-statement")
    page.wait_for_load_state()
    shot(page, "statement")

    assert page.inner_text("tr[data-figure=sales] td.num >> nth=0") == "¥300.00"
    assert page.inner_text("tr[data-summary=platform_fees] td.num") == "¥-7.50"
    download = page.request.get(live_server.url + page.get_attribute("#csv-download", "href"))
    assert download.status == 200 and download.body().startswith("\ufeff".encode())
    assert "300.00" in download.text()
    assert page.console_errors == []


# -- every line an accountant reads, none of them zero ---------------------------------------------------------

INVOICE_NEW = ("credit_given_back", "carried_forward")
SHARES_NEW = ("returned_to_merchant", "owed_by_persons")


@pytest.fixture
def shared_month(app, client, shop, admin):  # noqa: F811
    """Service-provider mode, 2 % fees. Last month two orders were sold and shared in full, and their 4 yuan of
    fees invoiced with 1 yuan of credit applied. This month: an order opened without sharing whose buyer's share
    an operator cancels (it stays the merchant's), then both of last month's orders refunded in full after they
    were shared (the persons owe the merchant their rebates); the month's fees fall below zero, so its invoice
    gives the credit back and carries the rest forward. Returns (merchant id, this month, admin headers)."""
    app.config.update(FUND_FLOW="service_provider", PLATFORM_FEE_BPS=200)
    month = month_of(utcnow())
    last = month_of(month_bounds(month)[0] - timedelta(days=1))
    with pytest.MonkeyPatch.context() as mp:
        book_in(mp, last)
        sold = [shop.sell(), shop.sell()]
        for order_id in sold:
            shop.share(order_id)
        give_credit(shop.id, 1_00)
        assert invoice_fees(month_bounds(last)[1] + timedelta(hours=1), last) == {"invoiced": 1}
    unshared = shop.sell(profit_sharing=False)
    share_due_orders()
    buyers = payouts_of(unshared)[shop.buyer].id
    cancelled = client.post(f"/admin/api/payouts/{buyers}/cancel", json={"reason": "no share"}, headers=keyed(admin))
    assert cancelled.status_code == 200, cancelled.json
    for n, order_id in enumerate(sold):
        shop.refund(order_id, f"R-{n}", 90_00)
    assert invoice_fees(month_bounds(month)[1] + timedelta(hours=1), month) == {"invoiced": 1}
    return shop.id, month, admin


def test_the_page_and_its_csv_show_the_invoices_credit_given_back_and_the_profit_sharing_lines(
    client,
    shared_month,  # noqa: F811
):
    merchant_id, month, admin = shared_month  # noqa: F811
    api = client.get(f"/admin/api/merchants/{merchant_id}/statement?month={month}", headers=admin).json
    invoice, shares = api["invoice"], api["profit_shares"]
    # the story gives each new line a value: a page that left one out could not show it by chance
    assert all(invoice[name]["fen"] > 0 for name in INVOICE_NEW), invoice
    assert all(shares[name]["fen"] > 0 for name in SHARES_NEW), shares
    client_sign_in(client, admin)

    html = client.get(f"/console/statements?merchant_id={merchant_id}&month={month}").get_data(as_text=True)

    for name in INVOICE_NEW:
        row = _row(html, "data-invoice", name)
        zh, en, _ = INVOICE_LINES[name]
        assert f"{zh} {en}" in row and _yuan(invoice[name]["fen"]) in row, row
    for name in SHARES_NEW:
        row = _row(html, "data-share", name)
        zh, en, _ = PROFIT_SHARE_LINES[name]
        assert f"{zh} {en}" in row and _yuan(shares[name]["fen"]) in row, row
    assert "entries: payout:" in _row(html, "data-share", "returned_to_merchant")  # the rows it reads
    ids = ", ".join(str(i) for i in shares["owed_by_persons"]["receivable_ids"])
    assert f"receivable_ids: {ids}" in _row(html, "data-share", "owed_by_persons")
    # the CSV, as the console downloads it: the invoice's lines and the profit-sharing rows, yuan and fen
    download = client.get(f"/console/statements?merchant_id={merchant_id}&month={month}&format=csv")
    rows = {(r[0], r[1]): r for r in csv.reader(io.StringIO(download.data.decode("utf-8-sig")))}
    wanted = (("invoice", invoice, (*INVOICE_NEW, "fee", "due")), ("profit_shares", shares, SHARES_NEW))
    for section, part, names in wanted:
        for name in names:
            assert rows[(section, name)][4:6] == [part[name]["yuan"], str(part[name]["fen"])], (section, name)
    assert rows[("invoice", "credit_given_back")][2].startswith("营销金退回 Credit given back")
    assert rows[("profit_shares", "owed_by_persons")][2].startswith("个人欠商户 Owed by persons")
    assert rows[("profit_shares", "frozen_sales_closing")][5] == str(shares["frozen_sales"]["closing_fen"])


def test_a_figures_postings_download_from_the_page_and_a_bad_figure_is_the_apis_422(client, story):  # noqa: F811
    shop, month, admin = story
    client_sign_in(client, admin)
    base = f"/console/statements?merchant_id={shop.id}&month={month}&format=csv"

    sales = client.get(base + "&figure=sales")
    bad = client.get(base + "&figure=no_such_figure")

    lines = list(csv.reader(io.StringIO(sales.data.decode("utf-8-sig"))))
    assert sales.status_code == 200 and lines[-1][-2:] == ["300.00", "30000"] and len(lines) == 4
    assert bad.status_code == 422


def test_a_month_not_yet_invoiced_says_so_on_the_page_and_in_the_csv(client, make_operator, make_merchant):
    _, admin = make_operator("admin")
    shop = make_merchant()
    client_sign_in(client, admin)
    html = client.get(f"/console/statements?merchant_id={shop.id}&month=2026-01").get_data(as_text=True)
    download = client.get(f"/console/statements?merchant_id={shop.id}&month=2026-01&format=csv")
    assert "本月尚未开票 Not invoiced" in html and 'data-invoice="' not in html
    rows = {(r[0], r[1]): r for r in csv.reader(io.StringIO(download.data.decode("utf-8-sig")))}
    assert rows[("invoice", "not_invoiced")][4:6] == ["", ""]


def test_the_profit_sharing_lines_and_the_invoice_in_a_browser(client, shared_month, live_server, page):  # noqa: F811
    merchant_id, month, admin = shared_month
    api = client.get(f"/admin/api/merchants/{merchant_id}/statement?month={month}", headers=admin).json
    sign_in(page, live_server, token_of(admin))
    page.goto(f"{live_server.url}/console/statements?merchant_id={merchant_id}&month={month}")
    shot(page, "statement-profit-sharing")

    for name in INVOICE_NEW:
        row = page.locator(f"tr[data-invoice={name}]")
        assert row.locator("td.num").inner_text() == _yuan(api["invoice"][name]["fen"])
        assert row.locator("td >> nth=0").inner_text().startswith(INVOICE_LINES[name][0])  # Chinese first
    for name in SHARES_NEW:
        row = page.locator(f"tr[data-share={name}]")
        assert row.locator("td.num").inner_text() == _yuan(api["profit_shares"][name]["fen"])
        assert row.locator("td >> nth=0").inner_text().startswith(PROFIT_SHARE_LINES[name][0])
    assert page.locator("tr[data-share=frozen_sales_closing] td.num").inner_text() == _yuan(
        api["profit_shares"]["frozen_sales"]["closing_fen"]
    )
    download = page.request.get(live_server.url + page.get_attribute("#csv-download", "href"))
    assert download.status == 200 and "credit_given_back" in download.text() and "owed_by_persons" in download.text()
    assert page.console_errors == []


def _yuan(fen: int) -> str:
    return "¥" + format_yuan(fen)


def _row(html: str, attribute: str, name: str) -> str:
    found = re.search(rf'<tr {attribute}="{name}">(.*?)</tr>', html, re.S)
    assert found, f"no row {attribute}={name} on the page"
    return found.group(1)


def test_a_pending_fee_payment_shows_its_purpose_and_is_approved_on_the_page(
    client, make_operator, make_user, make_merchant, make_product, pay, app
):
    from jobs.invoices import invoice_fees
    from tests.test_fees import after_month
    from tests.test_worked_examples import buy

    # given: a merchant invoiced 2 yuan of fees, and finance records 1.50 it paid
    app.config["PLATFORM_FEE_BPS"] = 200
    shop = make_merchant()
    pay(buy(make_user(), make_product(shop, price_fen=100_00)))
    month, later = after_month()
    invoice_fees(later, month)
    _, finance = make_operator("finance")
    _, admin = make_operator("admin")
    proposed = client.post(
        f"/admin/api/merchants/{shop.id}/fee-payments",
        json={"amount_fen": 1_50, "reason": "bank transfer"},
        headers={**finance, "Idempotency-Key": "fee-k"},
    ).json
    page_url = f"/console/statements?merchant_id={shop.id}&month={month}"
    # then: the page lists it as a fee payment, and the statement's in-flight lines say so
    client_sign_in(client, admin)
    html = client.get(page_url).get_data(as_text=True)
    assert f'data-proposal="{proposed["id"]}" data-purpose="fees"' in html
    assert "服务费付款 Fee payment" in html and "待批准服务费付款" in html
    # when: the admin approves it on the page
    csrf = csrf_of(html)
    approve = f"/console/deposit-proposals/{proposed['id']}/approve"
    done = post(client, approve, {"reason": "slip seen", "merchant_id": shop.id, "month": month}, csrf)
    # then: the fees are paid down, nothing went into a deposit
    assert done.status_code == 302
    db.session.rollback()
    assert balance(account(AccountKind.MERCHANT_FEES_DUE, "merchant", shop.id)) == -50
    assert balance(account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id)) == 0
    assert "None pending" in client.get(page_url).get_data(as_text=True)
