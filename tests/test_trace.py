"""The "why (no) rebate" trace over the stories of docs/architecture.md §1: skipped rules, held awards, refunds,
payouts, scoping."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event

from models import Campaign, Operator, db, utcnow
from rebate import apply_refund, begin_refund, create_order, issue_packet
from rebate.orders import LineRequest
from tests.money_helpers import app_money

TRIAL_RULES = {
    "attribution_days": 30,
    "roles": [
        {
            "role": "consumer",
            "rate_bps": 2000,
            "form": "points",
            "cap_fen": 10_00,
            "condition": {"milestones": ["feedback"], "window_days": 14, "quality_scaled": True},
        },
        {"role": "issuer", "rate_bps": 500, "form": "merchant_credit", "min_order_fen": 100_00, "cap_fen": 50_00},
    ],
}


def buy(user, product, packet=None):
    order = create_order(user, [LineRequest(product.id, 1)], packet.id if packet else None, utcnow())
    db.session.commit()
    return order


def trace(client, kind, object_id, headers, **query):
    return client.get(f"/admin/api/trace/{kind}/{object_id}", headers=headers, query_string=query)


def text(body) -> str:
    return "\n".join(body["lines"])


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")[1]


@pytest.fixture
def trial(make_user, make_merchant, make_product, make_campaign, pay):
    """The beauty shop's trial: a 5-yuan-off trial order paid, then a 200-yuan full-size order attributed to it."""
    shop = make_merchant("beauty shop")
    trial_size = make_product(shop, price_fen=10_00, category="trial")
    full_size = make_product(shop, price_fen=200_00)
    campaign = make_campaign(
        TRIAL_RULES,
        name="beauty trial",
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        budget_limit_fen=500_00,
        packet_amount_fen=5_00,
        packet_categories=["trial"],
        packet_merchant_id=shop.id,
    )
    carol = make_user()
    packet = issue_packet(campaign, carol, source="trial", source_ref="carol", now=utcnow())
    db.session.commit()
    first = buy(carol, trial_size, packet)
    pay(first)
    later = buy(carol, full_size)
    pay(later)
    return {"shop": shop, "campaign": campaign, "carol": carol, "packet": packet, "first": first, "later": later}


def test_order_trace_says_why_a_rule_skipped_and_what_is_held(client, admin, trial):
    # when: support traces the trial order
    response = trace(client, "orders", trial["first"].id, admin)

    # then: one campaign evaluated it as a packet campaign, with two decisions
    assert response.status_code == 200, response.json
    body = response.json
    assert body["order"]["paid_fen"] == 5_00 and body["order"]["paid_yuan"] == "5.00"
    [campaign] = body["campaigns"]
    assert (campaign["name"], campaign["evaluated_as"], campaign["rules_version"]) == ("beauty trial", "packet", 1)
    decisions = {d["role"]: d for d in campaign["decisions"]}

    # and: the issuer's rule was skipped, in words: threshold not met, with the engine's figures
    issuer = decisions["issuer"]
    assert (issuer["status"], issuer["reason_code"]) == ("skipped", "below_minimum")
    assert issuer["why"] == "the order was below the rule's minimum"
    assert "no rebate — the order was below the rule's minimum" in issuer["lines"][0]
    assert "order 5.00 yuan is below the minimum of 100.00 yuan" in text(body)

    # and: the consumer's points are held for feedback, with the deadline
    consumer = decisions["consumer"]
    assert (consumer["status"], consumer["held_fen"], consumer["held_yuan"]) == ("held", 1_00, "1.00")
    assert consumer["why"] == "held until its condition is met"
    assert consumer["condition"]["missing"] == ["feedback"]
    assert "Held: 1.00 yuan (100 fen) waits for feedback until" in text(body)


def test_order_trace_shows_attribution_to_the_trial_packet(client, admin, trial):
    body = trace(client, "orders", trial["later"].id, admin).json
    [campaign] = body["campaigns"]
    assert campaign["evaluated_as"] == "attribution"
    [issuer] = campaign["decisions"]
    assert (issuer["amount_fen"], issuer["form"], issuer["packet_id"]) == (10_00, "merchant_credit", trial["packet"].id)
    assert f"attributed to red packet {trial['packet'].id}" in text(body)
    assert "10.00 yuan (1000 fen) as merchant_credit to merchant" in text(body)
    assert "Credited to the merchant_credit account at once." in text(body)


def test_packet_trace_tells_its_history_its_order_and_the_rebates_it_triggered(client, admin, trial):
    body = trace(client, "packets", trial["packet"].id, admin).json
    assert body["packet"]["status"] == "used"
    assert [e["event"] for e in body["history"]] == ["issued", "used"]
    assert body["order"]["id"] == trial["first"].id
    # newest first: the attributed full-size order, then the trial order's two decisions
    assert [(r["order_id"], r["role"]) for r in body["rebates"]] == [
        (trial["later"].id, "issuer"),
        (trial["first"].id, "issuer"),
        (trial["first"].id, "consumer"),
    ]
    assert f"used on order {trial['first'].out_trade_no}" in text(body)


def test_packet_trace_of_an_issued_packet_past_its_validity(client, admin, make_campaign, make_user):
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]}, packet_amount_fen=3_00
    )
    packet = issue_packet(campaign, make_user(), source="signup", source_ref="x", now=utcnow() - timedelta(days=40))
    db.session.commit()
    body = trace(client, "packets", packet.id, admin).json
    assert [e["event"] for e in body["history"]] == ["issued", "past_validity"]
    assert body["rebates"] == []


def test_education_refund_shows_the_clawback(client, admin, education, pay):
    # given: the teacher's 10 % share of the tuition, held for lessons and a test, released in parts
    school, course, teacher, campaign, student, packet = education
    order = buy(student, course, packet)
    pay(order)
    _, staff = make_operator_for(client, school)
    client.post(f"/admin/api/orders/{order.id}/milestones", headers=staff, json={"name": "lessons_10"})

    # when: the tuition is refunded in full and the order traced
    begin_refund(order, "R-edu-1", order.payable_fen)
    apply_refund(order.out_trade_no, "R-edu-1", order.payable_fen, utcnow(), money=app_money())
    db.session.commit()
    body = trace(client, "orders", order.id, admin).json

    # then: the share shows both clawback steps by the refund, in yuan and fen
    [decision] = body["campaigns"][0]["decisions"]
    assert (decision["status"], decision["why"]) == ("clawed_back", "taken back by a refund")
    assert decision["original_fen"] == 195_00
    claws = decision["clawbacks"]
    assert {c["refund"] for c in claws} == {"R-edu-1"}
    assert sorted(c["amount_fen"] for c in claws) == [97_50, 97_50]
    assert "Clawed back 97.50 yuan (9750 fen) by refund R-edu-1 of 1950.00 yuan (195000 fen)" in text(body)
    assert "the part still held is cancelled" in text(body)
    assert decision["condition"]["met"][0]["name"] == "lessons_10"
    assert body["refunds"][0]["status"] == "succeeded"

    # and: the teacher's own trace lists the rebate they were to receive
    teacher_trace = trace(client, "users", teacher.id, admin).json
    assert [r["rebate_id"] for r in teacher_trace["rebates"]] == [decision["rebate_id"]]


def make_operator_for(client, merchant):
    from web.auth import issue_operator_token

    operator = Operator(
        username=f"staff-{merchant.id}", display_name="Staff", role="merchant_staff", merchant_id=merchant.id
    )
    db.session.add(operator)
    db.session.flush()
    token = issue_operator_token(operator)
    db.session.commit()
    return operator, {"Authorization": f"Bearer {token}"}


def test_referral_trace_shows_budget_exhausted_and_the_payout_state(
    client, admin, make_campaign, make_user, make_product, pay
):
    # given: inviters earn 10 % as WeChat change from a budget of 2 yuan
    make_campaign(
        {
            "applies_to": "referral",
            "roles": [{"role": "inviter", "rate_bps": 1000, "form": "wechat_change", "cap_fen": 10_00}],
        },
        name="referral",
        budget_limit_fen=2_00,
    )
    invitee = make_user(inviter=make_user())
    order = buy(invitee, make_product(price_fen=30_00))
    pay(order)

    body = trace(client, "orders", order.id, admin).json
    [decision] = body["campaigns"][0]["decisions"]
    assert body["campaigns"][0]["evaluated_as"] == "referral"
    assert (decision["reason_code"], decision["amount_fen"]) == ("budget_exhausted", 2_00)
    assert "the campaign's budget ran out" in decision["lines"][0]
    assert "limited by the campaign budget left: 2.00 yuan" in text(body)
    [payout] = decision["payouts"]
    assert (payout["rail"], payout["status"], payout["amount_fen"]) == ("wechat_change", "pending", 2_00)
    assert f"Payout #{payout['id']} of 2.00 yuan (200 fen) by wechat_change" in text(body)


def test_paused_campaign_shows_in_words(client, admin, make_campaign, make_user, make_product, pay):
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 10_00}]},
        budget_limit_fen=100_00,
        packet_amount_fen=5_00,
    )
    buyer = make_user()
    packet = issue_packet(campaign, buyer, source="t", source_ref="1", now=utcnow())
    db.session.commit()
    order = buy(buyer, make_product(price_fen=50_00), packet)
    db.session.get(Campaign, campaign.id).status = "paused"
    db.session.commit()
    pay(order)

    [decision] = trace(client, "orders", order.id, admin).json["campaigns"][0]["decisions"]
    assert (decision["reason_code"], decision["why"]) == (
        "campaign_not_running",
        "the campaign was paused or had ended",
    )


def test_orders_no_campaign_evaluated_say_so(client, admin, make_user, make_product, pay):
    buyer = make_user()
    unpaid = buy(buyer, make_product(price_fen=10_00))
    assert "not paid: rebates are decided only when an order is paid" in text(
        trace(client, "orders", unpaid.id, admin).json
    )
    paid = buy(buyer, make_product(price_fen=10_00))
    pay(paid)
    body = trace(client, "orders", paid.id, admin).json
    assert body["campaigns"] == []
    assert "no red packet was used; the buyer has no inviter" in text(body)


def test_user_trace_is_bounded_and_newest_first(client, admin, trial):
    body = trace(client, "users", trial["carol"].id, admin, limit=2).json
    assert body["limit"] == 2
    assert [o["id"] for o in body["orders"]] == [trial["later"].id, trial["first"].id]
    assert [p["id"] for p in body["packets"]] == [trial["packet"].id]
    assert len(body["rebates"]) == 2
    assert body["rebates"][0]["order_id"] == trial["later"].id
    assert trace(client, "users", trial["carol"].id, admin, limit=0).status_code == 422
    assert trace(client, "users", trial["carol"].id, admin, limit=101).status_code == 422


# --- who may trace what -----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["admin", "support", "finance"])
def test_platform_roles_trace_everything(client, make_operator, trial, role):
    _, headers = make_operator(role)
    for kind, object_id in (
        ("orders", trial["first"].id),
        ("packets", trial["packet"].id),
        ("users", trial["carol"].id),
    ):
        assert trace(client, kind, object_id, headers).status_code == 200


def test_merchant_staff_trace_their_own_merchants_objects_only(client, make_operator, make_merchant, trial):
    _, own = make_operator("merchant_staff", merchant=trial["shop"])
    _, other = make_operator("merchant_staff", merchant=make_merchant())
    objects = (("orders", trial["first"].id), ("packets", trial["packet"].id), ("users", trial["carol"].id))
    for kind, object_id in objects:
        assert trace(client, kind, object_id, own).status_code == 200
        response = trace(client, kind, object_id, other)
        assert response.status_code == 404, kind
        assert response.json["error"] == "not_found"


def test_merchant_staff_see_only_their_shop_in_a_customers_trace(
    client, make_operator, make_merchant, make_product, trial, pay
):
    elsewhere = buy(trial["carol"], make_product(make_merchant("elsewhere"), price_fen=10_00))
    pay(elsewhere)
    _, own = make_operator("merchant_staff", merchant=trial["shop"])
    body = trace(client, "users", trial["carol"].id, own).json
    assert elsewhere.id not in [o["id"] for o in body["orders"]]
    assert len(body["orders"]) == 2
    _, admin = make_operator("admin")
    assert elsewhere.id in [o["id"] for o in trace(client, "users", trial["carol"].id, admin).json["orders"]]


def test_merchant_staff_see_neither_the_platforms_rebates_nor_who_invited_their_customer(
    client, make_operator, make_campaign, make_user, make_product, trial, pay
):
    # given: the platform pays inviters; a customer invited by dave orders at the shop
    make_campaign(
        {
            "applies_to": "referral",
            "roles": [{"role": "inviter", "rate_bps": 1000, "form": "balance", "cap_fen": 9_00}],
        },
        name="platform referral",
        budget_limit_fen=100_00,
    )
    dave = make_user()
    erin = make_user(inviter=dave)
    pay(buy(erin, make_product(trial["shop"], price_fen=30_00)))
    _, own = make_operator("merchant_staff", merchant=trial["shop"])
    _, admin = make_operator("admin")

    mine, everything = (trace(client, "users", erin.id, h).json for h in (own, admin))

    assert (everything["user"]["inviter_id"], mine["user"]["inviter_id"], mine["user"]["invited_at"]) == (
        dave.id,
        None,
        None,
    )
    assert [r["role"] for r in everything["rebates"]] == ["inviter"]
    assert mine["rebates"] == []
    assert not any(f"#{dave.id}" in line for line in mine["lines"])
    # nor through the order's trace
    [order_id] = [o["id"] for o in mine["orders"]]
    theirs, ours = (trace(client, "orders", order_id, h).json for h in (own, admin))
    assert [c["name"] for c in ours["campaigns"]] == ["platform referral"]
    assert theirs["campaigns"] == []
    assert not any(f"#{dave.id}" in line or "inviter" in line for line in theirs["lines"])


def test_unknown_objects_are_404(client, admin):
    for kind in ("orders", "packets", "users"):
        assert trace(client, kind, 999_999, admin).status_code == 404


def test_callers_without_an_operator_token_are_401_and_disabled_operators_403(
    client, make_operator, make_user, user_headers, trial
):
    path = ("orders", trial["first"].id)
    assert trace(client, *path, {}).status_code == 401
    assert trace(client, *path, user_headers(trial["carol"])).status_code == 401
    operator, headers = make_operator("support")
    operator.active = False
    db.session.commit()
    response = trace(client, *path, headers)
    assert response.status_code == 403
    assert response.json["error"] == "operator_disabled"


def test_traces_only_read(client, admin, trial):
    statements = []

    def on_execute(conn, cursor, statement, *args):
        statements.append(statement.lstrip().split(None, 1)[0].upper())

    event.listen(db.engine, "before_cursor_execute", on_execute)
    try:
        for kind, object_id in (
            ("orders", trial["first"].id),
            ("packets", trial["packet"].id),
            ("users", trial["carol"].id),
        ):
            assert trace(client, kind, object_id, admin).status_code == 200
    finally:
        event.remove(db.engine, "before_cursor_execute", on_execute)
    framing = {"BEGIN", "COMMIT", "ROLLBACK"}  # SQLite's BEGIN IMMEDIATE opens every transaction
    assert statements and set(statements) - framing == {"SELECT"}, set(statements)
