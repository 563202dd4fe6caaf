"""Probe 17: the WeChat user's side, signing in and their own account."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import func, select

from models import RedPacket, User, UserIdentity, db
from tests.concurrency import together
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture
from web.auth import USER_TOKEN_SALT

LOGIN = "/api/v1/auth/login"
MOCK_API = "https://api.weixin.test"
RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]}


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def test_four_first_logins_of_one_person_at_once_make_one_person_with_one_newcomer_packet(
    app,
    make_campaign,
    no_network,  # noqa: F811
):
    make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=5_00, trigger={"kind": "registration"})
    got = together(4, lambda i: app.test_client().post(LOGIN, json={"code": "code-twin"}), app=app)
    assert [r.status_code for r in got] == [200] * 4, [getattr(r, "json", r) for r in got]
    assert len({r.json["user"]["id"] for r in got}) == 1
    assert count(User) == count(UserIdentity) == count(RedPacket) == 1


class TestWithoutUnionid:
    @pytest.fixture
    def app_settings(self, app_settings):
        return {**app_settings, "WECHAT_API_BASE": MOCK_API}

    @pytest.fixture
    def wechat_api(self, app):
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            yield rsps

    def test_four_first_logins_at_once_without_a_unionid_make_one_person(self, app, make_campaign, wechat_api):
        make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=5_00, trigger={"kind": "registration"})
        wechat_api.get(
            re.compile(MOCK_API + r"/sns/jscode2session.*"),
            json={"openid": "o-mp-twin", "session_key": "c2Vzc2lvbktleTEyMzQ1Ng=="},
        )
        got = together(4, lambda i: app.test_client().post(LOGIN, json={"code": f"c{i}"}), app=app)
        assert [r.status_code for r in got] == [200] * 4, [getattr(r, "json", r) for r in got]
        assert len({r.json["user"]["id"] for r in got}) == 1
        assert count(UserIdentity) == count(RedPacket) == 1


@pytest.mark.parametrize("order_id", ["2147483648", "99999999999999999999", "0", "-1", "01"])
def test_an_order_id_outside_any_id_is_404(client, make_user, user_headers, order_id):
    headers = user_headers(make_user())
    response = client.get(f"/api/v1/orders/{order_id}", headers=headers)
    assert response.status_code == 404, response.get_data(as_text=True)[:300]


# -- official-account OAuth: a silent (snsapi_base) grant names no unionid ----------------------------------------

OAUTH_TOKEN = re.compile(MOCK_API + r"/sns/oauth2/access_token.*")
SESSION = {"openid": "o-mp", "session_key": "c2Vzc2lvbktleTEyMzQ1Ng==", "unionid": "u-amy"}


def query_of(location: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(location.split("#")[0]).query).items()}


def authorize(client, **args) -> str:
    response = client.get("/oauth/authorize", query_string=args)
    assert response.status_code == 302, response.json
    return query_of(response.headers["Location"])["state"]


def uid_of(app, location: str) -> int:
    assert "#token=" in location, location
    token = location.split("#token=")[1]
    return URLSafeTimedSerializer(app.config["SECRET_KEY"], salt=USER_TOKEN_SALT).loads(token)["uid"]


def callback(client, code: str, state: str):
    return client.get("/oauth/callback", query_string={"code": code, "state": state})


class TestSilentOfficialAccountSignIn:
    @pytest.fixture
    def app_settings(self, app_settings):
        return {**app_settings, "WECHAT_API_BASE": MOCK_API}

    @pytest.fixture
    def wechat_api(self, app):
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            yield rsps

    def test_a_mini_program_person_opening_an_official_account_page_stays_one_person_with_one_newcomer_packet(
        self, app, client, wechat_api, make_campaign
    ):
        # given: amy uses the mini-program (WeChat named her unionid there) and got her newcomer packet
        make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=5_00, trigger={"kind": "registration"})
        wechat_api.get(re.compile(MOCK_API + r"/sns/jscode2session.*"), json=SESSION)
        amy = client.post(LOGIN, json={"code": "c0"}).json["user"]["id"]
        # when: she opens an official-account page, which signs in silently (snsapi_base: openid only, no unionid),
        # and WeChat answers the consented sign-in it may lead to with her unionid
        wechat_api.get(OAUTH_TOKEN, json={"openid": "o-oa", "access_token": "AT", "scope": "snsapi_base"})
        wechat_api.get(
            OAUTH_TOKEN, json={"openid": "o-oa", "access_token": "AT", "scope": "snsapi_userinfo", "unionid": "u-amy"}
        )
        browser = app.test_client()
        answer = callback(browser, "c1", authorize(browser, next="/shop"))
        assert answer.status_code == 302, answer.json
        location = answer.headers["Location"]
        if "#token=" not in location:  # asked again, with her consent (snsapi_userinfo), for whom she is
            assert query_of(location)["scope"] == "snsapi_userinfo"
            answer = callback(browser, "c2", query_of(location)["state"])
            assert answer.status_code == 302, answer.json
            location = answer.headers["Location"]
        # then: she is signed in as herself: one person, her one newcomer packet, both her openids
        assert location.startswith("/shop#token=")
        assert uid_of(app, location) == amy
        assert count(User) == 1 and count(RedPacket) == 1 and count(UserIdentity) == 2

    def test_a_known_official_account_openid_signs_in_silently_without_a_unionid(self, app, client, wechat_api):
        # given: someone whose official-account openid we know (no unionid: the account is on no Open Platform)
        wechat_api.get(OAUTH_TOKEN, json={"openid": "o-oa", "access_token": "AT", "scope": "snsapi_userinfo"})
        wechat_api.get(re.compile(MOCK_API + r"/sns/userinfo.*"), json={"openid": "o-oa", "nickname": "x"})
        first = callback(client, "c1", authorize(client, next="/a", scope="snsapi_userinfo"))
        person = uid_of(app, first.headers["Location"])
        # when: a silent sign-in later
        again = callback(client, "c2", authorize(client, next="/b"))
        # then: straight in, as the same person
        assert again.headers["Location"].startswith("/b#token=")
        assert uid_of(app, again.headers["Location"]) == person
        assert count(User) == 1
