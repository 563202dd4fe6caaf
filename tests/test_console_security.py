"""The console as an attacker and a demanding operator would use it: odd query strings, hostile names, sign-in and
sign-out (web/console/*)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from models import AuditLog, Ban, ConsoleSession, db
from tests.console_helpers import csrf_of, post, token_of
from tests.console_helpers import sign_in as client_sign_in

# More digits than Python's int() takes from a string (4,300): int() raises, which was a 500.
TOO_MANY_DIGITS = ["9" * 5000, "1" + "0" * 4400]

# (page, query parameter, what a number nobody could mean answers)
NUMBERED = [
    ("/console/payouts", "offset", 200),
    ("/console/reconciliation", "offset", 200),
    ("/console/audit", "offset", 200),
    ("/console/reviews", "offset", 200),
    ("/console/bans", "offset", 200),
    ("/console/operators", "offset", 200),
    ("/console/messages", "offset", 200),
    ("/console/challenges", "offset", 200),
    ("/console/risk/rules", "offset", 200),
    ("/console/risk/communities", "offset", 200),
    ("/console/lookup", "id", 422),
    ("/console/notices", "user_id", 422),
    ("/console/statements", "merchant_id", 404),
    ("/console/merchant-settings", "merchant_id", 404),
]


@pytest.fixture
def admin_client(client, make_operator):
    _, headers = make_operator("admin")
    client_sign_in(client, headers)
    return client


@pytest.mark.parametrize(("path", "name", "status"), NUMBERED)
def test_a_number_longer_than_any_id_is_a_clear_answer_not_a_500(admin_client, path, name, status):
    for value in TOO_MANY_DIGITS:
        answer = admin_client.get(path, query_string={name: value})
        assert answer.status_code == status, (path, name, value[:8], answer.status_code)
    padded = admin_client.get(path, query_string={name: "0" * 5000 + "1"})  # it is 1: read as 1, whatever that is
    assert padded.status_code in (200, 404), (path, name, padded.status_code)
    if name == "offset":  # a page past the end, as before: the first page
        assert admin_client.get(path, query_string={name: "10000001"}).status_code == 200


def test_ids_and_offsets_still_read_as_typed(admin_client, make_merchant):
    merchant = make_merchant("tea shop")
    assert admin_client.get("/console/statements", query_string={"merchant_id": f"00{merchant.id}"}).status_code == 200
    assert (
        admin_client.get("/console/merchant-settings", query_string={"merchant_id": str(merchant.id)}).status_code
        == 200
    )
    assert admin_client.get("/console/lookup", query_string={"kind": "user", "id": "0"}).status_code == 422
    assert admin_client.get("/console/lookup", query_string={"kind": "user", "id": "2147483648"}).status_code == 422
    assert admin_client.get("/console/lookup", query_string={"kind": "user", "id": "2147483647"}).status_code == 404
    assert admin_client.get("/console/notices", query_string={"user_id": "-1"}).status_code == 422
    assert admin_client.get("/console/bans", query_string={"offset": "50"}).status_code == 200


def test_hostile_names_are_shown_as_text(client, make_operator, make_merchant, make_campaign, make_user):
    """Names and reasons outsiders choose reach the pages escaped, and chart data cannot close its script block."""
    hostile = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    shop = make_merchant(hostile)
    campaign = make_campaign(
        {"roles": []},
        name=hostile[:64],
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
    )
    person = make_user()
    db.session.add(Ban(subject="user", value=str(person.id), reason=hostile))
    db.session.commit()
    operator, headers = make_operator("admin")
    operator.display_name = hostile[:64]
    db.session.commit()
    client_sign_in(client, headers)
    for path in (
        "/console/campaigns",
        f"/console/campaigns/{campaign.id}",
        f"/console/campaigns/{campaign.id}/report",
        f"/console/statements?merchant_id={shop.id}",
        "/console/bans?active=",
    ):
        answer = client.get(path)
        html = answer.get_data(as_text=True)
        assert answer.status_code == 200, path
        assert "<script>alert" not in html and "<img src=x" not in html, path
        assert "&lt;script&gt;alert(1)" in html or "\\u003cscript\\u003e" in html, path


def test_signing_in_never_keeps_the_session_or_csrf_secret_a_visitor_was_given(client, app, make_operator):
    """Session fixation: a cookie planted before sign-in (its CSRF secret too) signs nobody in afterwards."""
    _, headers = make_operator("admin")
    planted_csrf = csrf_of(client.get("/console/sign-in").get_data(as_text=True))
    planted = client.get_cookie("console_session", path="/console").value
    answer = client.post("/console/sign-in", data={"token": token_of(headers), "csrf_token": planted_csrf})
    assert answer.status_code == 302
    attacker = app.test_client()
    attacker.set_cookie("console_session", planted, path="/console")
    assert attacker.get("/console/campaigns").status_code == 302  # still the sign-in page
    assert post(client, "/console/sign-out", {}, planted_csrf).status_code == 400  # the old CSRF secret is gone


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/console/",
        "/\\evil.example",
        "/console/../oauth/authorize",
        "/console/%2e%2e/_sim/x",
        "/console/\r\nLocation: https://evil.example",
        "javascript:alert(1)",
    ],
)
def test_sign_in_never_sends_the_operator_off_the_console(client, make_operator, target):
    _, headers = make_operator("admin")
    csrf = csrf_of(client.get("/console/sign-in", query_string={"next": target}).get_data(as_text=True))
    answer = client.post("/console/sign-in", data={"token": token_of(headers), "csrf_token": csrf, "next": target})
    assert answer.status_code == 302
    location = answer.headers["Location"]
    assert location.startswith("/console/") and "evil" not in location and "_sim" not in location


def test_a_method_override_does_not_turn_a_get_into_an_action(client, make_operator):
    _, headers = make_operator("admin")
    client_sign_in(client, headers)
    for override in ({"X-HTTP-Method-Override": "POST"}, {"X-HTTP-Method": "POST"}):
        assert client.get("/console/sign-out", headers=override).status_code == 405
    assert client.get("/console/sign-out?_method=POST").status_code == 405
    assert db.session.execute(select(ConsoleSession.ended_at)).scalar_one() is None
    assert "console.sign_out" not in db.session.execute(select(AuditLog.action)).scalars().all()


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ('=HYPERLINK("http://evil.example")', '\'=HYPERLINK("http://evil.example")'),
        ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
        ("-1+1", "'-1+1"),
        ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("-2.50", "-2.50"),  # a plain number stays a number
        ("tea", "tea"),
        (-250, -250),
        (None, ""),
    ],
)
def test_export_cells_never_start_a_formula(cell, written):
    from web.reports_api import safe_cell

    assert safe_cell(cell) == written
