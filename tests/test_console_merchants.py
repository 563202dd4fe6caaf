"""The console's merchant settings and profit shares pages (web/console/merchants.py) and the profit-share list of
the admin API (web/profit_shares_api.py), in service-provider mode on the simulator.

Shares are made by the profit-sharing jobs themselves (tests/test_profit_sharing.py's story): a paid
profit-sharing order, its hold passed, the share sent to the simulated WeChat.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from jobs.profit_sharing import share_due_orders
from models import AuditLog, Merchant, MerchantFeeRate, db
from tests.browser import browser, live_server, page, shot, sign_in  # noqa: F401 - fixtures
from tests.console_helpers import post, token_of
from tests.console_helpers import sign_in as client_sign_in
from tests.test_profit_sharing import hold_passes, share_of, sim, story  # noqa: F401 - fixtures


@pytest.fixture
def app_settings(app_settings):
    return {**app_settings, "FUND_FLOW": "service_provider"}


@pytest.fixture
def two_shares(story):  # noqa: F811
    """Two merchants' orders, each with its share sent to WeChat (processing); returns ((order, shop), …)."""
    first, second = story(), story()
    for order, *_ in (first, second):
        share_due_orders()
        hold_passes(order.id)
    share_due_orders()
    assert {share_of(first[0].id).status, share_of(second[0].id).status} == {"processing"}
    return (first[0], first[3]), (second[0], second[3])


def shares(client, headers, **query) -> dict:
    answer = client.get("/admin/api/profit-shares", query_string=query, headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.json


# -- the admin API ---------------------------------------------------------------------------------------


def test_the_list_shows_each_share_with_its_order_receivers_amounts_and_wechats_answer(
    client, two_shares, make_operator
):
    (order, shop), (other_order, other_shop) = two_shares
    _, admin = make_operator("admin")

    everything = shares(client, admin)
    mine = shares(client, admin, merchant_id=shop.id)
    processing = shares(client, admin, status="processing", order_id=other_order.id)
    finished = shares(client, admin, status="finished")

    assert [s["order_id"] for s in everything["items"]] == [other_order.id, order.id]  # newest first
    assert everything["counts"]["processing"] == 2 and everything["counts"]["finished"] == 0
    (row,) = mine["items"]
    assert (row["order_id"], row["merchant_id"], row["sub_mchid"]) == (order.id, shop.id, shop.sub_mchid)
    assert (row["status"], row["kind"], row["shared_fen"], row["held_fen"], row["ratio_bps"]) == (
        "processing",
        "share",
        13_50,
        0,
        3000,
    )
    assert row["wechat_order_id"] and row["last_error"] is None  # WeChat's answer: its order id
    assert sorted(r["amount_fen"] for r in row["receivers"]) == [4_50, 9_00]
    assert {r["type"] for r in row["receivers"]} == {"PERSONAL_OPENID"}
    assert all("***" in r["account"] for r in row["receivers"])  # masked as in the logs
    assert [s["order_id"] for s in processing["items"]] == [other_order.id]
    assert finished["items"] == [] and finished["counts"]["processing"] == 2  # counts over the other filters


def test_merchant_staff_list_only_their_own_merchants_shares(client, two_shares, make_operator):
    (order, shop), (_, other_shop) = two_shares
    _, staff = make_operator("merchant_staff", merchant=db.session.get(Merchant, shop.id))
    _, support = make_operator("support")

    own = shares(client, staff)
    asking_for_another = client.get(
        "/admin/api/profit-shares", query_string={"merchant_id": other_shop.id}, headers=staff
    )

    assert [s["order_id"] for s in own["items"]] == [order.id]
    assert own["counts"]["processing"] == 1
    assert asking_for_another.status_code == 404  # another merchant's: not found, as its other things
    assert len(shares(client, support)["items"]) == 2  # platform roles read every merchant's


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "shared"}, "status"),
        ({"merchant_id": "0"}, "merchant_id"),
        ({"merchant_id": "x"}, "merchant_id"),
        ({"order_id": "-1"}, "order_id"),
        ({"limit": "0"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"sub_mchid": "1"}, "sub_mchid"),
    ],
)
def test_a_bad_filter_is_422_naming_the_field(client, make_operator, query, field):
    _, admin = make_operator("admin")
    answer = client.get("/admin/api/profit-shares", query_string=query, headers=admin)
    assert answer.status_code == 422
    assert field in {d["field"] for d in answer.json["details"]}


def test_the_list_needs_an_operator(client, user_headers, make_user):
    assert client.get("/admin/api/profit-shares").status_code == 401
    assert client.get("/admin/api/profit-shares", headers=user_headers(make_user())).status_code == 401


# -- the profit shares page --------------------------------------------------------------------------------


def test_the_page_shows_the_apis_shares_and_staff_see_only_their_own(client, two_shares, make_operator):
    (order, shop), (other_order, _) = two_shares
    _, admin = make_operator("admin")
    _, staff = make_operator("merchant_staff", merchant=db.session.get(Merchant, shop.id))

    client_sign_in(client, admin)
    everything = client.get("/console/profit-shares").get_data(as_text=True)
    filtered = client.get(f"/console/profit-shares?order_id={other_order.id}&status=processing").get_data(as_text=True)
    bad = client.get("/console/profit-shares?status=shared")
    client_sign_in(client, staff)
    own = client.get("/console/profit-shares").get_data(as_text=True)
    forged = client.get(f"/console/profit-shares?order_id={other_order.id}").get_data(as_text=True)

    assert f'data-order="{order.id}"' in everything and f'data-order="{other_order.id}"' in everything
    assert "¥13.50" in everything and "¥9.00" in everything and "分账 Profit shares" in everything
    assert f'data-order="{other_order.id}"' in filtered and f'data-order="{order.id}"' not in filtered
    assert bad.status_code == 422 and "status" in bad.get_data(as_text=True)
    assert f'data-order="{order.id}"' in own and f'data-order="{other_order.id}"' not in own
    assert 'name="merchant_id"' not in own  # staff have no merchant to pick
    assert "No profit shares" in forged


# -- the merchant settings page ----------------------------------------------------------------------------


def rate_of(merchant_id: int) -> int | None:
    db.session.expire_all()
    return db.session.execute(
        select(MerchantFeeRate.rate_bps).where(MerchantFeeRate.merchant_id == merchant_id)
    ).scalar_one_or_none()


def ids_of(merchant_id: int) -> tuple[str | None, str | None]:
    db.session.expire_all()
    merchant = db.session.get(Merchant, merchant_id)
    return merchant.sub_mchid, merchant.sub_appid


def test_an_admin_edits_the_sub_merchant_seeing_the_apis_422_and_409_beside_the_field(
    client, make_operator, make_merchant
):
    _, admin = make_operator("admin")
    shop, other = make_merchant(), make_merchant()
    other.sub_mchid = "1900000777"
    db.session.commit()
    url = f"/console/merchants/{shop.id}/wechat-pay"
    csrf = client_sign_in(client, admin)
    page_html = client.get(f"/console/merchant-settings?merchant_id={shop.id}").get_data(as_text=True)
    assert 'id="wechat-pay-form"' in page_html and 'id="fee-form"' in page_html

    bad = post(client, url, {"sub_mchid": "12ab", "sub_appid": "wxZZ", "reason": "onboarding"}, csrf)
    taken = post(client, url, {"sub_mchid": "1900000777", "reason": "onboarding"}, csrf)
    unchanged = ids_of(shop.id)
    good = post(client, url, {"sub_mchid": "1900000888", "sub_appid": "wx" + "ab" * 8, "reason": "onboarding"}, csrf)

    bad_html = bad.get_data(as_text=True)
    assert bad.status_code == 422 and "sub_mchid" in bad_html and "sub_appid" in bad_html
    assert 'class="problem"' in bad_html and 'value="12ab"' in bad_html  # shown beside the field, kept
    assert bad_html.count('value="onboarding"') == 1  # kept in the refused form only, not the fee form
    assert taken.status_code == 409 and "1900000777" in taken.get_data(as_text=True)
    assert unchanged == (None, None)
    assert good.status_code == 302 and ids_of(shop.id) == ("1900000888", "wx" + "ab" * 8)
    line = db.session.execute(select(AuditLog).where(AuditLog.action == "merchant.wechat_pay")).scalar_one()
    assert (line.target_id, line.reason) == (str(shop.id), "onboarding")  # the API's own audit line
    after = client.get(f"/console/merchant-settings?merchant_id={shop.id}").get_data(as_text=True)
    assert "1900000888" in after and "Sub-merchant saved" in after


def test_an_admin_sets_the_fee_rate_and_a_bad_one_is_422_naming_rate_bps(client, make_operator, make_merchant):
    _, admin = make_operator("admin")
    shop = make_merchant()
    url = f"/console/merchants/{shop.id}/fee-rate"
    csrf = client_sign_in(client, admin)

    answers = [post(client, url, {"rate_bps": given, "reason": "contract"}, csrf) for given in ("abc", "20000", "-5")]
    no_reason = post(client, url, {"rate_bps": "250"}, csrf)
    assert rate_of(shop.id) is None
    good = post(client, url, {"rate_bps": "250", "reason": "contract"}, csrf)

    for answer in answers:
        assert answer.status_code == 422 and "rate_bps" in answer.get_data(as_text=True)
    assert no_reason.status_code == 422 and "reason" in no_reason.get_data(as_text=True)
    assert good.status_code == 302 and rate_of(shop.id) == 250
    assert "2.50%" in client.get(f"/console/merchant-settings?merchant_id={shop.id}").get_data(as_text=True)


def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(client, make_operator, make_merchant):
    _, admin = make_operator("admin")
    shop = make_merchant()
    client_sign_in(client, admin)

    fee = client.post(f"/console/merchants/{shop.id}/fee-rate", data={"rate_bps": "250", "reason": "x"})
    ids = client.post(f"/console/merchants/{shop.id}/wechat-pay", data={"sub_mchid": "1900000999", "reason": "x"})

    assert fee.status_code == 400 and ids.status_code == 400
    assert rate_of(shop.id) is None and ids_of(shop.id) == (None, None)


def test_merchant_staff_read_their_own_rate_only_and_change_nothing(client, make_operator, make_merchant):
    shop, other = make_merchant(), make_merchant()
    _, staff = make_operator("merchant_staff", merchant=shop)
    csrf = client_sign_in(client, staff)

    own = client.get("/console/merchant-settings")  # no merchant asked: their own
    another = client.get(f"/console/merchant-settings?merchant_id={other.id}")
    fee = post(client, f"/console/merchants/{shop.id}/fee-rate", {"rate_bps": "0", "reason": "cheaper"}, csrf)
    ids = post(client, f"/console/merchants/{shop.id}/wechat-pay", {"sub_mchid": "1900000555", "reason": "x"}, csrf)

    own_html = own.get_data(as_text=True)
    assert own.status_code == 200 and 'id="rate-now"' in own_html
    assert 'id="fee-form"' not in own_html and 'id="wechat-pay"' not in own_html  # admins only
    assert another.status_code == 404
    assert fee.status_code == 403 and ids.status_code == 403
    assert rate_of(shop.id) is None and ids_of(shop.id) == (None, None)


@pytest.mark.parametrize("role", ["finance", "support"])
def test_platform_roles_other_than_admin_read_the_rate_but_not_the_sub_merchant(
    client, make_operator, make_merchant, role
):
    shop = make_merchant()
    _, operator = make_operator(role)
    csrf = client_sign_in(client, operator)
    html = client.get(f"/console/merchant-settings?merchant_id={shop.id}").get_data(as_text=True)
    refused = post(client, f"/console/merchants/{shop.id}/fee-rate", {"rate_bps": "1", "reason": "x"}, csrf)
    assert 'id="rate-now"' in html and 'id="wechat-pay"' not in html and 'id="fee-form"' not in html
    assert refused.status_code == 403 and rate_of(shop.id) is None


def test_an_unknown_merchant_is_404(client, make_operator):
    _, admin = make_operator("admin")
    client_sign_in(client, admin)
    assert client.get("/console/merchant-settings?merchant_id=999999").status_code == 404
    assert client.get("/console/merchant-settings?merchant_id=abc").status_code == 404


# -- the order's lookup page ---------------------------------------------------------------------------------


def test_the_order_lookup_shows_the_wallet_and_the_sub_merchant(client, story, make_operator):  # noqa: F811
    order, _, _, shop = story()
    _, admin = make_operator("admin")
    client_sign_in(client, admin)

    html = client.get(f"/console/lookup?kind=order&id={order.id}").get_data(as_text=True)

    assert 'data-money="balance_used">¥0.00' in html and 'data-money="points_returned">0' in html
    assert 'data-money="payable">¥90.00' in html
    assert shop.sub_mchid in html and "frozen for sharing" in html
    assert f'href="/console/profit-shares?order_id={order.id}"' in html


# -- in a browser --------------------------------------------------------------------------------------------


def test_the_settings_page_in_a_browser_a_refused_edit_then_a_good_one(
    client,
    make_operator,
    make_merchant,
    live_server,  # noqa: F811
    page,  # noqa: F811
):
    _, admin = make_operator("admin")
    merchant_id = make_merchant().id
    sign_in(page, live_server, token_of(admin))
    page.goto(f"{live_server.url}/console/merchant-settings")
    page.fill("input[name=merchant_id]", str(merchant_id))
    page.click("#show-merchant")
    page.wait_for_load_state()

    page.fill("#wechat-pay-form input[name=sub_mchid]", "19-bad")
    page.fill("#wechat-pay-form input[name=reason]", "onboarding")
    page.click("#save-wechat-pay")
    page.wait_for_load_state()
    shot(page, "merchant_settings_refused")
    assert "pattern" in page.inner_text("#wechat-pay-form label.invalid:has(input[name=sub_mchid]) .problem")
    assert "sub_mchid" in page.inner_text(".flash.error")  # the API's message names the field
    assert page.input_value("#wechat-pay-form input[name=sub_mchid]") == "19-bad"

    page.fill("#wechat-pay-form input[name=sub_mchid]", "1900000444")
    page.fill("#wechat-pay-form input[name=reason]", "onboarding")
    page.click("#save-wechat-pay")
    page.wait_for_load_state()
    page.fill("#fee-form input[name=rate_bps]", "175")
    page.fill("#fee-form input[name=reason]", "contract")
    page.click("#save-fee")
    page.wait_for_load_state()
    shot(page, "merchant_settings_saved")

    assert page.inner_text("#sub-mchid-now") == "1900000444"
    assert page.inner_text("#rate-now").startswith("1.75%")
    assert page.console_errors == []


def test_the_profit_shares_page_in_a_browser_staff_see_only_their_own(
    client,
    two_shares,
    make_operator,
    live_server,  # noqa: F811
    page,  # noqa: F811
):
    (order, shop), (other_order, _) = two_shares
    _, admin = make_operator("admin")
    _, staff = make_operator("merchant_staff", merchant=db.session.get(Merchant, shop.id))
    admin_token, staff_token = token_of(admin), token_of(staff)

    sign_in(page, live_server, admin_token)
    page.goto(f"{live_server.url}/console/profit-shares")
    page.select_option("select[name=status]", "processing")
    page.click("#filter-shares")
    page.wait_for_load_state()
    shot(page, "profit_shares_admin")
    assert page.locator("tr[data-share]").count() == 2
    assert page.inner_text(f"tr[data-order='{order.id}'] td.shared") == "¥13.50"
    assert page.locator(f"tr[data-order='{order.id}'] table.receivers tr").count() == 2
    assert page.inner_text(f"tr[data-order='{order.id}'] span.status") == "processing"
    assert page.inner_text("[data-count=processing]") == "processing 2"

    page.context.clear_cookies()
    sign_in(page, live_server, staff_token)
    page.goto(f"{live_server.url}/console/profit-shares?order_id={other_order.id}")
    shot(page, "profit_shares_staff")
    assert page.locator("tr[data-share]").count() == 0
    page.goto(f"{live_server.url}/console/profit-shares")
    assert page.locator("tr[data-share]").count() == 1
    assert page.locator(f"tr[data-order='{order.id}']").count() == 1
    assert page.console_errors == []
