"""Rates per product category (issue 16; the seed's fruit with a high margin at 8 %).

A side's ``category_bps`` gives some categories their own rate over the order's lines; the other lines earn
the whole-order rate. The base the rule names (``order_total`` or ``paid``) is allotted to the lines in
proportion to their value, each part rounded down, and a refund (which names no lines) shrinks every part in
the same proportion: the entitlement is recomputed on the net amounts, cumulative, as for every rule.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from ledger import account, balance
from models import AccountKind, Rebate, db, utcnow
from money import share
from rebate import apply_refund, begin_refund, create_order, issue_packet
from rebate.orders import LineRequest
from rebate.rules import (
    CASH_FORMS,
    Form,
    Line,
    OrderFacts,
    RuleError,
    allot,
    entitlement_after_refund,
    evaluate,
    parse_rules,
    rules_json,
)
from tests.money_helpers import app_money

T0 = datetime(2025, 1, 1, tzinfo=UTC)
FRUIT = "fruit"
LINES = (Line(FRUIT, 30_00), Line("dairy", 20_00))  # a 50-yuan order: 30 of fruit, 20 of milk


def rule(role="consumer", rate_bps=500, category_bps=None, form=Form.BALANCE, **more) -> dict:
    raw = {"role": role, "rate_bps": rate_bps, "form": form.value, "cap_fen": 100_00, **more}
    if category_bps is not None:
        raw["category_bps"] = category_bps
    return raw


def one(raw: dict, facts: OrderFacts, **kw):
    return evaluate(parse_rules({"roles": [raw]}, budgeted=False), facts, **kw)[0]


# --- the rule and its arithmetic -------------------------------------------------------------------------


def test_fruit_at_8_percent_and_the_rest_at_the_whole_order_rate_on_the_paid_base():
    """50-yuan order paid 40 after a 10-yuan packet: the 40 is allotted 24 to fruit, 16 to the rest."""
    facts = OrderFacts(50_00, 40_00, T0, lines=LINES)
    decision = one(rule(category_bps={FRUIT: 800}), facts)
    assert decision.amount_fen == 1_92 + 80  # 8 % of 24 + 5 % of 16
    assert decision.reasons == (
        "8% of 24.00 yuan (fruit lines' share of paid) = 1.92 yuan",
        "5% of 16.00 yuan (other lines' share of paid) = 0.80 yuan",
    )


def test_on_the_order_total_base_each_line_counts_at_its_own_value():
    facts = OrderFacts(50_00, 40_00, T0, lines=LINES)
    assert one(rule(category_bps={FRUIT: 800}, base="order_total"), facts).amount_fen == 2_40 + 1_00


def test_the_base_is_allotted_rounding_each_part_down():
    """10.01 yuan over three lines of equal value: 333 fen each, the odd 2 fen allotted to nobody."""
    parts, others = allot(10_01, (Line("a", 1), Line("b", 1), Line("c", 1)), {"a", "b"})
    assert (parts, others) == ({"a": 3_33, "b": 3_33}, 3_33)
    assert allot(10_00, (), {"a"}) == ({}, 10_00)  # no lines: all of it at the whole-order rate
    assert allot(10_00, (Line("z", 5),), {"a"}) == ({}, 10_00)


def test_an_order_without_lines_of_a_listed_category_earns_the_whole_order_rate():
    facts = OrderFacts(50_00, 40_00, T0, lines=(Line("dairy", 50_00),))
    assert one(rule(category_bps={FRUIT: 800}), facts).amount_fen == 2_00
    assert one(rule(category_bps={FRUIT: 800}), OrderFacts(50_00, 40_00, T0)).amount_fen == 2_00  # no lines known


def test_an_all_fruit_order_earns_only_the_fruit_rate():
    facts = OrderFacts(50_00, 40_00, T0, lines=(Line(FRUIT, 50_00),))
    decision = one(rule(category_bps={FRUIT: 800}), facts)
    assert decision.amount_fen == 3_20 and len(decision.reasons) == 1


def test_caps_minimums_tiers_and_windows_still_apply():
    facts = OrderFacts(50_00, 40_00, T0, lines=LINES)
    assert one(rule(category_bps={FRUIT: 800}, cap_fen=2_00), facts).amount_fen == 2_00
    assert one(rule(category_bps={FRUIT: 800}, min_order_fen=41_00), facts).reason_code == "below_minimum"
    tiered = rule(category_bps={FRUIT: 800}, tiers=[{"min_order_fen": 30_00, "rate_bps": 1000}])
    assert one(tiered, facts).amount_fen == 1_92 + 1_60  # the tier is the rest's rate; fruit keeps 8 %
    window = {"starts_at": T0.isoformat(), "ends_at": "2025-01-02T00:00:00+00:00", "factor_bps": 20_000}
    doubled = one(rule(category_bps={FRUIT: 800}, windows=[window]), facts)
    assert doubled.amount_fen == 3_84 + 1_60  # a double-rebate window doubles both


def test_a_cash_category_award_never_exceeds_what_was_paid():
    facts = OrderFacts(50_00, 1_00, T0, lines=LINES)
    decision = one(rule(category_bps={FRUIT: 10_000}, base="order_total", rate_bps=10_000), facts)
    assert decision.amount_fen == 1_00 and decision.reason_code == "paid_cap"


@pytest.mark.parametrize(
    "category_bps, words",
    [
        ({}, r"roles\[0\].category_bps must be an object of 1 to 20 keys"),
        ({"fruit salad": 800}, r"roles\[0\].category_bps: 'fruit salad' must match"),
        ({FRUIT: 10_001}, r"roles\[0\].category_bps.fruit must be an integer from 0 to 10000"),
        ({FRUIT: "8%"}, r"roles\[0\].category_bps.fruit must be an integer"),
        ({FRUIT: True}, r"roles\[0\].category_bps.fruit must be an integer"),
        ([FRUIT], r"roles\[0\].category_bps must be an object"),
        ({f"c{i}": 1 for i in range(21)}, r"1 to 20 keys"),
    ],
)
def test_bad_category_rates_are_refused_naming_the_field(category_bps, words):
    with pytest.raises(RuleError, match=words):
        parse_rules({"roles": [rule(category_bps=category_bps)]}, budgeted=False)


def test_category_rates_count_toward_the_most_a_rule_set_may_pay():
    roles = [rule(category_bps={FRUIT: 9_000}), rule("issuer", rate_bps=100, form=Form.MERCHANT_CREDIT)]
    parse_rules({"roles": roles}, budgeted=False)
    roles[1]["rate_bps"] = 1_001
    with pytest.raises(RuleError, match="more than the order itself"):
        parse_rules({"roles": roles}, budgeted=False)


def test_the_stored_json_keeps_the_category_rates_and_reads_back_the_same():
    rules = parse_rules({"roles": [rule(category_bps={FRUIT: 800, "meat": 300})]}, budgeted=True)
    stored = rules_json(rules)
    assert stored["roles"][0]["category_bps"] == {FRUIT: 800, "meat": 300}
    assert parse_rules(stored, budgeted=True) == rules
    plain = rules_json(parse_rules({"roles": [rule()]}, budgeted=True))
    assert "category_bps" not in plain["roles"][0] and "forms" not in plain["roles"][0]  # old format unchanged


def test_a_refund_scales_every_line_in_proportion():
    """Half the payment refunded: each category's part of the base halves, and so does the entitlement."""
    rules = parse_rules({"roles": [rule(category_bps={FRUIT: 800})]}, budgeted=False)
    awarded = evaluate(rules, OrderFacts(50_00, 40_00, T0, lines=LINES))[0].amount_fen
    half = OrderFacts(25_00, 20_00, T0, lines=LINES)
    assert entitlement_after_refund(rules, half, "consumer", awarded) == 96 + 40


# --- properties --------------------------------------------------------------------------------------------

CATEGORIES = ["fruit", "dairy", "meat", "toys"]


@st.composite
def orders(draw):
    lines = tuple(
        Line(draw(st.sampled_from(CATEGORIES)), draw(st.integers(1, 500_00))) for _ in range(draw(st.integers(0, 6)))
    )
    total = sum(line.total_fen for line in lines) or draw(st.integers(1, 500_00))
    paid = draw(st.integers(1, total))
    return OrderFacts(total, paid, T0, lines=lines)


@st.composite
def category_rules(draw):
    rates = draw(st.dictionaries(st.sampled_from(CATEGORIES), st.integers(0, 10_000), min_size=1, max_size=4))
    raw = rule(
        rate_bps=draw(st.integers(0, 10_000)),
        category_bps=rates,
        base=draw(st.sampled_from(["paid", "order_total"])),
        form=draw(st.sampled_from([f for f in Form if f != Form.MERCHANT_CREDIT])),
        cap_fen=draw(st.one_of(st.none(), st.integers(1, 1_000_00))),
    )
    return parse_rules({"roles": [raw]}, budgeted=False)


@settings(max_examples=400, deadline=None)
@given(category_rules(), orders())
def test_category_awards_never_exceed_the_whole_order_maximum_nor_what_was_paid(rules, facts):
    role = rules.roles[0]
    decision = evaluate(rules, facts)[0]
    base = facts.order_total_fen if role.base == "order_total" else facts.paid_fen
    highest = max(role.rate_bps, *(bps for _, bps in role.category_bps))
    assert 0 <= decision.amount_fen <= share(base, highest)  # never more than every line at the highest rate
    if decision.reason_code == "awarded":  # no limit cut it: at least every part at the lowest rate, less a fen a part
        lowest = min(role.rate_bps, *(bps for _, bps in role.category_bps))
        assert decision.amount_fen >= share(base, lowest) - len(facts.lines) - 1
    if role.cap_fen is not None:
        assert decision.amount_fen <= role.cap_fen
    if decision.form in CASH_FORMS:
        assert decision.amount_fen <= facts.paid_fen


@settings(max_examples=300, deadline=None)
@given(category_rules(), orders(), st.data())
def test_refunds_only_ever_lower_a_category_entitlement(rules, facts, data):
    awarded = evaluate(rules, facts)[0].amount_fen
    net_paid = facts.paid_fen
    entitled = awarded
    for _ in range(3):
        net_paid = data.draw(st.integers(0, net_paid))
        net_total = facts.order_total_fen * net_paid // facts.paid_fen
        net = OrderFacts(net_total, net_paid, T0, lines=facts.lines)
        now = entitlement_after_refund(rules, net, "consumer", entitled)
        assert 0 <= now <= entitled
        entitled = now
    if net_paid == 0:
        assert entitled == 0


# --- the worked example: fruit and milk, both sides paid, then partial refunds -------------------------------


@pytest.fixture
def grocer(make_merchant, make_product, make_campaign):
    """A grocer's 10-yuan packet. The buyer earns 5 % of what they paid, 8 % on fruit, as balance; the grocer
    (the issuer) 10 %, 12 % on fruit, as marketing credit. Funded by the grocer's deposit, budgeted."""
    shop = make_merchant()
    fruit = make_product(shop, price_fen=30_00, category=FRUIT)
    milk = make_product(shop, price_fen=20_00, category="dairy")
    rules = {
        "roles": [
            rule("issuer", rate_bps=1000, category_bps={FRUIT: 1200}, form=Form.MERCHANT_CREDIT, cap_fen=50_00),
            rule("consumer", rate_bps=500, category_bps={FRUIT: 800}, cap_fen=50_00),
        ]
    }
    campaign = make_campaign(
        rules,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        packet_amount_fen=10_00,
        budget_limit_fen=1_000_00,
    )
    return shop, fruit, milk, campaign


def rebates(order) -> dict[str, Rebate]:
    rows = db.session.execute(select(Rebate).where(Rebate.order_id == order.id)).scalars()
    return {r.role: r for r in rows}


def test_worked_example_fruit_and_milk_paid_then_refunded_in_two_parts(app, grocer, make_user, pay):
    shop, fruit, milk, campaign = grocer
    buyer = make_user()
    packet = issue_packet(campaign, buyer, source="test", source_ref="grocer-1", now=utcnow())
    db.session.commit()
    order = create_order(buyer, [LineRequest(fruit.id, 1), LineRequest(milk.id, 1)], packet.id, utcnow())
    db.session.commit()
    assert (order.total_fen, order.payable_fen) == (50_00, 40_00)
    assert pay(order) == "applied"

    credit = account(AccountKind.MERCHANT_MARKETING_CREDIT, "merchant", shop.id)
    cash = account(AccountKind.USER_CASH, "user", buyer.id)
    # Paid 40 yuan: 24 of it is fruit's share, 16 the milk's.
    by_role = rebates(order)
    assert by_role["consumer"].amount_fen == 1_92 + 80  # 8 % of 24 + 5 % of 16
    assert by_role["issuer"].amount_fen == 2_88 + 1_60  # 12 % of 24 + 10 % of 16
    assert (balance(cash), balance(credit)) == (2_72, 4_48)
    db.session.refresh(campaign)
    assert campaign.budget_committed_fen == 10_00 + 2_72 + 4_48

    def refund(number: str, fen: int) -> None:
        begin_refund(order, number, fen)
        apply_refund(order.out_trade_no, number, fen, utcnow(), refund_id=f"wx-{number}", money=app_money())
        db.session.commit()

    refund("GROCER-R1", 10_00)  # 30 yuan paid net: fruit's share 18, the milk's 12
    by_role = rebates(order)
    assert by_role["consumer"].amount_fen == 1_44 + 60
    assert by_role["issuer"].amount_fen == 2_16 + 1_20
    assert (balance(cash), balance(credit)) == (2_04, 3_36)

    refund("GROCER-R2", 10_00)  # 20 yuan net: fruit 12, milk 8; cumulative, on the net amounts
    by_role = rebates(order)
    assert by_role["consumer"].amount_fen == 96 + 40
    assert by_role["issuer"].amount_fen == 1_44 + 80
    assert (balance(cash), balance(credit)) == (1_36, 2_24)
    db.session.refresh(campaign)
    assert campaign.budget_committed_fen == 10_00 + 1_36 + 2_24


def test_the_what_if_replays_category_rates_over_the_orders_lines(app, grocer, make_user, pay):
    """The current rules replayed give exactly what was awarded; a draft with fruit at 10 % pays fruit more."""
    from datetime import timedelta

    from insights.simulate import simulate

    shop, fruit, milk, campaign = grocer
    buyer = make_user()
    packet = issue_packet(campaign, buyer, source="test", source_ref="grocer-sim", now=utcnow())
    db.session.commit()
    order = create_order(buyer, [LineRequest(fruit.id, 1), LineRequest(milk.id, 1)], packet.id, utcnow())
    db.session.commit()
    assert pay(order) == "applied"

    current = parse_rules(rules_json(campaign_rules(campaign)), budgeted=True)
    draft_json = rules_json(current)
    draft_json["roles"][1]["category_bps"] = {FRUIT: 1000}
    draft = parse_rules(draft_json, budgeted=True)
    answer = simulate(campaign, draft, days=1, now=utcnow() + timedelta(minutes=1), budget_limit_fen=None)
    assert answer["current"]["by_role"]["consumer"]["amount_fen"] == 2_72
    assert answer["current"]["by_role"]["issuer"]["amount_fen"] == 4_48
    assert answer["draft"]["by_role"]["consumer"]["amount_fen"] == 2_40 + 80  # 10 % of fruit's 24
    assert any("category rates" in a for a in answer["assumptions"])


def campaign_rules(campaign):
    from rebate.campaigns import rules_of

    return rules_of(campaign)


def test_the_public_rules_show_category_rates_and_the_forms_to_choose_from(client, make_merchant, make_campaign):
    rules = {
        "roles": [
            rule(
                category_bps={FRUIT: 800},
                forms=[Form.BALANCE.value, Form.POINTS.value],
            )
        ]
    }
    campaign = make_campaign(rules, packet_amount_fen=10_00)
    answer = client.get(f"/api/v1/campaigns/{campaign.id}/rules")
    assert answer.status_code == 200
    (consumer,) = answer.get_json()["rebates"]
    assert consumer["category_rates"] == [{"category": FRUIT, "rate_bps": 800, "rate_percent": "8%"}]
    assert [f["form"] for f in consumer["forms"]] == [Form.BALANCE, Form.POINTS]
    assert "8% on fruit" in consumer["words"] and "other lines at 5%" in consumer["words"]
    assert "by your choice" in consumer["words"]
    page = client.get(f"/c/{campaign.id}").get_data(as_text=True)
    assert "products in fruit): 8%" in page and "you may choose" in page
