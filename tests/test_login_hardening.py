"""Probes of sign-in (mini-program and official-account OAuth), user tokens, device tokens and the real name."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import func, select, text

from models import OAuthState, User, UserIdentity, UserStatus, db
from tests.concurrency import together
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture

LOGIN = "/api/v1/auth/login"
MOCK_API = "https://api.weixin.test"
WALLET = "/api/v1/me/red-packets"


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def state_of(location: str) -> str:
    return parse_qs(urlsplit(location.split("#")[0]).query)["state"][0]


def authorize(client, **args) -> str:
    response = client.get("/oauth/authorize", query_string=args)
    assert response.status_code == 302, response.json
    return state_of(response.headers["Location"])


def forged(app, payload, salt: str = "user-token-v1", key: str | None = None) -> str:
    return URLSafeTimedSerializer(key or app.config["SECRET_KEY"], salt=salt).dumps(payload)


# -- user tokens ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"uid": 0},
        {"uid": -1},
        {"uid": 2**31},
        {"uid": 2**63},
        {"uid": True},
        {"uid": "1"},
        {"uid": 1.0},
        [1],
        "1",
        None,
    ],
)
def test_a_signed_token_for_an_impossible_user_id_is_401(app, client, make_user, payload):
    make_user()
    response = client.get(WALLET, headers={"Authorization": f"Bearer {forged(app, payload)}"})
    assert (response.status_code, response.json["error"]) == (401, "invalid_token")


def test_a_token_signed_with_another_key_or_salt_is_401(app, client, make_user):
    user = make_user()
    for token in (
        forged(app, {"uid": user.id}, key="another-secret-key-of-enough-length-000"),
        forged(app, {"uid": user.id}, salt="device-token-v1"),
    ):
        response = client.get(WALLET, headers={"Authorization": f"Bearer {token}"})
        assert (response.status_code, response.json["error"]) == (401, "invalid_token")


def test_a_device_token_is_no_bearer_token(app, client, make_user, user_headers):
    user = make_user()
    device = client.post("/api/v1/devices", headers=user_headers(user)).json["device_token"]
    response = client.get(WALLET, headers={"Authorization": f"Bearer {device}"})
    assert (response.status_code, response.json["error"]) == (401, "invalid_token")


def test_an_expired_token_is_401_token_expired(app, client, make_user):
    user = make_user()
    app.config["USER_TOKEN_TTL_SECONDS"] = -1
    token = forged(app, {"uid": user.id})
    response = client.get(WALLET, headers={"Authorization": f"Bearer {token}"})
    assert (response.status_code, response.json["error"]) == (401, "token_expired")


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "garbage",
        "Bearer a.b.c",
        "Bearer \u00e9\u00e9",
        "Bearer " + "A" * 20_000,
        "Bearer " + "a." * 5_000,
    ],
)
def test_authorization_header_oddities_are_401(client, make_user, header):
    make_user()
    response = client.get(WALLET, headers={"Authorization": header})
    assert response.status_code == 401, response.get_data(as_text=True)[:200]


def test_two_tokens_in_one_header_are_401(client, make_user, user_headers):
    alice, bob = make_user(), make_user()
    a, b = (user_headers(u)["Authorization"].split()[1] for u in (alice, bob))
    for header in (f"Bearer {a} {b}", f"Bearer {a},Bearer {b}", f"Bearer {a}, {b}"):
        assert client.get(WALLET, headers={"Authorization": header}).status_code == 401


def test_a_token_of_a_user_gone_or_banned_no_longer_works(app, client, make_user, user_headers):
    banned = make_user()
    headers = user_headers(banned)
    banned.status = UserStatus.BANNED
    db.session.commit()
    response = client.get(WALLET, headers=headers)
    assert (response.status_code, response.json["error"]) == (403, "user_banned")
    gone = client.get(WALLET, headers={"Authorization": f"Bearer {forged(app, {'uid': banned.id + 1000})}"})
    assert (gone.status_code, gone.json["error"]) == (401, "invalid_token")


def test_a_garbage_device_token_is_422_not_500(client, make_user, user_headers):
    user = make_user()
    for device in ("x", "e30.bad", "a" * 5000):
        response = client.post("/api/v1/sign-in", headers=user_headers(user, **{"X-Device-Token": device}))
        assert (response.status_code, response.json["error"]) == (422, "invalid_device_token")


# -- mini-program login against a mocked WeChat -----------------------------------------


class TestMockedWeChat:
    @pytest.fixture
    def app_settings(self, app_settings):
        return {**app_settings, "WECHAT_API_BASE": MOCK_API}

    @pytest.fixture
    def wechat_api(self, app):
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            yield rsps

    @pytest.mark.parametrize(
        "answer",
        [
            {"errcode": "busy", "errmsg": "x"},
            {"errcode": None, "openid": ["o"], "session_key": "k"},
            {"openid": {"a": 1}, "session_key": "k"},
            {"openid": "o-1", "session_key": 5},
            {"openid": "o-1", "session_key": "k", "unionid": ["u"]},
            {"openid": "o" * 65, "session_key": "k"},
            {"openid": "o-1", "session_key": "k", "unionid": "u" * 65},
            {"openid": "o\u0000x", "session_key": "k"},
        ],
    )
    def test_an_odd_jscode2session_answer_is_503_and_writes_nothing(self, client, wechat_api, answer):
        wechat_api.get(re.compile(MOCK_API + r"/sns/jscode2session.*"), json=answer)
        response = client.post(LOGIN, json={"code": "0a1b2c"})
        assert (response.status_code, response.json["error"]) == (503, "wechat_unavailable")
        assert count(User) == count(UserIdentity) == 0

    @pytest.mark.parametrize(
        ("errcode", "status", "code"),
        [
            (40029, 401, "login_code_invalid"),
            (40163, 401, "login_code_used"),
            (45011, 429, "wechat_rate_limited"),
            (-1, 503, "wechat_busy"),
            (40013, 502, "wechat_refused"),  # invalid appid
        ],
    )
    def test_oauth_errors_are_clear_and_write_nothing(self, client, wechat_api, errcode, status, code):
        state = authorize(client, next="/me")
        wechat_api.get(re.compile(MOCK_API + r"/sns/oauth2/access_token.*"), json={"errcode": errcode, "errmsg": "x"})
        response = client.get("/oauth/callback", query_string={"code": "c1", "state": state})
        assert (response.status_code, response.json["error"]) == (status, code)
        assert "token" not in response.headers.get("Location", "")
        assert count(User) == count(UserIdentity) == 0

    @pytest.mark.parametrize(
        ("grant", "userinfo"),
        [
            ({"errcode": "40029x"}, None),
            ({"openid": "o" * 65, "access_token": "AT"}, None),
            ({"openid": "o-oa", "access_token": ["AT"]}, None),
            ({"openid": "o-oa", "access_token": "AT", "unionid": 7}, None),
            (
                {"openid": "o-oa", "access_token": "AT", "scope": "snsapi_userinfo"},
                {"openid": "o-oa", "unionid": "u\nx"},
            ),
        ],
    )
    def test_an_odd_oauth_answer_is_503_and_writes_nothing(self, client, wechat_api, grant, userinfo):
        state = authorize(client, next="/me", scope="snsapi_base" if userinfo is None else "snsapi_userinfo")
        wechat_api.get(re.compile(MOCK_API + r"/sns/oauth2/access_token.*"), json=grant)
        if userinfo is not None:
            wechat_api.get(re.compile(MOCK_API + r"/sns/userinfo.*"), json=userinfo)
        response = client.get("/oauth/callback", query_string={"code": "c1", "state": state})
        assert (response.status_code, response.json["error"]) == (503, "wechat_unavailable")
        assert count(User) == count(UserIdentity) == 0

    def test_a_unionid_claimed_through_both_apps_at_once_is_one_person(self, app, client, wechat_api):
        wechat_api.get(
            re.compile(MOCK_API + r"/sns/jscode2session.*"),
            json={"openid": "o-mp", "session_key": "c2Vzc2lvbktleTEyMzQ1Ng==", "unionid": "u-race"},
        )
        wechat_api.get(
            re.compile(MOCK_API + r"/sns/oauth2/access_token.*"),
            json={"openid": "o-oa", "access_token": "AT", "unionid": "u-race", "scope": "snsapi_base"},
        )
        # the person's first sign-in, in both apps at once, each tapped three times
        browsers = [app.test_client() for _ in range(6)]
        states = [authorize(b, next="/me") if i % 2 else None for i, b in enumerate(browsers)]

        def go(i: int):
            if states[i] is None:
                return browsers[i].post(LOGIN, json={"code": f"c{i}"}).status_code
            return browsers[i].get("/oauth/callback", query_string={"code": f"c{i}", "state": states[i]}).status_code

        assert together(6, go, app) == [200, 302] * 3
        assert count(User) == 1
        assert count(UserIdentity) == 2


# -- official-account OAuth ---------------------------------------------------------------


def test_a_forged_state_with_a_forged_cookie_of_another_browser_is_refused(app, client, no_network):  # noqa: F811
    mine = authorize(client, next="/me")
    other = app.test_client()
    other.set_cookie(f"oauth_state_{mine[:12]}", "f" * 32, path="/oauth/callback")
    response = other.get("/oauth/callback", query_string={"code": "c", "state": "f" * 32})
    assert (response.status_code, response.json["error"]) == (400, "invalid_oauth_state")


def test_an_expired_state_is_refused(app, client, no_network):  # noqa: F811
    state = authorize(client, next="/me")
    db.session.execute(text("update oauth_states set expires_at = created_at"))
    db.session.commit()
    response = client.get(
        "/oauth/callback", query_string={"code": simulator(app).issue_oauth_code("bob"), "state": state}
    )
    assert (response.status_code, response.json["error"]) == (400, "invalid_oauth_state")
    assert count(User) == 0


@pytest.mark.parametrize(
    "bad",
    [
        "/%2F_sim/open/connect/oauth2/authorize?redirect_uri=http://evil.test/",
        "/%2Foauth/authorize",
        "/%2Fevil.test",
    ],
)
def test_a_next_that_leads_to_a_redirector_once_its_slashes_merge_is_refused(client, no_network, bad):  # noqa: F811
    assert client.get("/oauth/authorize", query_string={"next": bad}).status_code == 422
    assert count(OAuthState) == 0


def test_a_banned_person_signing_in_on_the_official_account_gets_403_and_nothing_written(app, client, no_network):  # noqa: F811
    assert client.post(LOGIN, json={"code": "code-bob"}).status_code == 200
    db.session.rollback()
    db.session.execute(select(User)).scalar_one().status = UserStatus.BANNED
    db.session.commit()
    state = authorize(client, next="/me")
    response = client.get(
        "/oauth/callback", query_string={"code": simulator(app).issue_oauth_code("bob"), "state": state}
    )
    assert (response.status_code, response.json["error"]) == (403, "user_banned")
    assert count(UserIdentity) == 1


# -- real name ----------------------------------------------------------------------------

REAL_NAME = "/api/v1/me/real-name"


def test_the_real_name_is_encrypted_at_rest_and_never_shown(client, make_user, user_headers):
    user = make_user()
    response = client.put(
        REAL_NAME, json={"real_name": "张三丰"}, headers=user_headers(user, **{"Idempotency-Key": "k1"})
    )
    assert response.status_code == 200, response.json
    assert "张三丰" not in response.get_data(as_text=True)
    raw = db.session.execute(text("select real_name from users where id = :id"), {"id": user.id}).scalar_one()
    assert raw and "张三丰" not in raw and "5byg5LiJ5Liw" not in raw  # nor its base64
    db.session.rollback()
    assert db.session.get(User, user.id).real_name == "张三丰"


@pytest.mark.parametrize(
    "name",
    [
        "  ",
        "\u3000\u3000",
        "\u200b\u200b",
        "张\u200b三",
        "\u202e三张",
        "张\x01三",
        "张\u0000三",
        "张\u2028三",
        "张\ufeff三",
        "\ud800\udc00",
        "张\ud800",
        "张" * 33,
        "张",
        "1234",
        "张三<script>",
    ],
)
def test_a_bad_real_name_is_422_and_changes_nothing(client, make_user, user_headers, name):
    user = make_user()
    response = client.put(REAL_NAME, json={"real_name": name}, headers=user_headers(user, **{"Idempotency-Key": "k2"}))
    assert response.status_code == 422, response.get_data(as_text=True)[:300]
    db.session.rollback()
    assert db.session.get(User, user.id).real_name is None


def test_an_oauth_callback_with_a_bad_device_token_is_422_and_leaves_the_state_unused(app, client, no_network):  # noqa: F811
    state = authorize(client, next="/me")
    code = simulator(app).issue_oauth_code("bob")
    response = client.get(
        "/oauth/callback", query_string={"code": code, "state": state}, headers={"X-Device-Token": "not-ours"}
    )
    assert (response.status_code, response.json["error"]) == (422, "invalid_device_token")
    assert count(User) == 0
    assert db.session.execute(select(OAuthState.used_at)).scalar_one() is None
    assert client.get("/oauth/callback", query_string={"code": code, "state": state}).status_code == 302


def test_the_simulator_redirector_behind_a_doubled_slash_is_reachable(client, no_network):  # noqa: F811
    # why /%2F_sim/ must be refused as next: the server routes it to the simulator's redirector
    response = client.get(
        "/%2F_sim/open/connect/oauth2/authorize",
        query_string={"consent": "1", "redirect_uri": "http://evil.test/", "state": "s"},
    )
    assert response.status_code == 302
    assert response.headers["Location"].startswith("http://evil.test/")


@pytest.mark.parametrize("name", ["阿依古丽·买买提", "John Smith", "\U00031350\U00031351", "张\ue000"])
def test_a_real_name_with_a_middle_dot_a_space_or_a_rare_character_is_kept(client, make_user, user_headers, name):
    # a character newer than this Python's Unicode tables (CJK Extension H) or typed with an older input method
    user = make_user()
    response = client.put(REAL_NAME, json={"real_name": name}, headers=user_headers(user, **{"Idempotency-Key": "k3"}))
    assert response.status_code == 200, response.json
    db.session.rollback()
    assert db.session.get(User, user.id).real_name == name
