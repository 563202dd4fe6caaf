"""Risk rule sets: validation of every field, versions and activation (one active per scope, also when two
admins activate at once), audit lines, merchant scoping, and the admin API around them."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from models import AuditLog, RiskRuleSet, db
from risk.rules import DEFAULT_RULES, RulesError, parse_rules, rules_for
from tests.concurrency import post_together

RULES = "/admin/api/risk/rules"
REVIEW_FAST = {"name": "review_fast", "action": "review", "when": [["seconds_from_first_view", "<", 20]]}
BLOCK_SHARED = {"name": "block_shared", "action": "block", "when": [["shares_device_with_issuer", "==", True]]}


def count(model, *where) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def rule(name="r", action="review", when=None, **extra) -> dict:
    return {"name": name, "action": action, "when": [["score", ">=", 50]] if when is None else when, **extra}


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")[1]


def create(client, headers, rules, scope="platform", reason="tighten the fast payers"):
    return client.post(RULES, json={"scope": scope, "rules": rules, "reason": reason, "note": "n"}, headers=headers)


def activate(client, headers, rule_set_id, reason="backtested on last month"):
    return client.post(f"{RULES}/{rule_set_id}/activate", json={"reason": reason}, headers=headers)


# --- validation: parse_rules is the one definition, the API answers its exact message ----------------------

INVALID = {
    "not a list": ({"name": "x"}, "rules is a list of rules, not dict"),
    "unknown field": ([rule(when=[["shoe_size", ">", 3]])], "rules[0].when[0]: unknown field 'shoe_size'"),
    "field not a name": ([rule(when=[[{"a": 1}, ">", 3]])], "rules[0].when[0]: unknown field {'a': 1}"),
    "bad op": ([rule(when=[["score", "=~", 3]])], "rules[0].when[0]: op is one of < <= > >= == !="),
    "bool compared with a number": (
        [rule(when=[["no_browsing", "==", 1]])],
        "rules[0].when[0]: no_browsing is true or false, compared with == or !=",
    ),
    "bool compared with <": (
        [rule(when=[["no_browsing", "<", True]])],
        "rules[0].when[0]: no_browsing is true or false, compared with == or !=",
    ),
    "number compared with a bool": (
        [rule(when=[["views_before_pay", ">", True]])],
        "rules[0].when[0]: views_before_pay is compared with a number",
    ),
    "number compared with a string": (
        [rule(when=[["views_before_pay", ">", "3"]])],
        "rules[0].when[0]: views_before_pay is compared with a number",
    ),
    "ratio above 1": ([rule(when=[["gap_uniformity", ">", 1.5]])], "rules[0].when[0]: gap_uniformity is a ratio"),
    "ratio below 0": ([rule(when=[["packet_order_share", ">", -0.1]])], "packet_order_share is a ratio from 0 to 1"),
    "score above 100": ([rule(when=[["score", ">", 101]])], "rules[0].when[0]: score is 0 to 100"),
    "score below 0": ([rule(when=[["score", ">", -1]])], "rules[0].when[0]: score is 0 to 100"),
    "duplicate names": ([rule("a"), rule("b"), rule("a")], "rules[2].name 'a' is used twice"),
    "too many rules": ([rule(f"r{i}") for i in range(51)], "at most 50 rules, not 51"),
    "off on the platform": ([{"name": "review_high_score", "off": True}], "only a campaign's override"),
    "bad action": ([rule(action="ban")], "rules[0].action is one of allow, block, review"),
    "empty when": ([rule(when=[])], "rules[0].when is a list of 1 to 8 conditions"),
    "too many conditions": ([rule(when=[["score", ">", i] for i in range(9)])], "rules[0].when is a list of 1 to 8"),
    "condition not a triple": ([rule(when=[["score", ">"]])], "rules[0].when[0] is [field, op, value]"),
    "bad name": ([rule("no spaces")], "rules[0].name is 1-48 letters, digits or _"),
    "unknown key": ([rule(weight=3)], "rules[0] has unknown fields ['weight']"),
    "not finite": ([rule(when=[["score", ">", float("inf")]])], "rules[0].when[0]: score is compared with a number"),
}


@pytest.mark.parametrize("raw, words", INVALID.values(), ids=INVALID.keys())
def test_parse_rules_names_what_is_wrong(raw, words):
    with pytest.raises(RulesError) as refused:
        parse_rules(raw)
    assert words in str(refused.value)


@pytest.mark.parametrize("raw, words", [v for k, v in INVALID.items() if k != "not finite"], ids=list(INVALID)[:-1])
def test_the_api_refuses_bad_rules_with_the_exact_message_and_stores_nothing(client, admin, raw, words):
    with pytest.raises(RulesError) as refused:
        parse_rules(raw)
    response = create(client, admin, raw)
    assert response.status_code == 422
    assert response.json == {"error": "invalid_risk_rules", "message": str(refused.value)}
    assert count(RiskRuleSet) == 0
    assert count(AuditLog) == 0


def test_off_is_only_for_a_campaigns_overrides(client, admin, make_campaign):
    campaign = make_campaign({})
    off = [{"name": "review_high_score", "off": True}]
    assert create(client, admin, off).status_code == 422
    response = create(client, admin, off, scope=f"campaign:{campaign.id}")
    assert response.status_code == 201
    assert response.json["rules"] == off


def test_valid_rules_of_every_kind_parse():
    parsed = parse_rules(
        [
            rule("a", "allow", [["account_age_hours", ">=", 1000], ["orders_before", ">", 3]]),
            rule("b", "block", [["shares_device_with_issuer", "==", True], ["score", ">=", 70.5]]),
            rule("c", "review", [["gap_uniformity", ">=", 0.9], ["no_browsing", "!=", False]]),
        ]
    )
    assert [r.name for r in parsed] == ["a", "b", "c"]


@pytest.mark.parametrize(
    "body, code",
    [
        ({"scope": "platfrom", "rules": [REVIEW_FAST], "reason": "because"}, "invalid_risk_scope"),
        ({"scope": "campaign:0", "rules": [REVIEW_FAST], "reason": "because"}, "invalid_risk_scope"),
        ({"scope": "campaign:99999999999", "rules": [REVIEW_FAST], "reason": "because"}, "invalid_risk_scope"),
        ({"scope": "platform", "rules": [REVIEW_FAST]}, "validation_error"),  # no reason
        ({"scope": "platform", "rules": [REVIEW_FAST], "reason": "x"}, "validation_error"),  # too short
        ({"scope": "platform", "rules": [REVIEW_FAST], "reason": "because", "extra": 1}, "validation_error"),
    ],
)
def test_bad_requests_store_nothing(client, admin, body, code):
    response = client.post(RULES, json=body, headers=admin)
    assert response.status_code == 422
    assert response.json["error"] == code
    assert count(RiskRuleSet) == 0


def test_a_campaign_that_does_not_exist_is_not_found(client, admin):
    response = create(client, admin, [REVIEW_FAST], scope="campaign:4242")
    assert response.status_code == 404
    assert count(RiskRuleSet) == 0


# --- versions, activation, audit ---------------------------------------------------------------------------


def test_versions_activation_and_audit(client, admin, make_campaign):
    campaign = make_campaign({})
    listed = client.get(RULES, headers=admin).json
    assert listed["defaults"] is True and listed["rule_set"] is None
    assert listed["rules"] == [dict(r) for r in DEFAULT_RULES]
    assert {"name": "score", "kind": "int", "meaning": listed["fields"][0]["meaning"]} == listed["fields"][0]
    assert {f["name"] for f in listed["fields"]} >= {"no_browsing", "gap_uniformity", "accounts_on_device"}

    first = create(client, admin, [REVIEW_FAST]).json
    second = create(client, admin, [REVIEW_FAST, BLOCK_SHARED]).json
    override = create(client, admin, [{"name": "review_fast", "off": True}], scope=f"campaign:{campaign.id}").json
    assert (first["version"], second["version"], override["version"]) == (1, 2, 1)
    assert first["status"] == second["status"] == "draft"
    assert rules_for([])[None] == parse_rules([dict(r) for r in DEFAULT_RULES])  # drafts change nothing

    assert activate(client, admin, first["id"]).json["status"] == "active"
    assert rules_for([])[None] == parse_rules([REVIEW_FAST])  # this process sees it at once
    response = activate(client, admin, second["id"])
    assert response.status_code == 200
    assert rules_for([])[None] == parse_rules([REVIEW_FAST, BLOCK_SHARED])
    assert activate(client, admin, override["id"]).status_code == 200
    assert rules_for([campaign.id])[campaign.id] == parse_rules([BLOCK_SHARED])

    versions = client.get(f"{RULES}/versions?scope=platform", headers=admin).json["items"]
    assert [(v["version"], v["status"]) for v in versions] == [(2, "active"), (1, "superseded")]
    listed = client.get(RULES, headers=admin).json
    assert listed["defaults"] is False and listed["rule_set"]["id"] == second["id"]
    assert listed["rules"] == [REVIEW_FAST, BLOCK_SHARED]
    assert [o["scope"] for o in listed["overrides"]] == [f"campaign:{campaign.id}"]

    again = activate(client, admin, second["id"])
    assert (again.status_code, again.json["error"]) == (409, "already_active")
    rollback = activate(client, admin, first["id"], reason="v2 blocks too much")  # a superseded one, again
    assert rollback.status_code == 200
    assert [v["status"] for v in client.get(f"{RULES}/versions", headers=admin).json["items"]] == [
        "superseded",
        "active",
    ]

    body = {"scope": "platform", "reason": "back to the defaults"}
    gone = client.post(f"{RULES}/deactivate", json=body, headers=admin)
    assert gone.status_code == 200 and gone.json["deactivated"]["id"] == first["id"]
    assert client.get(RULES, headers=admin).json["defaults"] is True
    assert rules_for([])[None] == parse_rules([dict(r) for r in DEFAULT_RULES])
    twice = client.post(f"{RULES}/deactivate", json=body, headers=admin)
    assert (twice.status_code, twice.json["error"]) == (409, "no_active_rules")

    db.session.rollback()
    lines = db.session.execute(select(AuditLog).order_by(AuditLog.id)).scalars().all()
    assert [(a.action, a.target_id, a.reason) for a in lines] == [
        ("risk_rules.create", str(first["id"]), "tighten the fast payers"),
        ("risk_rules.create", str(second["id"]), "tighten the fast payers"),
        ("risk_rules.create", str(override["id"]), "tighten the fast payers"),
        ("risk_rules.activate", str(first["id"]), "backtested on last month"),
        ("risk_rules.activate", str(second["id"]), "backtested on last month"),
        ("risk_rules.activate", str(override["id"]), "backtested on last month"),
        ("risk_rules.activate", str(first["id"]), "v2 blocks too much"),
        ("risk_rules.deactivate", str(first["id"]), "back to the defaults"),
    ]
    assert lines[4].details["superseded"] == [first["id"]]
    assert lines[1].details == {
        "scope": "platform",
        "version": 2,
        "rules": ["review_fast", "block_shared"],
        "note": "n",
    }


def test_activation_needs_a_reason_and_an_existing_version(client, admin):
    draft = create(client, admin, [REVIEW_FAST]).json
    assert client.post(f"{RULES}/{draft['id']}/activate", json={}, headers=admin).status_code == 422
    assert activate(client, admin, draft["id"] + 100).status_code == 404
    assert count(RiskRuleSet, RiskRuleSet.status == "active") == 0


def test_two_activations_of_one_scope_at_once_leave_exactly_one_active(app, client, admin):
    drafts = [create(client, admin, [rule(f"r{i}")]).json["id"] for i in range(3)]
    assert activate(client, admin, drafts[0]).status_code == 200
    path = f"{RULES}/{{}}/activate"
    body = {"reason": "race"}
    results = post_together(app, [(path.format(drafts[1]), admin, body), (path.format(drafts[2]), admin, body)])
    assert sorted(status for status, _ in results) == [200, 200]  # serialised on the scope's rows
    db.session.rollback()
    statuses = dict(db.session.execute(select(RiskRuleSet.id, RiskRuleSet.status)).all())
    assert list(statuses.values()).count("active") == 1
    assert statuses[drafts[0]] == "superseded"
    assert count(AuditLog, AuditLog.action == "risk_rules.activate") == 3


def test_one_version_activated_twice_at_once_is_activated_once(app, client, admin):
    draft = create(client, admin, [REVIEW_FAST]).json["id"]
    path, body = f"{RULES}/{draft}/activate", {"reason": "race"}
    results = post_together(app, [(path, admin, body), (path, admin, body)])
    assert sorted(results) == [(200, None), (409, "already_active")]
    assert count(AuditLog, AuditLog.action == "risk_rules.activate") == 1


# --- roles and merchant scoping ----------------------------------------------------------------------------


@pytest.fixture
def two_merchants(make_operator, make_merchant, make_campaign):
    """(staff headers of merchant A, A's campaign, B's campaign)."""
    a, b = make_merchant(), make_merchant()
    _, staff = make_operator("merchant_staff", merchant=a)
    funded = {"funder_type": "merchant_deposit", "issuer_type": "merchant"}
    own = make_campaign({}, funder_merchant_id=a.id, issuer_merchant_id=a.id, **funded)
    other = make_campaign({}, funder_merchant_id=b.id, issuer_merchant_id=b.id, **funded)
    return staff, own, other


def test_merchant_staff_propose_for_their_own_campaigns_only(client, admin, two_merchants):
    staff, own, other = two_merchants
    theirs = create(client, admin, [REVIEW_FAST], scope=f"campaign:{other.id}").json["id"]
    proposed = create(client, staff, [REVIEW_FAST], scope=f"campaign:{own.id}")
    assert proposed.status_code == 201 and proposed.json["status"] == "draft"

    for response in (
        create(client, staff, [REVIEW_FAST], scope=f"campaign:{other.id}"),
        client.get(f"{RULES}/versions?scope=campaign:{other.id}", headers=staff),
        client.get(f"{RULES}/{theirs}", headers=staff),
    ):
        assert response.status_code == 404, response.json
    assert create(client, staff, [REVIEW_FAST]).status_code == 403  # the platform's rules
    assert client.get(f"{RULES}/versions", headers=staff).status_code == 403
    assert client.get(RULES, headers=staff).status_code == 403
    assert activate(client, staff, proposed.json["id"]).status_code == 403
    body = {"scope": f"campaign:{own.id}", "reason": "mine"}
    assert client.post(f"{RULES}/deactivate", json=body, headers=staff).status_code == 403
    backtest = {"rules": [REVIEW_FAST], "scope": f"campaign:{own.id}"}
    assert client.post(f"{RULES}/backtest", json=backtest, headers=staff).status_code == 403

    mine = client.get(f"{RULES}/versions?scope=campaign:{own.id}", headers=staff).json["items"]
    assert [v["id"] for v in mine] == [proposed.json["id"]]
    assert client.get(f"{RULES}/{proposed.json['id']}", headers=staff).status_code == 200
    assert count(RiskRuleSet) == 2
    assert count(RiskRuleSet, RiskRuleSet.status == "active") == 0


@pytest.mark.parametrize("role", ["finance", "support"])
def test_finance_and_support_read_but_do_not_write(client, make_operator, role):
    _, headers = make_operator(role)
    assert client.get(RULES, headers=headers).status_code == 200
    assert client.get(f"{RULES}/versions", headers=headers).status_code == 200
    assert create(client, headers, [REVIEW_FAST]).status_code == 403
    assert count(RiskRuleSet) == 0
