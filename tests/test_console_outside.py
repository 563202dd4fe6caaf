"""The console and the admin API as an outsider, a careless operator or a malicious one would use them
(web/console/*, web/admin.py and the admin API views the console runs)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from models import AuditLog, ConsoleSession, Operator, db
from tests.console_helpers import csrf_of, post, token_of
from tests.console_helpers import sign_in as client_sign_in


def _audit(operator_id: int, *actions: str) -> None:
    for n, action in enumerate(actions):
        db.session.add(AuditLog(operator_id=operator_id, action=action, target_type="x", target_id=str(n), details={}))
    db.session.commit()


def test_the_audit_logs_kind_filter_is_a_prefix_not_a_like_pattern(client, make_operator):
    """``action=<kind>.`` lists that kind's lines; an underscore in it is a letter, not LIKE's any-character:
    ``____.`` matched every four-letter kind (``card.``, ``rail.``), ``risk_rules.`` also ``riskXrules.``."""
    operator, headers = make_operator("admin")
    _audit(operator.id, "card.consume", "rail.switch", "riskXrules.activate", "risk_rules.deactivate")

    def listed(action: str) -> list[str]:
        answer = client.get("/admin/api/audit-log", query_string={"action": action}, headers=headers)
        assert answer.status_code == 200, answer.get_json()
        return sorted(line["action"] for line in answer.get_json()["items"])

    assert listed("____.") == []
    assert listed("risk_rules.") == ["risk_rules.deactivate"]
    assert listed("card.") == ["card.consume"]  # a kind still lists its lines
    client_sign_in(client, headers)
    page = client.get("/console/audit", query_string={"action": "____."}).get_data(as_text=True)
    assert "card.consume" not in page and "rail.switch" not in page


# -- an account that must stop working -------------------------------------------------------------


def _disable(client, headers, operator_id: int, reason: str = "left the company"):
    return client.post(f"/admin/api/operators/{operator_id}/disable", json={"reason": reason}, headers=headers)


def _actions(action: str) -> list[AuditLog]:
    db.session.expire_all()
    return list(db.session.execute(select(AuditLog).where(AuditLog.action == action)).scalars())


def test_an_admin_disables_an_account_and_its_token_and_console_session_stop_at_once(app, client, make_operator):
    """The README's "revoking the token, disabling the operator … end the session at once" had no way to do either:
    a departed colleague's (or a leaked) token worked for ever. Now an admin disables the account."""
    admin, admin_h = make_operator("admin")
    leaver, leaver_h = make_operator("finance")
    browser = app.test_client()
    client_sign_in(browser, leaver_h)
    assert browser.get("/console/payouts").status_code == 200
    assert client.get("/admin/api/merchants", headers=leaver_h).status_code == 200

    done = _disable(client, admin_h, leaver.id)

    assert done.status_code == 200, done.get_json()
    assert done.get_json()["active"] is False
    refused = client.get("/admin/api/merchants", headers=leaver_h)
    assert refused.status_code in (401, 403) and refused.get_json()["error"] in ("invalid_token", "operator_disabled")
    assert browser.get("/console/payouts").status_code == 302  # back to the sign-in page
    csrf = csrf_of(browser.get("/console/sign-in").get_data(as_text=True))
    again = browser.post("/console/sign-in", data={"token": token_of(leaver_h), "csrf_token": csrf})
    assert again.status_code == 401
    db.session.expire_all()
    assert all(t.revoked_at is not None for t in db.session.get(Operator, leaver.id).tokens)
    assert db.session.execute(select(ConsoleSession.ended_at).where(ConsoleSession.operator_id == leaver.id)).scalar()
    [line] = _actions("operator.disable")
    assert (line.operator_id, line.target_id, line.reason) == (admin.id, str(leaver.id), "left the company")
    # again: the same answer, nothing more written
    assert _disable(client, admin_h, leaver.id, "once more").get_json()["active"] is False
    assert len(_actions("operator.disable")) == 1


def test_disabling_is_an_admins_and_never_ones_own_account(client, make_operator):
    admin, admin_h = make_operator("admin")
    other, _ = make_operator("support")
    finance, finance_h = make_operator("finance")
    staff, staff_h = make_operator("merchant_staff")
    own = _disable(client, admin_h, admin.id)
    assert (own.status_code, own.get_json()["error"]) == (403, "own_account")
    for headers in (finance_h, staff_h):
        answer = _disable(client, headers, other.id)
        assert (answer.status_code, answer.get_json()["error"]) == (403, "role_forbidden")
    assert _disable(client, admin_h, 2_000_000_000).status_code == 404
    assert _disable(client, admin_h, other.id, "").status_code == 422  # a reason, as for every operator action
    db.session.expire_all()
    assert all(db.session.get(Operator, o.id).active for o in (admin, other, finance, staff))
    assert _actions("operator.disable") == []


def test_the_operators_page_disables_an_account_with_a_reason(app, client, make_operator):
    _, admin_h = make_operator("admin")
    leaver, leaver_h = make_operator("merchant_staff")
    browser = app.test_client()
    client_sign_in(browser, leaver_h)
    csrf = client_sign_in(client, admin_h)
    page = client.get("/console/operators").get_data(as_text=True)
    assert f'id="disable-{leaver.id}"' in page
    url = f"/console/operators/{leaver.id}/disable"
    assert client.post(url, data={"reason": "left the shop"}).status_code == 400  # no CSRF token: nothing runs
    db.session.expire_all()
    assert db.session.get(Operator, leaver.id).active
    answer = post(client, url, {"reason": "left the shop"}, csrf)
    assert answer.status_code == 302
    db.session.expire_all()
    assert not db.session.get(Operator, leaver.id).active
    assert browser.get("/console/campaigns").status_code == 302
    assert f'id="disable-{leaver.id}"' not in client.get("/console/operators").get_data(as_text=True)


def test_a_user_agent_with_control_characters_signs_in_and_is_stored_without_them(client, make_operator):
    """PostgreSQL text holds no NUL: a browser (or a proxy that passes it on) sending one in User-Agent made sign-in a
    500 there; the session keeps the header without its control characters."""
    _, headers = make_operator("admin")
    csrf = csrf_of(client.get("/console/sign-in").get_data(as_text=True))
    agent = "Mozilla/5.0\x00 (evil)\x1b[31m"
    answer = client.post(
        "/console/sign-in", data={"token": token_of(headers), "csrf_token": csrf}, headers={"User-Agent": agent}
    )
    assert answer.status_code == 302
    assert db.session.execute(select(ConsoleSession.user_agent)).scalar_one() == "Mozilla/5.0 (evil)[31m"


def test_two_admins_disabling_each_other_at_once_leave_one_working(app, make_operator):
    from tests.concurrency import post_together

    one, one_h = make_operator("admin")
    two, two_h = make_operator("admin")
    results = post_together(
        app,
        [
            (f"/admin/api/operators/{two.id}/disable", one_h, {"reason": "looks compromised"}),
            (f"/admin/api/operators/{one.id}/disable", two_h, {"reason": "looks compromised"}),
        ],
    )
    assert sorted(status for status, _ in results)[0] == 200, results
    db.session.expire_all()
    assert [db.session.get(Operator, o.id).active for o in (one, two)].count(True) == 1, results
    assert len(_actions("operator.disable")) == 1


# -- a name that reads as another --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "\u202enimda"),  # a right-to-left override: shown as "admin" on the operators page
        ("username", "fin\u2066ance"),  # an isolate: invisible
        ("username", "ro\u2028ot"),  # a line separator
        ("display_name", "Alice\u202e (admin)"),
        ("display_name", "Bob\x1b[2J"),
    ],
)
def test_an_operator_name_with_an_invisible_or_control_character_is_422(client, make_operator, field, value):
    _, headers = make_operator("admin")
    body = {"username": "new-colleague", "display_name": "New colleague", "role": "support", "reason": "hired"}
    answer = client.post("/admin/api/operators", json={**body, field: value}, headers=headers)
    assert (answer.status_code, answer.get_json()["error"]) == (422, f"{field}_invisible"), answer.get_json()
    assert "\u202e" not in answer.get_json()["message"]  # the message names it escaped, never the override itself
    assert db.session.execute(select(Operator).where(Operator.username == body["username"])).first() is None
    assert client.post("/admin/api/operators", json=body, headers=headers).status_code == 201  # written plainly: made


# -- a form that moves money ------------------------------------------------------------------------


def test_a_form_that_moves_money_without_its_key_runs_nothing(client, make_operator, make_user, make_campaign):
    """``POST …/audiences/<id>/runs`` issues a packet to everyone in the audience: the API refuses it without an
    Idempotency-Key (422 idempotency_key_required); the console's form carries its own key, and a form sent without
    one (a script, a resend that lost the field) ran unkeyed: each resend a second batch."""
    from models import Audience, AudienceRun, RedPacket

    _, headers = make_operator("admin")
    csrf = client_sign_in(client, headers)
    make_user()
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 5_00}]},
        packet_amount_fen=5_00,
        budget_limit_fen=100_00,
    )
    made = post(client, "/console/audiences", {"name": "all", "definition": '{"kind": "never_used_packet"}'}, csrf)
    assert made.status_code == 302
    audience_id = db.session.execute(select(Audience.id)).scalar_one()
    url = f"/console/audiences/{audience_id}/runs"
    form = {"campaign_id": str(campaign.id), "holdout_bps": "0", "reason": "come back"}

    for _ in range(2):
        refused = post(client, url, form, csrf)
        assert "reload the page" in refused.get_data(as_text=True)  # (the page shows refusals as 200, as before)
    db.session.rollback()
    assert db.session.execute(select(AudienceRun)).first() is None
    assert db.session.execute(select(RedPacket)).first() is None
    assert post(client, url, {**form, "form_key": "k1"}, csrf).status_code == 302  # with its key: runs, once
    assert post(client, url, {**form, "form_key": "k1"}, csrf).status_code == 302
    db.session.rollback()
    assert len(db.session.execute(select(AudienceRun)).all()) == 1


def test_an_account_disabled_while_it_waits_is_confirmed_by_nobody(client, make_operator):
    _, maker_h = make_operator("admin")
    _, other_h = make_operator("admin")
    body = {"username": "maybe-a-sock", "display_name": "Who?", "role": "finance", "reason": "hired"}
    new_id = client.post("/admin/api/operators", json=body, headers=maker_h).get_json()["id"]
    assert _disable(client, other_h, new_id, "nobody knows them").status_code == 200
    waiting = client.get("/admin/api/operators?unconfirmed=true", headers=other_h).get_json()["items"]
    assert new_id not in [o["id"] for o in waiting]
    answer = client.post(f"/admin/api/operators/{new_id}/confirm", json={"reason": "oops"}, headers=other_h)
    assert (answer.status_code, answer.get_json()["error"]) == (409, "operator_disabled")
    db.session.expire_all()
    assert db.session.get(Operator, new_id).confirmed_at is None


# -- every console form, forged ----------------------------------------------------------------------


def _console_posts(app) -> list[str]:
    """Every console route taking a POST, with 1 for each id and the first of each ``any(…)`` choice."""
    import re

    paths = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("console.") or "POST" not in rule.methods:
            continue
        path = re.sub(r"<int:[a-z_]+>", "1", rule.rule)
        path = re.sub(r"<any\(([a-z_]+)[^>]*>", r"\1", path)
        paths.append(path)
    return sorted(paths)


def test_every_console_form_refuses_a_forged_post_before_anything_runs(app, client, make_operator, make_campaign):
    """A page on another site (or a form without this session's token) posting to any console route: 400, and no
    audit line, no change: the routes listed from the app, so a new form cannot be forgotten."""
    from tests.test_wechat_callbacks import table_counts

    make_campaign({"roles": []}, status="draft")
    _, headers = make_operator("admin")
    csrf = client_sign_in(client, headers)
    paths = _console_posts(app)
    assert "/console/operators/1/disable" in paths and len(paths) > 20
    before = table_counts()
    for path in paths:
        for forged in ({}, {"csrf_token": "forged"}, {"csrf_token": csrf + "x"}):
            answer = client.post(path, data={"reason": "forged reason", **forged})
            assert answer.status_code == 400, (path, forged, answer.status_code)
        other_site = client.post(
            path, data={"reason": "forged reason", "csrf_token": csrf}, headers={"Origin": "https://evil.example"}
        )
        assert other_site.status_code == 400, path
    assert table_counts() == before


@pytest.mark.parametrize(
    "name", ["Noodle\u202e hsop", "Tea\u2066House", "Bowl\u2028Shop", "Cafe\x1b[2J", "\u200b\u200b"]
)
def test_a_merchant_or_product_name_that_reads_as_another_or_breaks_its_line_is_422(client, make_operator, name):
    """Names reach operators' pages, the rules page and people's notices (WeChat's one-line "thing" field): a
    direction override, an isolate, a line separator, a control character, or nothing visible is refused, with
    nothing made; an emoji joined by U+200D is a name."""
    from models import Merchant

    _, admin = make_operator("admin")
    before = db.session.execute(select(func.count()).select_from(Merchant)).scalar_one()
    answer = client.post("/admin/api/merchants", json={"name": name}, headers=admin)
    assert answer.status_code == 422, answer.get_json()
    assert db.session.execute(select(func.count()).select_from(Merchant)).scalar_one() == before
    made = client.post("/admin/api/merchants", json={"name": "面馆 \U0001f469\u200d\U0001f373"}, headers=admin)
    assert made.status_code == 201, made.get_json()
    shop = made.get_json()["id"]
    product = {"name": name, "category": "food", "price_fen": 1_00}
    assert client.post(f"/admin/api/merchants/{shop}/products", json=product, headers=admin).status_code == 422


def test_the_apis_answers_are_never_cached_nor_sniffed(client, make_operator, make_user, user_headers):
    _, admin = make_operator("admin")
    for path, headers in (("/admin/api/merchants", admin), ("/api/v1/me/wallet", user_headers(make_user()))):
        answer = client.get(path, headers=headers)
        assert answer.status_code == 200
        assert (answer.headers["Cache-Control"], answer.headers["X-Content-Type-Options"]) == ("no-store", "nosniff")


def test_the_reports_csv_link_carries_its_query_encoded(client, make_operator, make_campaign):
    """The CSV link is built from the page's query, URL-encoded; a crafted granularity never reaches it."""
    import html
    from urllib.parse import parse_qs, urlsplit

    _, admin = make_operator("admin")
    client_sign_in(client, admin)
    campaign = make_campaign({"roles": [{"role": "consumer", "rate_bps": 100, "form": "balance", "cap_fen": 1_00}]})
    path = f"/console/campaigns/{campaign.id}/report"
    page = client.get(path, query_string={"from": "2026-01-01", "to": "2026-01-31", "granularity": "week"})
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    href = html.unescape(text.split('id="csv"')[0].rsplit('href="', 1)[1].split('"', 1)[0])
    assert parse_qs(urlsplit(href).query) == {
        "from": ["2026-01-01"],
        "to": ["2026-01-31"],
        "granularity": ["week"],
        "format": ["csv"],
    }
    crafted = client.get(path, query_string={"granularity": "day&merchant_id=9"})
    assert crafted.status_code == 422 and 'id="csv"' not in crafted.get_data(as_text=True)


def test_what_a_disabled_account_proposed_is_approved_by_nobody(client, make_operator, make_merchant):
    """A colleague who left (or whose token leaked) proposed a deposit top-up: once the account is disabled, no one
    approves it (it would post money on the word of an account no longer trusted); an active operator proposes it
    again if it is still wanted."""
    from tests.test_deposits_four_eyes import decide, deposit, propose

    leaver, leaver_h = make_operator("finance")
    _, admin_h = make_operator("admin")
    _, other_admin_h = make_operator("admin")
    shop = make_merchant()
    proposed = propose(client, leaver_h, shop.id)
    assert proposed.status_code == 201
    assert _disable(client, admin_h, leaver.id).status_code == 200
    refused = decide(client, other_admin_h, proposed.get_json()["id"])
    assert (refused.status_code, refused.get_json()["error"]) == (409, "approver_not_independent")
    assert "was disabled" in refused.get_json()["message"]
    assert deposit(shop.id) == 0
    again = propose(client, admin_h, shop.id, key="k2")
    assert decide(client, other_admin_h, again.get_json()["id"]).status_code == 200
    assert deposit(shop.id) == 100_00
