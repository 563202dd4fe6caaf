"""Mini-program login (jscode2session) and official-account OAuth, against the simulator and mocked WeChat."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from sqlalchemy import func, select, text

from models import OAuthState, RedPacket, User, UserIdentity, UserStatus, db
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture

LOGIN = "/api/v1/auth/login"
MOCK_API = "https://api.weixin.test"


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def test_login_creates_then_finds_the_user(app, client, no_network):  # noqa: F811
    # when
    first = client.post(LOGIN, json={"code": "code-alice"})
    again = client.post(LOGIN, json={"code": "code-alice"})
    # then
    assert first.status_code == 200, first.json
    assert set(first.json) == {"token", "user"}
    assert again.json["user"]["id"] == first.json["user"]["id"]
    assert count(User) == 1
    assert simulator(app).token_calls == 0  # jscode2session needs no access token
    wallet = client.get("/api/v1/me/red-packets", headers={"Authorization": f"Bearer {first.json['token']}"})
    assert wallet.status_code == 200


def test_session_key_is_encrypted_at_rest(app, client, no_network):  # noqa: F811
    client.post(LOGIN, json={"code": "code-alice"})
    plaintext = simulator(app).session_key("alice")
    raw = db.session.execute(text("select session_key from user_identities")).scalar_one()
    assert raw and plaintext not in raw
    identity = db.session.execute(select(UserIdentity)).scalar_one()
    assert identity.session_key == plaintext
    assert identity.appid == app.config["WECHAT_APPID"]
    assert "session_key" not in str(client.post(LOGIN, json={"code": "code-alice"}).json)


def test_bad_request_bodies_are_422(client, no_network):  # noqa: F811
    assert client.post(LOGIN, json={}).status_code == 422
    assert client.post(LOGIN, json={"code": "x y"}).status_code == 422
    assert client.post(LOGIN, data="{", content_type="application/json").status_code == 422


class TestAgainstMockedWeChat:
    @pytest.fixture
    def app_settings(self, app_settings):
        return {**app_settings, "WECHAT_API_BASE": MOCK_API}

    @pytest.fixture
    def wechat_api(self, app):
        with responses.RequestsMock() as rsps:
            yield rsps

    def test_one_jscode2session_call_and_nothing_else(self, app, client, wechat_api):
        wechat_api.get(
            re.compile(MOCK_API + r"/sns/jscode2session\?.*"),
            json={"openid": "o-mp-1", "session_key": "c2Vzc2lvbktleTEyMzQ1Ng==", "unionid": "u-1"},
        )
        response = client.post(LOGIN, json={"code": "0a1b2c"})
        assert response.status_code == 200
        [call] = wechat_api.calls
        query = parse_qs(urlsplit(call.request.url).query)
        assert query == {
            "appid": [app.config["WECHAT_APPID"]],
            "secret": [app.config["WECHAT_APP_SECRET"]],
            "js_code": ["0a1b2c"],
            "grant_type": ["authorization_code"],
        }
        assert db.session.execute(select(User.unionid)).scalar_one() == "u-1"

    @pytest.mark.parametrize(
        ("errcode", "status", "code"),
        [
            (40029, 401, "login_code_invalid"),
            (40163, 401, "login_code_used"),
            (45011, 429, "wechat_rate_limited"),
            (40226, 403, "wechat_user_blocked"),
            (-1, 503, "wechat_busy"),
        ],
    )
    def test_wechat_errors_map_to_clear_api_errors(self, client, wechat_api, errcode, status, code):
        wechat_api.get(re.compile(MOCK_API + r"/sns/jscode2session.*"), json={"errcode": errcode, "errmsg": "x"})
        response = client.post(LOGIN, json={"code": "0a1b2c"})
        assert response.status_code == status
        assert response.json["error"] == code
        assert response.json["message"]
        assert count(User) == 0


def test_login_calls_wechat_between_commits_even_after_the_request_touched_the_database(
    app,
    client,
    no_network,  # noqa: F811
):
    # given: something before the view reads a table, so db.session holds a transaction
    @app.before_request
    def read_first():
        db.session.execute(select(User.id)).all()

    # when: the code is exchanged (the app's WeChat session refuses a call inside a transaction)
    response = client.post(LOGIN, json={"code": "code-alice"})
    # then: the call went out after a commit, and the sign-in was recorded after it
    assert response.status_code == 200, response.json
    assert count(User) == count(UserIdentity) == 1


def test_a_banned_person_gets_403_no_token_and_their_session_key_is_not_updated(app, client, no_network):  # noqa: F811
    # given: alice signed in once, then was banned
    assert client.post(LOGIN, json={"code": "code-alice"}).status_code == 200
    db.session.rollback()
    identity = db.session.execute(select(UserIdentity)).scalar_one()
    identity.session_key = "kept-from-before-the-ban"
    identity.user.status = UserStatus.BANNED
    db.session.commit()
    # when
    response = client.post(LOGIN, json={"code": "code-alice"})
    # then: refused; the record step was rolled back (the session key from before is kept)
    assert (response.status_code, response.json["error"]) == (403, "user_banned")
    assert "token" not in response.json
    db.session.rollback()
    assert db.session.execute(select(UserIdentity.session_key)).scalar_one() == "kept-from-before-the-ban"
    assert count(User) == 1


# -- snapshot-page (朋友圈 single-page mode) virtual accounts ----------------------------


def test_snapshot_user_gets_a_clear_403_and_no_account_token_or_packet(  # noqa: F811
    app, client, no_network, make_campaign
):
    # given: a newcomer campaign that hands every new person a packet
    make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]},
        budget_limit_fen=1_000_00,
        packet_tiers=[{"min_spend_fen": 0, "amount_fen": 5_00}],
        trigger={"kind": "registration"},
    )
    # when: a snapshot-page visitor logs in (jscode2session answers is_snapshotuser=1)
    response = client.post(LOGIN, json={"code": "code-snapshot-carol"})
    # then: refused with a clear code; no user, identity or packet exists
    assert response.status_code == 403
    assert response.json["error"] == "snapshot_user" and "open the mini-program" in response.json["message"]
    assert "token" not in response.json
    assert (count(User), count(UserIdentity), count(RedPacket)) == (0, 0, 0)
    # and a real person still gets the newcomer packet
    assert client.post(LOGIN, json={"code": "code-carol"}).status_code == 200
    assert (count(User), count(RedPacket)) == (1, 1)


class TestSnapshotUsersAgainstMockedWeChat:
    @pytest.fixture
    def app_settings(self, app_settings):
        return {**app_settings, "WECHAT_API_BASE": MOCK_API}

    @pytest.mark.parametrize("flag", [1, "1"])
    def test_mini_program_snapshot_flag_is_refused(self, client, flag):
        with responses.RequestsMock() as wechat_api:
            wechat_api.get(
                re.compile(MOCK_API + r"/sns/jscode2session\?.*"),
                json={"openid": "o-virtual", "session_key": "c2Vzc2lvbktleTEyMzQ1Ng==", "is_snapshotuser": flag},
            )
            response = client.post(LOGIN, json={"code": "0a1b2c"})
        assert (response.status_code, response.json["error"]) == (403, "snapshot_user")
        assert count(User) == 0

    def test_is_snapshotuser_zero_is_a_normal_login(self, client):
        with responses.RequestsMock() as wechat_api:
            wechat_api.get(
                re.compile(MOCK_API + r"/sns/jscode2session\?.*"),
                json={"openid": "o-real", "session_key": "c2Vzc2lvbktleTEyMzQ1Ng==", "is_snapshotuser": 0},
            )
            assert client.post(LOGIN, json={"code": "0a1b2c"}).status_code == 200
        assert count(User) == 1

    def test_official_account_snapshot_page_is_refused(self, app, client):
        state = parse_qs(urlsplit(authorize(client, next="/me").split("#")[0]).query)["state"][0]
        with responses.RequestsMock() as wechat_api:
            wechat_api.get(
                re.compile(MOCK_API + r"/sns/oauth2/access_token\?.*"),
                json={
                    "access_token": "AT",
                    "expires_in": 7200,
                    "refresh_token": "RT",
                    "openid": "o-virtual",
                    "scope": "snsapi_userinfo",
                    "is_snapshotuser": 1,
                },
            )
            response = client.get("/oauth/callback", query_string={"code": "c1", "state": state})
        assert (response.status_code, response.json["error"]) == (403, "snapshot_user")
        assert count(User) == 0


# -- official-account OAuth ------------------------------------------------------------


def authorize(client, **args):
    response = client.get("/oauth/authorize", query_string=args)
    assert response.status_code == 302, response.json
    return response.headers["Location"]


def test_authorize_redirects_with_server_side_state(app, client, no_network):  # noqa: F811
    location = authorize(client, next="/shop?x=1", scope="snsapi_userinfo")
    assert location.startswith(app.config["WECHAT_OPEN_BASE"] + "/connect/oauth2/authorize?")
    assert location.endswith("#wechat_redirect")
    query = parse_qs(urlsplit(location.split("#")[0]).query)
    assert query["appid"] == [app.config["WECHAT_OA_APPID"]]
    assert query["scope"] == ["snsapi_userinfo"]
    assert query["redirect_uri"] == [app.config["PUBLIC_BASE_URL"] + "/oauth/callback"]
    state = db.session.execute(select(OAuthState)).scalar_one()
    assert query["state"] == [state.state] and re.fullmatch(r"[0-9a-f]{32}", state.state)
    assert state.next_url == "/shop?x=1"


@pytest.mark.parametrize(
    "bad",
    [
        "https://evil.test/",
        "//evil.test/x",
        "shop",
        "/\\evil",
        "/a\r\nSet-Cookie: x=1",  # not a Location header: the callback answered 500 after spending the state
        "/a\tb",
        "/_sim/open/connect/oauth2/authorize?redirect_uri=http://evil.test/",  # a redirector: the token would follow
        "/oauth/authorize?next=/x",
        "/%5Fsim/open/connect/oauth2/authorize",  # the same redirector, spelt so a prefix check misses it
        "/x/../_sim/open/connect/oauth2/authorize",
        "/./_sim/open/",
        "/%252e%252e/_sim/open/",
        # 512 characters that are a redirector once the rest is cut off (the value was cut after its check)
        "/oauth/" + "a" * 492 + "/../authorize" + "/../../ok",
        "/" + "a" * 512,  # longer than a state keeps
        "/wallet#top",  # the token goes in the fragment: "/wallet#top#token=…" is no token a page can read
        "/h5/#/orders",
    ],
)
def test_authorize_refuses_open_redirects(client, no_network, bad):  # noqa: F811
    assert client.get("/oauth/authorize", query_string={"next": bad}).status_code == 422
    assert count(OAuthState) == 0


def test_callback_signs_in_once_and_links_by_unionid(app, client, no_network):  # noqa: F811
    # given a mini-program user bob
    mp = client.post(LOGIN, json={"code": "code-bob"}).json
    state = parse_qs(urlsplit(authorize(client, next="/me").split("#")[0]).query)["state"][0]
    code = simulator(app).issue_oauth_code("bob")
    # when
    response = client.get("/oauth/callback", query_string={"code": code, "state": state})
    replay = client.get("/oauth/callback", query_string={"code": code, "state": state})
    # then
    assert response.status_code == 302
    target, _, fragment = response.headers["Location"].partition("#token=")
    assert target.endswith("/me") and fragment
    me = client.get("/api/v1/me/red-packets", headers={"Authorization": f"Bearer {fragment}"})
    assert me.status_code == 200
    assert count(User) == 1  # the same person: linked by unionid
    appids = sorted(db.session.execute(select(UserIdentity.appid)).scalars())
    assert appids == sorted([app.config["WECHAT_APPID"], app.config["WECHAT_OA_APPID"]])
    assert mp["user"]["id"] == db.session.execute(select(User.id)).scalar_one()
    assert replay.status_code == 400
    assert replay.json["error"] == "invalid_oauth_state"


def test_callback_with_unknown_state_is_refused(client, no_network):  # noqa: F811
    response = client.get("/oauth/callback", query_string={"code": "oauth-1", "state": "nope"})
    assert response.status_code == 400
    assert count(User) == 0


@pytest.mark.parametrize(
    "args, says",
    [({"code": "c"}, "required"), ({"state": "s"}, "required"), ({"code": "c", "state": "s" * 65}, "64 characters")],
)
def test_a_callback_without_code_or_state_or_with_an_overlong_state_says_which(client, no_network, args, says):  # noqa: F811
    response = client.get("/oauth/callback", query_string=args)
    assert (response.status_code, response.json["error"]) == (422, "invalid_oauth_callback")
    assert says in response.json["message"]
    assert count(User) == 0


def test_a_callback_link_from_a_login_started_in_another_browser_is_refused(app, client, no_network):  # noqa: F811
    # given: mallory starts a sign-in and approves it with her own WeChat account, then sends the callback link
    state = parse_qs(urlsplit(authorize(client, next="/me").split("#")[0]).query)["state"][0]
    code = simulator(app).issue_oauth_code("mallory")
    victim = app.test_client()  # another browser: it never started that sign-in
    # when: the victim opens the link
    response = victim.get("/oauth/callback", query_string={"code": code, "state": state})
    # then: refused, nobody signed in, and the state is still mallory's to finish in her own browser
    assert (response.status_code, response.json["error"]) == (400, "invalid_oauth_state")
    assert "token" not in response.headers.get("Location", "")
    assert count(User) == 0
    assert client.get("/oauth/callback", query_string={"code": code, "state": state}).status_code == 302


def test_two_sign_ins_started_in_one_browser_each_finish(app, client, no_network):  # noqa: F811
    first = parse_qs(urlsplit(authorize(client, next="/a").split("#")[0]).query)["state"][0]
    second = parse_qs(urlsplit(authorize(client, next="/b").split("#")[0]).query)["state"][0]

    answers = [
        client.get("/oauth/callback", query_string={"code": simulator(app).issue_oauth_code("bob"), "state": s})
        for s in (first, second)
    ]

    assert [a.status_code for a in answers] == [302, 302]
    assert [a.headers["Location"].split("#")[0] for a in answers] == ["/a", "/b"]
