"""The console's "商户对账 Statements" page (web/console/statements.py): the statement API's own figures, its
CSV, merchant scoping, and the deposit top-ups awaiting a second operator with their approve form."""

from __future__ import annotations

from ledger import account, balance
from models import AccountKind, db
from tests.browser import browser, live_server, page, shot, sign_in  # noqa: F401 - fixtures
from tests.console_helpers import csrf_of, post, token_of
from tests.console_helpers import sign_in as client_sign_in
from tests.test_statements import story  # noqa: F401 - fixture


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
        json={"amount_fen": 50_00, "reason": "bank transfer"},
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
