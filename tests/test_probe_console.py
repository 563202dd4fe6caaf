"""Probe: the console (web/console/*) as a demanding operator uses it: list pages paged past the end, and the
first day the date fields take."""

from __future__ import annotations

import json

import pytest

from tests.console_helpers import post
from tests.console_helpers import sign_in as client_sign_in

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 2000}]}
DRAFT = [{"name": "review_mid_score", "action": "review", "when": [["score", ">=", 40]]}]


@pytest.fixture
def admin(client, make_operator):
    _, headers = make_operator("admin")
    return client_sign_in(client, headers)


def test_campaigns_offset_past_ten_million_is_the_first_page_as_on_every_list(client, admin, make_campaign):
    """README (Console): "A page's offset that is not a whole number up to 10,000,000 shows the first page". The
    campaigns list passed any integer on to the API, whose page model refuses past 10,000,000: a 422 page."""
    campaign = make_campaign(RULES, name="spring sale")
    for offset in ("10000001", "99999999999999999999", "-3", "x"):
        answer = client.get("/console/campaigns", query_string={"offset": offset})
        assert answer.status_code == 200, (offset, answer.status_code)
        assert f"/console/campaigns/{campaign.id}" in answer.get_data(as_text=True), offset


def test_profit_shares_offset_past_ten_million_or_not_a_number_is_the_first_page(client, admin):
    """The same README promise on the profit-shares list: its offset went to the API as typed (a 422 page)."""
    for offset in ("10000001", "x", "-1", "1.5"):
        answer = client.get("/console/profit-shares", query_string={"offset": offset})
        assert answer.status_code == 200, (offset, answer.status_code)
        assert 'name="merchant_id"' in answer.get_data(as_text=True)


@pytest.mark.parametrize(
    "path",
    ["/console/audit?from=2000-01-01&to=2000-01-31", "/console/challenges?from=2000-01-01"],
)
def test_the_first_day_the_date_fields_take_is_taken(client, admin, path):
    """README: the console's date fields lie from 2000-01-01 to 2099-12-31. A Beijing day starts 8 hours before UTC's:
    2000-01-01 00:00 Beijing is 1999-12-31 16:00 UTC, which the API's instants refuse, so the first day was a 422."""
    answer = client.get(path)
    assert answer.status_code == 200, (path, answer.status_code)
    assert "2000-01-01" in answer.get_data(as_text=True)


def test_a_backtest_from_the_first_day_the_date_fields_take_runs(client, admin):
    form = {"scope": "platform", "rules": json.dumps(DRAFT), "from": "2000-01-01", "to": "2000-01-02"}
    tested = post(client, "/console/risk/rules/backtest", form, admin)
    assert tested.status_code == 200, tested.get_data(as_text=True)[-2000:]
    assert 'id="backtest-result"' in tested.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/console/bans", "/console/reviews", "/console/audit?action=nothing.here"])
def test_an_empty_page_does_not_say_items_1_to_0(client, admin, path):
    """The pager counted "第 1–0 条 · items 1–0" under a list with nothing on it (or a page past the end)."""
    page = client.get(path).get_data(as_text=True)
    assert "items 1–0" not in page and "第 1–0 条" not in page
    assert "nothing on this page" in page
    past = client.get(path + ("&" if "?" in path else "?") + "offset=5000").get_data(as_text=True)
    assert "items 5001–5000" not in past and "nothing on this page" in past


def test_notices_read_a_user_id_as_the_page_itself_checked_it(client, admin, make_user):
    """The page checks the id as a whole number (``whole_number``: full-width digits of a Chinese input method, leading
    zeros), then sent the text as typed to the API, which refused what the page had accepted: a 422."""
    user = make_user()
    typed = "".join(chr(ord(d) + 0xFEE0) for d in str(user.id))  # 全角 digits
    for value in (typed, f"000{user.id}"):
        answer = client.get("/console/notices", query_string={"user_id": value})
        assert answer.status_code == 200, (value, answer.status_code)


def test_a_held_manual_payout_offers_only_what_can_be_done_to_it(app, client, make_user, make_operator):
    """A manual payout waiting for a second operator: the API refuses resend and resolve (``approval_required``) until
    it is approved, yet its page offered both buttons beside Approve, each a refusal when pressed."""
    import uuid

    _, creator_headers = make_operator("admin")
    user = make_user(appid=app.config["WECHAT_APPID"])
    body = {"user_id": user.id, "amount_fen": app.config["MANUAL_PAYOUT_APPROVAL_FEN"], "reason": "goodwill gesture"}
    created = client.post(
        "/admin/api/payouts", json=body, headers={"Idempotency-Key": uuid.uuid4().hex, **creator_headers}
    )
    assert created.status_code == 201 and created.json["awaiting_approval"], created.json
    _, headers = make_operator("finance")
    csrf = client_sign_in(client, headers)
    page = client.get(f"/console/payouts/{created.json['id']}").get_data(as_text=True)
    assert 'id="approve"' in page and 'id="cancel"' in page
    assert 'id="resend"' not in page and 'id="resolve"' not in page
    refused = post(client, f"/console/payouts/{created.json['id']}/resend", {"reason": "try again"}, csrf)
    assert refused.status_code == 409  # the API's approval_required, and its status
