"""The console's risk pages (web/console/risk.py): rule sets with drafts, backtests and activation, and the
collusion communities — every read and action through the admin API's own views."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from models import AuditLog, RiskRuleSet, db
from tests.console_helpers import post
from tests.console_helpers import sign_in as client_sign_in
from tests.review_helpers import community_case

DRAFT = [{"name": "review_mid_score", "action": "review", "when": [["score", ">=", 40]]}]


def html(answer) -> str:
    return answer.get_data(as_text=True)


def rule_sets() -> list[tuple[str, int, str]]:
    db.session.expire_all()
    rows = db.session.execute(select(RiskRuleSet).order_by(RiskRuleSet.id)).scalars()
    return [(rs.scope, rs.version, rs.status) for rs in rows]


def actions() -> list[str]:
    db.session.expire_all()
    found = db.session.execute(select(AuditLog.action).order_by(AuditLog.id)).scalars().all()
    return [a for a in found if not a.startswith("console.")]


@pytest.fixture
def signed_in(client, make_operator):
    def make(role: str = "admin", merchant=None):
        operator, headers = make_operator(role, merchant)
        return operator, client_sign_in(client, headers)

    return make


def test_rules_page_shows_the_defaults_and_a_draft_goes_from_saved_to_backtested_to_active(client, signed_in):
    _, csrf = signed_in("admin")
    page = html(client.get("/console/risk/rules"))
    assert "review_high_score" in page and "默认 defaults" in page and 'id="draft-form"' in page

    form = {"scope": "platform", "rules": json.dumps(DRAFT), "note": "looser", "reason": "more reviews"}
    tested = post(client, "/console/risk/rules/backtest", form, csrf)
    assert tested.status_code == 200 and 'id="backtest-result"' in html(tested)
    assert rule_sets() == []  # a backtest writes nothing

    saved = post(client, "/console/risk/rules", form, csrf)
    assert saved.status_code == 302
    rule_set_id = int(saved.headers["Location"].rsplit("/", 1)[1])
    assert rule_sets() == [("platform", 1, "draft")]
    page = html(client.get(f"/console/risk/rules/{rule_set_id}"))
    assert "review_mid_score" in page and 'id="activate"' in page

    again = post(client, f"/console/risk/rules/{rule_set_id}/activate", {"reason": "reviewed the backtest"}, csrf)
    assert again.status_code == 302
    assert rule_sets() == [("platform", 1, "active")]
    assert "review_mid_score" in html(client.get("/console/risk/rules"))

    post(client, "/console/risk/rules/deactivate", {"scope": "platform", "reason": "back to defaults"}, csrf)
    assert rule_sets()[0][2] != "active"
    assert actions() == ["risk_rules.create", "risk_rules.activate", "risk_rules.deactivate"]


def test_bad_drafts_are_shown_back_with_the_problem_and_store_nothing(client, signed_in):
    _, csrf = signed_in("admin")
    not_json = post(client, "/console/risk/rules", {"scope": "platform", "rules": "[{", "reason": "x"}, csrf)
    assert not_json.status_code == 422 and "not JSON" in html(not_json) and "[{" in html(not_json)
    bad_rule = [{"name": "x", "action": "explode", "when": [["score", ">=", 1]]}]
    refused = post(
        client, "/console/risk/rules", {"scope": "platform", "rules": json.dumps(bad_rule), "reason": "x"}, csrf
    )
    assert refused.status_code == 422 and "explode" in html(refused)
    no_reason = post(
        client, "/console/risk/rules", {"scope": "platform", "rules": json.dumps(DRAFT), "reason": ""}, csrf
    )
    assert no_reason.status_code == 422
    bad_scope = post(
        client, "/console/risk/rules", {"scope": "campaign:999", "rules": json.dumps(DRAFT), "reason": "x"}, csrf
    )
    assert bad_scope.status_code in (404, 422)
    assert rule_sets() == [] and actions() == []


def test_support_reads_and_backtests_but_neither_drafts_nor_activates(client, signed_in):
    admin, admin_csrf = signed_in("admin")
    saved = post(
        client,
        "/console/risk/rules",
        {"scope": "platform", "rules": json.dumps(DRAFT), "reason": "a tighter draft"},
        admin_csrf,
    )
    rule_set_id = int(saved.headers["Location"].rsplit("/", 1)[1])
    client.post("/console/sign-out", data={"csrf_token": admin_csrf})
    _, csrf = signed_in("support")
    page = html(client.get("/console/risk/rules"))
    assert 'id="draft-form"' not in page and f'data-rule-set="{rule_set_id}"' in page
    assert 'id="activate"' not in html(client.get(f"/console/risk/rules/{rule_set_id}"))
    tested = post(client, "/console/risk/rules/backtest", {"rule_set_id": str(rule_set_id)}, csrf)
    assert tested.status_code == 200 and 'id="backtest-result"' in html(tested)
    assert post(client, f"/console/risk/rules/{rule_set_id}/activate", {"reason": "x"}, csrf).status_code == 403
    assert (
        post(client, "/console/risk/rules", {"scope": "platform", "rules": "[]", "reason": "x"}, csrf).status_code
        == 403
    )
    assert rule_sets() == [("platform", 1, "draft")]


def test_merchant_staff_see_no_platform_rules_and_no_communities(client, signed_in, make_merchant):
    _, csrf = signed_in("merchant_staff", make_merchant())
    page = html(client.get("/console/risk/rules"))
    assert "review_high_score" not in page and "风控规则 Risk rules" in page
    assert client.get("/console/risk/communities").status_code == 403
    assert client.get("/console/risk/rules?scope=campaign:424242").status_code == 404


def test_communities_page_lists_the_suspicious_ones_with_their_cases(client, signed_in, make_user):
    users = [make_user() for _ in range(3)]
    case = community_case([f"user:{u.id}" for u in users], concerned_fen=1200)
    _, _ = signed_in("support")
    page = html(client.get("/console/risk/communities"))
    assert f'data-community="{case.community_id}"' in page and "4 accounts on one device" in page
    detail = html(client.get(f"/console/risk/communities/{case.community_id}"))
    assert f"user:{users[0].id}" in detail and f"/console/reviews/{case.id}" in detail and "¥12.00" in detail
    assert client.get("/console/risk/communities/987654").status_code == 404
    assert f'data-community="{case.community_id}"' not in html(client.get("/console/risk/communities?suspicious=false"))
