"""Review of the session's commits (6bdb746..HEAD): each test pins a problem a commit brought in. Both databases."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from models import Audience, Order, RiskRuleSet, db
from risk.rules import campaign_scope, forget_rules
from tests.test_risk_payment import fresh_rules, rebates_of, shop  # noqa: F401 - fixtures

# -- c755dd7: rule sets the previous release accepted and activated are now unreadable ------------------------------


@pytest.mark.parametrize(
    "stored",
    [
        # a platform rule named in Chinese: ``isalnum`` took it until c755dd7 (it can never fire: score is 0..100)
        ("platform", [{"name": "大额订单", "action": "review", "when": [["score", ">", 100]]}]),
        # a campaign's switch-off override carrying an action: stored as "switched off" until c755dd7
        ("campaign", [{"name": "review_high_score", "off": True, "action": "allow"}]),
    ],
    ids=["cjk_rule_name", "off_override_with_action"],
)
def test_rules_the_previous_release_stored_and_activated_still_decide_the_orders(shop, pay, stored):  # noqa: F811
    # given: an honest order, and active rules that the release before c755dd7 accepted, stored and activated
    order, people, campaign, referral = shop(browsing=True)
    scope, rules = stored
    db.session.add(
        RiskRuleSet(
            scope="platform" if scope == "platform" else campaign_scope(campaign.id),
            version=1,
            rules=rules,
            status="active",
        )
    )
    db.session.commit()
    forget_rules()
    # when: WeChat tells us the order is paid (the first payment after the upgrade)
    pay(order)
    # then: the rules decide as they did the day before: the honest order is allowed, not every order held for review
    order = db.session.get(Order, order.id)
    assert order.risk_decision != "review", order.risk
    assert {r.status for r in rebates_of(order).values()} != {"review"}


# -- 3733f10: creating an audience ends the request's transaction before its key is stored --------------------------


LAPSED = {"lapsed_days": 30}


def test_a_keyed_audience_create_outliving_the_stale_time_is_created_once(app, make_operator, monkeypatch):
    """``idempotency.run`` keeps the key's row locked for the view's transaction (``_hold``), so a retry of a request
    that runs past ``STALE_AFTER`` waits and replays. 3733f10 counts the audience with ``read_apart``, which ends that
    transaction first: the hold is gone while the count (up to LONG_READ_TIMEOUT_S, 120 s) runs, a retry takes the key
    over and creates a second audience, and the first request commits its own as well."""
    import rebate.audiences
    import web.idempotency
    from tests.conftest import release_test_session
    from tests.test_audiences import LAPSED_30

    _, admin = make_operator("admin")
    headers = {**admin, "Idempotency-Key": "slow-audience"}
    body = {"name": "lapsed", "definition": LAPSED_30}
    monkeypatch.setattr(web.idempotency, "STALE_AFTER", timedelta(0))  # the count ran longer than 60 s
    entered, release = threading.Event(), threading.Event()
    real_count = rebate.audiences.preview_count

    def slow_count(*args, **kwargs):
        counted = real_count(*args, **kwargs)
        if not entered.is_set():  # the first request: its count is long
            entered.set()
            release.wait(20)
        return counted

    monkeypatch.setattr(rebate.audiences, "preview_count", slow_count)
    release_test_session()
    answers = {}

    def post(name: str):
        response = app.test_client().post("/admin/api/audiences", json=body, headers=headers)
        answers[name] = (response.status_code, response.get_json(), response.headers.get("Idempotent-Replayed"))

    first = threading.Thread(target=post, args=("first",))
    first.start()
    assert entered.wait(20)
    retry = threading.Thread(target=post, args=("retry",))
    retry.start()
    retry.join(5)  # a retry that waits on the first one's key (as it should) is still running here
    release.set()
    first.join(30)
    retry.join(30)

    assert answers["first"][0] == 201, answers
    db.session.rollback()
    assert db.session.execute(select(func.count()).select_from(Audience)).scalar_one() == 1, answers
    assert answers["retry"][:2] == answers["first"][:2] and answers["retry"][2] == "true", answers


# -- 7b132c3: a packet's trace shows merchant staff the orders other merchants took it on ---------------------------


RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}]}


def test_merchant_staff_tracing_a_packet_spent_at_their_shop_see_no_order_of_another_merchant(
    make_campaign, make_user, make_product, make_merchant, make_operator, client, pay, time_machine
):
    from rebate import create_order, issue_packet
    from rebate.orders import LineRequest
    from tests.test_refunds import refund
    from tests.test_reports_truth import bj

    # given: a platform packet (given back on a refund) spent at shop B on 5 March, refunded on 6 March
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00, restore_packet_on_refund=True)
    shop_a, shop_b = make_merchant("shop A"), make_merchant("shop B")
    buyer = make_user()
    at_a, at_b = make_product(shop_a, price_fen=110_00), make_product(shop_b, price_fen=110_00)
    time_machine.move_to(bj(2026, 3, 5, 10), tick=False)
    packet = issue_packet(campaign, buyer, source="test", source_ref="two-shops", now=bj(2026, 3, 5, 10))
    db.session.commit()
    elsewhere = create_order(buyer, [LineRequest(at_b.id, 1)], packet.id, bj(2026, 3, 5, 10))
    db.session.commit()
    assert pay(elsewhere, at=bj(2026, 3, 5, 10)) == "applied"
    time_machine.move_to(bj(2026, 3, 6, 11), tick=False)
    refund(db.session.get(Order, elsewhere.id), "R-shop-b", elsewhere.payable_fen, bj(2026, 3, 6, 11))
    # and: then spent at shop A on 8 March
    time_machine.move_to(bj(2026, 3, 8, 9), tick=False)
    here = create_order(buyer, [LineRequest(at_a.id, 1)], packet.id, bj(2026, 3, 8, 9))
    db.session.commit()
    assert pay(here, at=bj(2026, 3, 8, 9)) == "applied"
    # when: shop A's staff trace the packet (they see it: it was spent at their shop)
    _, staff = make_operator("merchant_staff", shop_a)
    answer = client.get(f"/admin/api/trace/packets/{packet.id}", headers=staff)
    assert answer.status_code == 200, answer.get_json()
    # then: shop B's order (its number, what it took off, its refund) is not shown to shop A
    text = json.dumps(answer.get_json(), ensure_ascii=False)
    assert elsewhere.out_trade_no not in text, [e["line"] for e in answer.get_json()["history"]]
