"""Probe 17: anti-fraud as a fraud ring and as a risk analyst meet it.

A campaign's override that switches a platform rule off is ``{"name", "off": true}`` and nothing else: one that also
carries an action or conditions was stored and activated as an unconditional switch-off (the conditions, even junk,
silently dropped). A rule's name is what the published schema says (ASCII letters, digits and ``_``): a look-alike
letter made an override that was meant to replace a platform rule add a second one beside it.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from models import RiskRuleSet, db
from risk.rules import RulesError, effective_rules, parse_rules

RULES = "/admin/api/risk/rules"


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")[1]


def stored() -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(RiskRuleSet)).scalar_one()


@pytest.mark.parametrize(
    "override",
    [
        # meant: "switch the platform's review off only when the score is under 80" — it would switch it off always
        {"name": "review_high_score", "off": True, "action": "review", "when": [["score", "<", 80]]},
        {"name": "review_high_score", "off": True, "action": "ban", "when": "junk"},
        {"name": "review_high_score", "off": True, "when": []},
    ],
    ids=["conditions", "junk", "empty when"],
)
def test_a_switch_off_with_an_action_or_conditions_is_refused_and_nothing_is_stored(
    client, admin, make_campaign, override
):
    campaign = make_campaign({})
    body = {"scope": f"campaign:{campaign.id}", "rules": [override], "reason": "trusted shop, lighter review"}

    answer = client.post(RULES, json=body, headers=admin)

    assert answer.status_code == 422, answer.get_json()
    assert answer.get_json()["error"] == "invalid_risk_rules"
    assert "rules[0]" in answer.get_json()["message"] and "off" in answer.get_json()["message"]
    assert stored() == 0


def test_a_bare_switch_off_still_parses_for_a_campaign():
    [rule] = parse_rules([{"name": "review_high_score", "off": True}], overrides=True)
    platform = parse_rules([{"name": "review_high_score", "action": "review", "when": [["score", ">=", 60]]}])
    assert rule.off and effective_rules(platform, (rule,)) == ()


@pytest.mark.parametrize("name", ["rеview_high_score", "规则", "score①", "ｂlock"])  # a Cyrillic е, CJK, ①, fullwidth
def test_a_rule_name_outside_the_published_pattern_is_refused(client, admin, name):
    with pytest.raises(RulesError, match=r"rules\[0\]\.name is 1-48 letters, digits or _"):
        parse_rules([{"name": name, "action": "review", "when": [["score", ">=", 80]]}])
    body = {"scope": "platform", "rules": [{"name": name, "action": "review", "when": [["score", ">=", 80]]}]}
    answer = client.post(RULES, json={**body, "reason": "tighten it"}, headers=admin)
    assert answer.status_code == 422 and answer.get_json()["error"] == "invalid_risk_rules"
    assert stored() == 0
