"""The console's challenge pages: the list with its filters and counts, one challenge's day grid, prizes and
settlement, read through ``web.challenges_admin``'s own views; merchant staff see only what their campaigns
sponsor (another challenge is a 404 page); and once in a browser."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from models import Merchant, UserIdentity, db
from tests.browser import browser, live_server, page, shot, sign_in  # noqa: F401 - fixtures
from tests.challenge_console_helpers import WECOM_GROUP, play_week
from tests.console_helpers import sign_in as sign_in_client
from tests.console_helpers import token_of


@pytest.fixture
def week(make_user, make_merchant, make_campaign, make_product, pay):
    return play_week(make_user, make_merchant, make_campaign, make_product, pay)


@pytest.fixture
def as_role(client, make_operator):
    def sign(role: str, merchant_id: int | None = None):
        merchant = db.session.get(Merchant, merchant_id) if merchant_id else None
        _, headers = make_operator(role, merchant)
        sign_in_client(client, headers)
        return client

    return sign


def rows(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'data-challenge="(\d+)"', html)]


def test_the_list_shows_counts_and_filters(as_role, week):
    client = as_role("support")
    html = client.get("/console/challenges").get_data(as_text=True)
    assert rows(html) == [week[k] for k in ("open", "theirs", "mine", "cancelled", "quiz", "settled")]
    assert "已结算 Settled · 3" in html and "报名中 Open · 2" in html and "全部 All · 6" in html
    assert "三天走路" in html and "企业微信群 WeCom group" in html
    settled = client.get("/console/challenges?status=settled&kind=steps").get_data(as_text=True)
    assert rows(settled) == [week["settled"]]
    assert 'href="/console/challenges?kind=steps"' in settled  # the counts keep the other filters
    bob = week["people"]["Bob"]
    assert rows(client.get(f"/console/challenges?user_id={bob}").get_data(as_text=True)) == [
        week["cancelled"],
        week["quiz"],
        week["settled"],
    ]
    first_day = week["days"][0].isoformat()
    assert rows(client.get(f"/console/challenges?from={first_day}").get_data(as_text=True)) == [
        week["open"],
        week["theirs"],
    ]
    paged = client.get("/console/challenges?transport=none&offset=2").get_data(as_text=True)
    assert rows(paged) == [week["cancelled"], week["quiz"]] and 'id="prev"' in paged and 'id="next"' not in paged


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("user_id=abc", "user_id"),
        ("status=finished", "status"),
        ("from=last+week", "since"),
        ("campaign_id=0", "campaign_id"),
    ],
)
def test_a_bad_filter_shows_the_apis_problem(as_role, week, query, field):
    answer = as_role("admin").get(f"/console/challenges?{query}")
    assert answer.status_code == 422
    html = answer.get_data(as_text=True)
    assert "A filter is not valid" in html and f"{field}:" in html and 'id="challenges"' not in html


def test_a_settled_challenge_page(as_role, week):
    people = week["people"]
    html = as_role("admin").get(f"/console/challenges/{week['settled']}").get_data(as_text=True)
    assert "三天走路" in html and 'id="challenge-status">settled' in html
    for name in ("Alice", "Bob", "Carol"):
        assert f'data-user="{people[name]}"' in html and name in html
    carol = html.split(f'data-user="{people["Carol"]}"', 1)[1].split("</tr>", 1)[0]
    assert re.findall(r'data-status="(\w+)"', carol) == ["flagged", "missing"]
    assert "over_cap" in carol and "120000" in carol
    alice = html.split(f'data-user="{people["Alice"]}"', 1)[1].split("</tr>", 1)[0]
    assert re.findall(r'data-status="(\w+)"', alice) == ["arrived", "arrived"] and "获胜 Won" in alice
    assert f"/console/lookup?kind=packet&amp;id={week['bob_packet']}" in html
    assert f"/console/lookup?kind=order&amp;id={week['order']}" in html
    assert f"issuer → user #{people['Bob']}: ¥1.50" in html  # Bob earned back as the packet's issuer
    assert 'id="ledger"' in html and f"challenge:{week['settled']}:stake:{people['Bob']}" in html
    assert 'id="challenge-notices"' in html and "challenge_settled" in html
    assert WECOM_GROUP not in html and WECOM_GROUP[:3] + "***" in html
    openids = set(db.session.execute(select(UserIdentity.openid)).scalars())
    assert not [o for o in openids if o in html]


def test_quiz_open_and_cancelled_pages(as_role, week):
    client = as_role("finance")
    quiz = client.get(f"/console/challenges/{week['quiz']}").get_data(as_text=True)
    assert 'id="quiz"' in quiz and "1 题 questions" in quiz
    opened = client.get(f"/console/challenges/{week['open']}").get_data(as_text=True)
    assert "尚未决出 Not decided yet" in opened and 'id="waiting"' in opened
    assert set(re.findall(r'data-status="(\w+)"', opened)) == {"open"}
    cancelled = client.get(f"/console/challenges/{week['cancelled']}").get_data(as_text=True)
    assert "已取消 Cancelled" in cancelled and "200 积分 points" in cancelled


def test_merchant_staff_see_only_their_sponsored_challenges(as_role, week):
    client = as_role("merchant_staff", week["shop"])
    html = client.get("/console/challenges").get_data(as_text=True)
    assert rows(html) == [week["mine"]] and "Only the challenges your campaigns sponsor" in html
    detail = client.get(f"/console/challenges/{week['mine']}")
    assert detail.status_code == 200
    text = detail.get_data(as_text=True)
    assert "Dave" not in text and 'id="ledger"' not in text and "openid" not in text
    assert f"/console/campaigns/{week['campaign']}" in text
    for other in ("settled", "theirs", "open"):
        assert client.get(f"/console/challenges/{week[other]}").status_code == 404


def test_unknown_challenge_is_a_404_page(as_role, week):
    answer = as_role("admin").get("/console/challenges/2147483647")
    assert answer.status_code == 404 and "text/html" in answer.content_type


# -- in a browser ----------------------------------------------------------------------------------


def test_from_the_list_to_a_challenge_in_a_browser(week, live_server, page, make_operator):  # noqa: F811
    settled, carol = week["settled"], week["people"]["Carol"]
    _, headers = make_operator("admin")
    sign_in(page, live_server, token_of(headers))
    page.goto(live_server.url + "/console/challenges")
    assert page.locator("#challenges tbody tr").count() == 6
    page.select_option("select[name=status]", "settled")
    page.click("#filter")
    page.wait_for_load_state()
    assert "status=settled" in page.url and page.locator("#challenges tbody tr").count() == 3
    shot(page, "challenges")
    page.click(f'tr[data-challenge="{settled}"] td a >> nth=0')
    page.wait_for_load_state()
    assert page.locator("#challenge-status").inner_text() == "settled"
    assert page.locator(f'tr[data-user="{carol}"] td.cell.flagged').count() == 1
    assert page.locator(f'tr[data-user="{carol}"] td.cell.missing').count() == 1
    assert page.locator("#prizes tbody tr").count() == 2
    shot(page, "challenge")
    page.click("#prizes a[href*='kind=packet'] >> nth=0")
    page.wait_for_load_state()
    assert "/console/lookup" in page.url and page.locator("ol.timeline li").count() > 0
    assert page.console_errors == []
