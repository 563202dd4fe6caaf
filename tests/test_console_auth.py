"""The console's sign-in, session cookie, CSRF and scoping (web/console/auth.py)."""

from __future__ import annotations

from datetime import timedelta

import time_machine
from sqlalchemy import select

from models import AuditLog, ConsoleSession, OperatorToken, db, utcnow
from tests.browser import browser, live_server, page, shot, sign_in  # noqa: F401 - fixtures
from tests.console_helpers import csrf_of, post, token_of
from tests.console_helpers import sign_in as client_sign_in


def test_pages_need_a_session_and_send_the_operator_to_sign_in(client):
    answer = client.get("/console/")
    assert answer.status_code == 302
    assert "/console/sign-in?next=/console/" in answer.headers["Location"]


def test_signing_in_opens_a_server_side_session_with_a_safe_cookie(client, make_operator):
    operator, headers = make_operator("admin")
    page_html = client.get("/console/sign-in").get_data(as_text=True)
    answer = client.post("/console/sign-in", data={"token": token_of(headers), "csrf_token": csrf_of(page_html)})
    assert answer.status_code == 302
    cookie = next(h for k, h in answer.headers.items() if k == "Set-Cookie" and h.startswith("console_session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/console" in cookie
    assert token_of(headers) not in cookie  # only the session's id travels
    rows = db.session.execute(select(ConsoleSession)).scalars().all()
    assert [r.operator_id for r in rows] == [operator.id]
    assert db.session.execute(select(AuditLog.action).where(AuditLog.operator_id == operator.id)).scalars().all() == [
        "console.sign_in"
    ]
    home = client.get("/console/", follow_redirects=True)
    assert home.status_code == 200 and "Test operator" in home.get_data(as_text=True)
    assert "default-src 'self'" in home.headers["Content-Security-Policy"]
    assert home.headers["Cache-Control"] == "no-store"


def test_the_cookie_is_secure_outside_simulator_mode(app):
    assert app.config["SESSION_COOKIE_SECURE"] is False  # simulator mode serves plain HTTP locally
    from app import create_app

    other = create_app({**app.config, "CONSOLE_COOKIE_SECURE": True})
    assert other.config["SESSION_COOKIE_SECURE"] is True


def test_a_bad_token_signs_nobody_in_and_is_audited(client, make_operator):
    _, headers = make_operator("admin")
    csrf = csrf_of(client.get("/console/sign-in").get_data(as_text=True))
    for token in ["nope", "", "x" * 500, token_of(headers) + "x"]:
        answer = client.post("/console/sign-in", data={"token": token, "csrf_token": csrf})
        assert answer.status_code == 401
        assert "令牌无效" in answer.get_data(as_text=True)
    assert db.session.execute(select(ConsoleSession)).first() is None
    refused = db.session.execute(select(AuditLog).where(AuditLog.action == "console.sign_in_refused")).scalars().all()
    assert len(refused) == 4 and all(r.operator_id is None for r in refused)


def test_every_post_needs_the_csrf_token(client, make_operator):
    _, headers = make_operator("admin")
    answer = client.post("/console/sign-in", data={"token": token_of(headers)})
    assert answer.status_code == 400 and "security token" in answer.get_data(as_text=True)
    assert db.session.execute(select(ConsoleSession)).first() is None
    csrf = client_sign_in(client, headers)
    assert client.post("/console/sign-out", data={}).status_code == 400
    assert client.post("/console/sign-out", data={"csrf_token": "forged"}).status_code == 400
    assert db.session.execute(select(ConsoleSession.ended_at)).scalar_one() is None  # still signed in
    assert post(client, "/console/sign-out", {}, csrf).status_code == 302


def test_signing_out_ends_the_session_even_for_a_copied_cookie(client, app, make_operator):
    _, headers = make_operator("admin")
    csrf = client_sign_in(client, headers)
    stolen = client.get_cookie("console_session", path="/console").value
    assert post(client, "/console/sign-out", {}, csrf).status_code == 302
    thief = app.test_client()
    thief.set_cookie("console_session", stolen, path="/console")
    assert thief.get("/console/").status_code == 302  # to the sign-in page
    assert db.session.execute(select(AuditLog.action).order_by(AuditLog.id)).scalars().all()[-1] == "console.sign_out"


def test_revoking_the_token_or_disabling_the_operator_ends_the_session(client, make_operator):
    operator, headers = make_operator("admin")
    client_sign_in(client, headers)
    assert client.get("/console/").status_code in (200, 302)
    token = db.session.execute(select(OperatorToken).where(OperatorToken.operator_id == operator.id)).scalar_one()
    token.revoked_at = utcnow()
    db.session.commit()
    answer = client.get("/console/")
    assert answer.status_code == 302 and "/console/sign-in" in answer.headers["Location"]
    assert db.session.execute(select(ConsoleSession.ended_at)).scalar_one() is not None
    other, other_headers = make_operator("finance")
    client_sign_in(client, other_headers)
    other.active = False
    db.session.commit()
    assert client.get("/console/").status_code == 302


def test_an_idle_or_old_session_ends(client, app, make_operator):
    _, headers = make_operator("admin")
    client_sign_in(client, headers)
    idle = app.config["CONSOLE_IDLE_MINUTES"]
    with time_machine.travel(utcnow() + timedelta(minutes=idle + 1)):
        assert client.get("/console/").status_code == 302
    client_sign_in(client, headers)
    with time_machine.travel(utcnow() + timedelta(hours=app.config["CONSOLE_SESSION_HOURS"], minutes=1)):
        assert client.get("/console/").status_code == 302


def test_sign_in_goes_back_only_to_a_console_page(client, make_operator):
    _, headers = make_operator("admin")
    csrf = csrf_of(client.get("/console/sign-in").get_data(as_text=True))
    for target in ["https://evil.example/", "//evil.example/console/", "/console/\\evil", "/admin/api/merchants"]:
        answer = client.post("/console/sign-in", data={"token": token_of(headers), "csrf_token": csrf, "next": target})
        assert answer.status_code == 302
        assert answer.headers["Location"].startswith("/console/") and "evil" not in answer.headers["Location"]
        csrf = csrf_of(client.get("/console/", follow_redirects=True).get_data(as_text=True))


def test_console_errors_are_pages_and_the_api_stays_json(client, make_operator):
    _, headers = make_operator("admin")
    client_sign_in(client, headers)
    missing = client.get("/console/no-such-page")
    assert missing.status_code == 404 and missing.mimetype == "text/html"
    assert client.get("/admin/api/no-such-thing", headers=headers).is_json


def test_the_api_has_no_cookie_session(client, make_operator):
    _, headers = make_operator("admin")
    client_sign_in(client, headers)
    answer = client.get("/admin/api/merchants")  # the console's cookie is not a bearer token
    assert answer.status_code == 401
    assert "Set-Cookie" not in answer.headers


def test_signing_in_in_a_real_browser(live_server, page, make_operator):  # noqa: F811 - fixtures
    _, headers = make_operator("admin")
    page.goto(live_server.url + "/console/")
    assert "/console/sign-in" in page.url
    shot(page, "sign_in")
    sign_in(page, live_server, token_of(headers))
    assert page.locator("#sign-out").is_visible()
    shot(page, "home_admin")
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["console_session"]["httpOnly"] is True
    assert cookies["console_session"]["sameSite"] == "Lax"
    assert page.evaluate("document.cookie") == ""  # not readable by scripts
    assert page.evaluate("typeof echarts.init") == "function"  # the vendored chart library loaded (no CDN)
    page.click("#sign-out")
    page.wait_for_load_state()
    assert "/console/sign-in" in page.url
    assert page.console_errors == []


def test_a_post_from_another_site_is_refused_even_with_a_token(client, make_operator):
    _, headers = make_operator("admin")
    csrf = client_sign_in(client, headers)
    evil = post(client, "/console/sign-out", {}, csrf, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 400 and "another site" in evil.get_data(as_text=True)
    referred = post(client, "/console/sign-out", {}, csrf, headers={"Referer": "https://evil.example/page"})
    assert referred.status_code == 400
    assert db.session.execute(select(ConsoleSession.ended_at)).scalar_one() is None
    own = post(client, "/console/sign-out", {}, csrf, headers={"Origin": "http://localhost"})
    assert own.status_code == 302


def test_a_nul_character_in_a_form_is_refused_before_anything_runs(client, make_operator):
    _, headers = make_operator("admin")
    csrf = client_sign_in(client, headers)
    answer = post(client, "/console/sign-out", {"reason": "a\x00b"}, csrf)
    assert answer.status_code == 422
    assert db.session.execute(select(ConsoleSession.ended_at)).scalar_one() is None


def test_refused_sign_ins_are_audited_only_up_to_a_limit(client):
    csrf = csrf_of(client.get("/console/sign-in").get_data(as_text=True))
    answers = [client.post("/console/sign-in", data={"token": f"guess-{n}", "csrf_token": csrf}) for n in range(12)]
    assert [a.status_code for a in answers] == [401] * 10 + [429] * 2
    assert answers[-1].headers["Retry-After"] == "600"
    refused = db.session.execute(select(AuditLog).where(AuditLog.action == "console.sign_in_refused")).scalars().all()
    assert len(refused) == 10


def test_signing_in_again_ends_the_browsers_previous_session(client, make_operator):
    _, headers = make_operator("admin")
    client_sign_in(client, headers)
    client_sign_in(client, headers)
    db.session.rollback()
    ended = [row.ended_at is not None for row in db.session.execute(select(ConsoleSession)).scalars()]
    assert sorted(ended) == [False, True]
