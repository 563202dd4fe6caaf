"""Properties of the pure rebate engine (``rebate.rules``): random rule sets and orders, exact limits.

No database, no clock: rule sets are generated as the JSON ``parse_rules`` reads,
and every decision is checked against the money rules of docs/architecture.md §3.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from money import BPS_DENOMINATOR
from rebate.rules import CASH_FORMS, Form, OrderFacts, RuleError, entitlement_after_refund, evaluate, parse_rules

PROPS = settings(max_examples=300, deadline=None)
T0 = datetime(2025, 1, 1, tzinfo=UTC)
MAX_ORDER_FEN = 10_000_00
FORMS = list(Form)
NON_CREDIT_FORMS = [f for f in Form if f != Form.MERCHANT_CREDIT]


# --- strategies ----------------------------------------------------------------------------


@st.composite
def windows(draw) -> list[dict]:
    result = []
    for _ in range(draw(st.integers(0, 2))):
        start = draw(st.integers(0, 48))
        length = draw(st.integers(1, 48))
        result.append(
            {
                "starts_at": (T0 + timedelta(hours=start)).isoformat(),
                "ends_at": (T0 + timedelta(hours=start + length)).isoformat(),
                "factor_bps": draw(st.integers(10_000, 50_000)),
            }
        )
    return result


@st.composite
def role_rule(draw, role: str, budgeted: bool, room_bps: int) -> dict:
    """One role's rule whose highest rate (tier × window) stays within ``room_bps``."""
    forms = FORMS if role == "issuer" else NON_CREDIT_FORMS
    found = draw(windows())
    factor = max([BPS_DENOMINATOR, *(w["factor_bps"] for w in found)])
    top = min(10_000, room_bps * BPS_DENOMINATOR // factor)
    rule = {
        "role": role,
        "rate_bps": draw(st.integers(0, top)),
        "form": draw(st.sampled_from(forms)),
        "base": draw(st.sampled_from(["paid", "order_total"])),
    }
    if draw(st.booleans()):
        rule["min_order_fen"] = draw(st.integers(0, MAX_ORDER_FEN))
    if budgeted or draw(st.booleans()):
        rule["cap_fen"] = draw(st.integers(1, 1_000_00))
    tier_starts = draw(st.lists(st.integers(0, MAX_ORDER_FEN), max_size=3, unique=True))
    if tier_starts:
        rule["tiers"] = [{"min_order_fen": m, "rate_bps": draw(st.integers(0, top))} for m in tier_starts]
    if found:
        rule["windows"] = found
    return rule


def highest_bps(rule: dict) -> int:
    rate = max([rule["rate_bps"], *(t["rate_bps"] for t in rule.get("tiers", []))])
    factor = max([BPS_DENOMINATOR, *(w["factor_bps"] for w in rule.get("windows", []))])
    return rate * factor // BPS_DENOMINATOR


@st.composite
def rule_sets(draw):
    """(RuleSet, raw json, budgeted): random sets that stay within 100 % at their highest."""
    budgeted = draw(st.booleans())
    roles = draw(st.lists(st.sampled_from(["issuer", "consumer", "inviter"]), min_size=1, max_size=3, unique=True))
    raw_roles, room = [], BPS_DENOMINATOR
    for role in roles:
        rule = draw(role_rule(role, budgeted, room))
        room -= highest_bps(rule)
        raw_roles.append(rule)
    raw = {"roles": raw_roles}
    return parse_rules(raw, budgeted=budgeted), raw, budgeted


@st.composite
def order_facts(draw) -> OrderFacts:
    total = draw(st.integers(1, MAX_ORDER_FEN))
    discount = draw(st.integers(0, total - 1))
    return OrderFacts(
        order_total_fen=total,
        paid_fen=total - discount,
        paid_at=T0 + timedelta(minutes=draw(st.integers(0, 4 * 24 * 60))),
        has_issuer=draw(st.booleans()),
        has_inviter=draw(st.booleans()),
    )


def effective_rate_bps(rule, base_fen: int, at: datetime) -> int:
    """Independent model of the rate: the highest tier reached, then the first window containing ``at``."""
    reached = [t for t in rule.tiers if base_fen >= t.min_order_fen]
    rate = max(reached, key=lambda t: t.min_order_fen).rate_bps if reached else rule.rate_bps
    window = next((w for w in rule.windows if w.starts_at <= at < w.ends_at), None)
    return rate * window.factor_bps // BPS_DENOMINATOR if window else rate


def base_of(rule, facts: OrderFacts) -> int:
    return facts.order_total_fen if rule.base == "order_total" else facts.paid_fen


# --- evaluate ------------------------------------------------------------------------------


@PROPS
@given(rule_sets(), order_facts(), st.one_of(st.none(), st.integers(0, 2_000_00)))
def test_every_decision_is_within_rate_cap_budget_and_what_was_paid(generated, facts, budget_left):
    rules, _, _ = generated

    decisions = evaluate(rules, facts, budget_left_fen=budget_left)

    assert [d.role for d in decisions] == [r.role for r in rules.roles]
    budget, cash_room = budget_left, facts.paid_fen
    for rule, decision in zip(rules.roles, decisions, strict=True):
        assert decision.amount_fen >= 0
        assert decision.reasons, "every decision says why"
        if rule.cap_fen is not None:
            assert decision.amount_fen <= rule.cap_fen
        base = base_of(rule, facts)
        beneficiary = {"issuer": facts.has_issuer, "inviter": facts.has_inviter}.get(rule.role, True)
        if not beneficiary or base < rule.min_order_fen:
            expected = 0
        else:
            # rounding is down, then each limit in turn: cap, budget left, cash room
            expected = base * effective_rate_bps(rule, base, facts.paid_at) // BPS_DENOMINATOR
            for limit in (rule.cap_fen, budget, cash_room if rule.form in CASH_FORMS else None):
                if limit is not None:
                    expected = min(expected, max(0, limit))
        assert decision.amount_fen == expected, decision
        if budget is not None:
            budget -= decision.amount_fen
        if decision.form in CASH_FORMS:
            cash_room -= decision.amount_fen
    if budget_left is not None:
        assert sum(d.amount_fen for d in decisions) <= budget_left
    assert sum(d.amount_fen for d in decisions if d.form in CASH_FORMS) <= facts.paid_fen


@PROPS
@given(rule_sets(), order_facts())
def test_no_set_accepted_by_parse_rules_pays_more_than_the_order(generated, facts):
    rules, _, _ = generated

    decisions = evaluate(rules, facts)

    biggest_base = max(facts.order_total_fen, facts.paid_fen)
    assert sum(d.amount_fen for d in decisions) <= biggest_base


@PROPS
@given(rule_sets(), order_facts(), st.integers(0, 2_000_00))
def test_a_smaller_cash_room_never_raises_an_award(generated, facts, cash_room):
    rules, _, _ = generated

    limited = evaluate(rules, facts, cash_room_fen=cash_room)
    free = evaluate(rules, facts)

    for a, b in zip(limited, free, strict=True):
        assert 0 <= a.amount_fen <= b.amount_fen
    assert sum(d.amount_fen for d in limited if d.form in CASH_FORMS) <= min(cash_room, facts.paid_fen)


# --- refunds -------------------------------------------------------------------------------


@PROPS
@given(rule_sets(), order_facts(), st.lists(st.integers(1, 10_000), min_size=1, max_size=6))
def test_partial_refunds_only_ever_lower_the_entitlement(generated, facts, refund_parts_bps):
    rules, _, _ = generated
    awarded = {d.role: d.amount_fen for d in evaluate(rules, facts)}
    current = dict(awarded)
    clawed = dict.fromkeys(awarded, 0)
    net_paid = facts.paid_fen

    # when: the order is refunded step by step, as refunds.py does (entitlement on the new net amounts,
    # never above what is still awarded; only the difference is taken back)
    for part in refund_parts_bps:
        net_paid -= max(1, net_paid * part // BPS_DENOMINATOR)
        net_paid = max(net_paid, 0)
        net_total = facts.order_total_fen * net_paid // facts.paid_fen
        net = OrderFacts(net_total, net_paid, facts.paid_at, has_issuer=True, has_inviter=True)
        for role in current:
            entitled = entitlement_after_refund(rules, net, role, current[role])

            # then
            assert 0 <= entitled <= current[role] <= awarded[role]
            clawed[role] += current[role] - entitled
            current[role] = entitled
            assert clawed[role] <= awarded[role]
            assert clawed[role] + current[role] == awarded[role]
        if net_paid == 0:
            break
    if net_paid == 0:
        assert set(current.values()) <= {0}, "a full refund leaves nothing"


@PROPS
@given(rule_sets(), order_facts(), st.integers(1, 10_000))
def test_entitlement_after_refund_is_the_rule_on_net_amounts_rounded_down(generated, facts, refund_bps):
    rules, _, _ = generated
    awarded = {d.role: d.amount_fen for d in evaluate(rules, facts)}
    net_paid = facts.paid_fen - max(1, facts.paid_fen * refund_bps // BPS_DENOMINATOR)
    net_total = facts.order_total_fen * net_paid // facts.paid_fen
    net = OrderFacts(net_total, net_paid, facts.paid_at, has_issuer=True, has_inviter=True)

    for rule in rules.roles:
        entitled = entitlement_after_refund(rules, net, rule.role, awarded[rule.role])

        base = base_of(rule, net)
        if base < rule.min_order_fen:
            assert entitled == 0, "below the rule's minimum after the refund: the whole entitlement goes"
        else:
            ceiling = base * effective_rate_bps(rule, base, net.paid_at) // BPS_DENOMINATOR
            assert entitled <= ceiling
            assert entitled <= awarded[rule.role]


def test_worked_partial_refund_100_yuan_at_5_percent():
    # given: 5 % of a 100-yuan paid order, uncapped
    rules = parse_rules({"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]}, budgeted=False)
    [decision] = evaluate(rules, OrderFacts(100_00, 100_00, T0))
    assert decision.amount_fen == 5_00

    # when / then: refund 30 → 3.50 (1.50 back); refund 70 more → 0
    after_30 = entitlement_after_refund(rules, OrderFacts(70_00, 70_00, T0), "consumer", 5_00)
    assert after_30 == 3_50
    assert entitlement_after_refund(rules, OrderFacts(0, 0, T0), "consumer", after_30) == 0
    # rounding down: 5 % of 0.99 yuan is 4.95 fen → 4
    assert entitlement_after_refund(rules, OrderFacts(99, 99, T0), "consumer", 5_00) == 4


# --- parse_rules refusals ------------------------------------------------------------------

NAIVE = datetime(2025, 1, 1, 10, 0).isoformat()
GOOD_WINDOW = {"starts_at": T0.isoformat(), "ends_at": (T0 + timedelta(hours=1)).isoformat()}


def consumer(**overrides) -> dict:
    return {"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 10_00, **overrides}


REFUSALS = {
    "not an object": ([], False, "object"),
    "no roles": ({"roles": []}, False, "at least one role"),
    "uncapped when budgeted": ({"roles": [consumer(cap_fen=None)]}, True, "cap_fen"),
    "uncapped when budgeted (missing)": (
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]},
        True,
        "cap_fen",
    ),
    "zero cap": ({"roles": [consumer(cap_fen=0)]}, False, "cap_fen"),
    "rate over 100 %": ({"roles": [consumer(rate_bps=10_001)]}, False, "rate_bps"),
    "negative rate": ({"roles": [consumer(rate_bps=-1)]}, False, "rate_bps"),
    "rate as a string": ({"roles": [consumer(rate_bps="500")]}, False, "rate_bps"),
    "rate as a float": ({"roles": [consumer(rate_bps=5.0)]}, False, "rate_bps"),
    "rate as a bool": ({"roles": [consumer(rate_bps=True)]}, False, "rate_bps"),
    "tier rate over 100 %": (
        {"roles": [consumer(tiers=[{"min_order_fen": 0, "rate_bps": 10_001}])]},
        False,
        "rate_bps",
    ),
    "two roles over 100 %": (
        {"roles": [consumer(rate_bps=6000), {"role": "inviter", "rate_bps": 4001, "form": "points", "cap_fen": 1}]},
        False,
        "more than the order",
    ),
    "tier over 100 % with another role": (
        {
            "roles": [
                consumer(rate_bps=100, tiers=[{"min_order_fen": 100_00, "rate_bps": 9000}]),
                {"role": "inviter", "rate_bps": 1001, "form": "points", "cap_fen": 1},
            ]
        },
        False,
        "more than the order",
    ),
    "window doubles past 100 %": (
        {"roles": [consumer(rate_bps=5001, windows=[{**GOOD_WINDOW, "factor_bps": 20_000}])]},
        False,
        "more than the order",
    ),
    "tier × window past 100 % summed over roles": (
        {
            "roles": [
                consumer(rate_bps=0, tiers=[{"min_order_fen": 1, "rate_bps": 3000}]),
                {
                    "role": "inviter",
                    "rate_bps": 3501,
                    "form": "points",
                    "cap_fen": 1,
                    "windows": [{**GOOD_WINDOW, "factor_bps": 20_000}],
                },
            ]
        },
        False,
        "more than the order",
    ),
    "window factor below 1": ({"roles": [consumer(windows=[{**GOOD_WINDOW, "factor_bps": 9_999}])]}, False, "factor"),
    "naive window start": (
        {"roles": [consumer(windows=[{"starts_at": NAIVE, "ends_at": GOOD_WINDOW["ends_at"]}])]},
        False,
        "timezone",
    ),
    "naive window end": (
        {"roles": [consumer(windows=[{"starts_at": GOOD_WINDOW["starts_at"], "ends_at": NAIVE}])]},
        False,
        "timezone",
    ),
    "window ends before it starts": (
        {"roles": [consumer(windows=[{"starts_at": GOOD_WINDOW["ends_at"], "ends_at": GOOD_WINDOW["starts_at"]}])]},
        False,
        "before",
    ),
    "empty window": (
        {"roles": [consumer(windows=[{"starts_at": T0.isoformat(), "ends_at": T0.isoformat()}])]},
        False,
        "before",
    ),
    "window without an end": ({"roles": [consumer(windows=[{"starts_at": T0.isoformat()}])]}, False, "ends_at"),
    "window date garbage": (
        {"roles": [consumer(windows=[{"starts_at": "soon", "ends_at": "later"}])]},
        False,
        "ISO-8601",
    ),
    "unknown form": ({"roles": [consumer(form="gold_bars")]}, False, "form"),
    "unknown fallback form": ({"roles": [consumer(fallback_form="gold_bars")]}, False, "form"),
    "unknown role": ({"roles": [consumer(role="uncle")]}, False, "role"),
    "unknown base": ({"roles": [consumer(base="list_price")]}, False, "base"),
    "unknown applies_to": ({"applies_to": "everything", "roles": [consumer()]}, False, "applies_to"),
    "duplicate role": ({"roles": [consumer(rate_bps=100), consumer(rate_bps=200)]}, False, "once"),
    "merchant credit to a consumer": ({"roles": [consumer(form="merchant_credit")]}, False, "merchant_credit"),
    "merchant credit to an inviter": (
        {"roles": [{"role": "inviter", "rate_bps": 100, "form": "merchant_credit", "cap_fen": 1}]},
        False,
        "merchant_credit",
    ),
    "negative minimum": ({"roles": [consumer(min_order_fen=-1)]}, False, "min_order_fen"),
    "two tiers at one amount": (
        {"roles": [consumer(tiers=[{"min_order_fen": 100, "rate_bps": 100}, {"min_order_fen": 100, "rate_bps": 200}])]},
        False,
        "same amount",
    ),
    "tiers not a list": ({"roles": [consumer(tiers={"min_order_fen": 1})]}, False, "tiers"),
    "zero referral days": ({"roles": [consumer()], "referral_days": 0}, False, "referral_days"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_parse_rules_refuses_unsafe_sets_with_a_message(case):
    data, budgeted, words = REFUSALS[case]

    with pytest.raises(RuleError) as refused:
        parse_rules(data, budgeted=budgeted)

    assert words in str(refused.value)
    assert refused.value.code == "invalid_rules"


def test_exactly_100_percent_at_the_highest_is_accepted():
    rules = parse_rules(
        {
            "roles": [
                consumer(rate_bps=2500, windows=[{**GOOD_WINDOW, "factor_bps": 20_000}]),
                {"role": "issuer", "rate_bps": 5000, "form": "merchant_credit", "cap_fen": 1},
            ]
        },
        budgeted=True,
    )
    assert rules.max_award_fen() == 10_01


@PROPS
@given(st.integers(1, 10_000), st.integers(10_000, 50_000), st.integers(0, 10_000))
def test_parse_rules_refuses_exactly_the_sets_over_100_percent(rate_bps, factor_bps, other_bps):
    data = {
        "roles": [
            consumer(rate_bps=rate_bps, windows=[{**GOOD_WINDOW, "factor_bps": factor_bps}]),
            {"role": "inviter", "rate_bps": other_bps, "form": "points", "cap_fen": 1},
        ]
    }
    highest = rate_bps * factor_bps // BPS_DENOMINATOR + other_bps

    if highest > BPS_DENOMINATOR:
        with pytest.raises(RuleError, match="more than the order"):
            parse_rules(data, budgeted=True)
    else:
        assert parse_rules(data, budgeted=True).max_award_fen() == 10_01
