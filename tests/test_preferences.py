"""A person chooses how rebates are paid where a campaign's rule allows several forms (issue 16).

``PUT /api/v1/me/preferences {"rebate_form": …}`` stores the choice (refusing a form the person cannot
receive), and at payment the choice picks the form when the side's rule allows it, else the rule's default.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from ledger import account, balance
from models import AccountKind, Rebate, UserIdentity, UserPreference, db, utcnow
from rebate import apply_refund, begin_refund, create_order, issue_packet
from rebate.orders import LineRequest
from rebate.preferences import preferred_forms, rebate_form_of
from rebate.rules import Form, OrderFacts, RuleError, entitlement_after_refund, evaluate, parse_rules
from tests.money_helpers import app_money

URL = "/api/v1/me/preferences"
CHOOSABLE = [Form.BALANCE, Form.POINTS, Form.WECHAT_CHANGE]


def consumer_rule(rate_bps=500, form=Form.BALANCE, forms=CHOOSABLE, **more) -> dict:
    rule = {"role": "consumer", "rate_bps": rate_bps, "form": form, "cap_fen": 200_00, **more}
    if forms is not None:
        rule["forms"] = [str(f) for f in forms]
    return {"roles": [rule]}


@pytest.fixture
def person(app, make_user):
    """A person with an openid under the mini-program (the payment appid), none under the official account."""
    return make_user(appid=app.config["WECHAT_APPID"])


def put(client, headers, user, form):
    return client.put(URL, json={"rebate_form": form}, headers=headers(user))


# --- the API -------------------------------------------------------------------------------------------


def test_a_new_person_has_no_choice_and_sees_what_they_can_receive(client, user_headers, person):
    response = client.get(URL, headers=user_headers(person))
    assert response.status_code == 200
    body = response.get_json()
    assert body["rebate_form"] is None
    by_form = {c["form"]: c for c in body["choices"]}
    assert Form.MERCHANT_CREDIT not in by_form
    assert by_form[Form.BALANCE]["available"] and by_form[Form.POINTS]["available"]
    assert by_form[Form.WECHAT_CHANGE]["available"]
    assert not by_form[Form.CASH_RED_PACKET]["available"]
    assert "official account" in by_form[Form.CASH_RED_PACKET]["why_not"]
    assert not by_form[Form.WECHAT_COUPON]["available"]  # no coupon stocks configured: the rail is off
    assert "not switched on" in by_form[Form.WECHAT_COUPON]["why_not"]


def test_choosing_a_form_stores_it_and_null_clears_it(client, user_headers, person):
    response = put(client, user_headers, person, Form.POINTS)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["rebate_form"] == Form.POINTS
    assert client.get(URL, headers=user_headers(person)).get_json()["rebate_form"] == Form.POINTS
    assert rebate_form_of(person.id) == Form.POINTS
    assert put(client, user_headers, person, Form.WECHAT_CHANGE).get_json()["rebate_form"] == Form.WECHAT_CHANGE
    response = put(client, user_headers, person, None)
    assert response.status_code == 200 and response.get_json()["rebate_form"] is None
    assert rebate_form_of(person.id) is None


@pytest.mark.parametrize(
    "body",
    [
        {"rebate_form": "bitcoin"},
        {"rebate_form": Form.MERCHANT_CREDIT.value},  # a merchant's, never a person's
        {"rebate_form": 3},
        {"rebate_form": Form.POINTS.value, "extra": 1},
        {},
    ],
)
def test_an_unknown_form_is_422_naming_the_field_and_changes_nothing(client, user_headers, person, body):
    assert put(client, user_headers, person, Form.POINTS).status_code == 200
    response = client.put(URL, json=body, headers=user_headers(person))
    assert response.status_code == 422, response.get_json()
    error = response.get_json()
    assert error["error"] == "validation_error"
    assert [d["field"] for d in error["details"]] == ["extra" if "extra" in body else "rebate_form"]
    assert rebate_form_of(person.id) == Form.POINTS


def test_a_form_the_person_cannot_receive_is_refused_with_the_reason(app, client, user_headers, person, make_user):
    assert put(client, user_headers, person, Form.POINTS).status_code == 200
    response = put(client, user_headers, person, Form.CASH_RED_PACKET)  # no official-account openid
    assert response.status_code == 409
    error = response.get_json()
    assert error["error"] == "rebate_form_unavailable", error
    assert "official account" in error["message"]
    assert put(client, user_headers, person, Form.WECHAT_COUPON).status_code == 409  # the rail is off
    assert rebate_form_of(person.id) == Form.POINTS  # unchanged

    stranger = make_user(appid="wx-some-other-app")  # no openid under the payment appid
    response = put(client, user_headers, stranger, Form.WECHAT_CHANGE)
    assert response.status_code == 409 and "mini-program" in response.get_json()["message"]
    assert db.session.get(UserPreference, stranger.id) is None

    db.session.add(UserIdentity(user_id=person.id, appid=app.config["WECHAT_OA_APPID"], openid="oa-openid-1"))
    db.session.commit()
    assert put(client, user_headers, person, Form.CASH_RED_PACKET).status_code == 200


def test_preferences_need_a_signed_in_person(client):
    assert client.get(URL).status_code == 401
    assert client.put(URL, json={"rebate_form": Form.POINTS.value}).status_code == 401


def test_the_preferences_endpoints_are_in_the_openapi_document(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    assert {"get", "put"} <= set(paths[URL])


# --- the rules -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule, words",
    [
        ({"forms": ["balance", "bitcoin"]}, "roles[0].forms[1] must be one of"),
        ({"forms": []}, "roles[0].forms must be a list of 1"),
        ({"forms": "points"}, "roles[0].forms must be a list"),
        ({"forms": [Form.POINTS.value]}, "must include the default form"),
        ({"forms": [Form.BALANCE.value, Form.BALANCE.value]}, "names a form twice"),
        ({"forms": [Form.BALANCE.value, Form.MERCHANT_CREDIT.value]}, "merchant_credit"),
    ],
)
def test_a_rule_with_bad_forms_is_refused_naming_the_field(rule, words):
    raw = {"roles": [{"role": "consumer", "rate_bps": 500, "form": Form.BALANCE.value, "cap_fen": 100, **rule}]}
    with pytest.raises(RuleError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_rules(raw, budgeted=False)


def test_a_budgeted_rule_with_several_forms_still_needs_its_cap():
    raw = consumer_rule()
    del raw["roles"][0]["cap_fen"]
    with pytest.raises(RuleError, match="needs cap_fen"):
        parse_rules(raw, budgeted=True)
    assert parse_rules(raw, budgeted=False).roles[0].allowed_forms == tuple(CHOOSABLE)


def test_the_single_form_format_is_unchanged():
    rules = parse_rules(consumer_rule(forms=None), budgeted=True)
    assert rules.roles[0].forms is None and rules.roles[0].allowed_forms == (Form.BALANCE,)
    assert not rules.offers_forms
    one = parse_rules(consumer_rule(forms=[Form.BALANCE]), budgeted=True)  # a list of one is the single form
    assert one.roles[0].forms is None


def test_evaluate_takes_the_preferred_form_only_when_the_rule_allows_it():
    rules = parse_rules(consumer_rule(), budgeted=True)
    facts = OrderFacts(110_00, 100_00, utcnow())
    assert evaluate(rules, facts)[0].form == Form.BALANCE
    assert evaluate(rules, facts, forms={"consumer": Form.POINTS})[0].form == Form.POINTS
    assert evaluate(rules, facts, forms={"consumer": Form.CASH_RED_PACKET})[0].form == Form.BALANCE
    chosen = evaluate(rules, facts, forms={"consumer": Form.POINTS})[0]
    assert chosen.amount_fen == 5_00 and "the form the person chose" in chosen.reasons[-1]


def test_a_non_cash_choice_may_pay_more_than_was_paid_but_never_more_than_the_cap():
    """100 % of the order total (110 yuan; 100 paid): as cash it stops at what was paid, as points at the cap."""
    rules = parse_rules(consumer_rule(rate_bps=10_000, base="order_total"), budgeted=True)
    facts = OrderFacts(110_00, 100_00, utcnow())
    assert evaluate(rules, facts)[0].amount_fen == 100_00
    assert evaluate(rules, facts)[0].reason_code == "paid_cap"
    assert evaluate(rules, facts, forms={"consumer": Form.POINTS})[0].amount_fen == 110_00
    # The cap (what the budget reserves) covers every allowed form.
    assert rules.max_award_fen() == 200_00
    assert entitlement_after_refund(rules, OrderFacts(55_00, 50_00, utcnow()), "consumer", 110_00, Form.POINTS) == 55_00
    assert entitlement_after_refund(rules, OrderFacts(55_00, 50_00, utcnow()), "consumer", 100_00) == 50_00


# --- at payment ----------------------------------------------------------------------------------------


def spend_and_pay(app, campaign, user, product, pay):
    packet = issue_packet(
        campaign, user, source="test", source_ref=f"pref-{user.id}-{utcnow().timestamp()}", now=utcnow()
    )
    db.session.commit()
    order = create_order(user, [LineRequest(product.id, 1)], packet.id, utcnow())
    db.session.commit()
    assert pay(order) == "applied"
    db.session.refresh(order)
    return order


def consumer_rebate(order) -> Rebate:
    return db.session.execute(select(Rebate).filter_by(order_id=order.id, role="consumer")).scalar_one()


@pytest.fixture
def shop(make_product, make_campaign):
    """A 10-yuan packet on a 110-yuan product (100 paid); the consumer earns 5 % of paid, as balance by default,
    or points or WeChat change by choice."""
    campaign = make_campaign(consumer_rule(), budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    return campaign, make_product(price_fen=110_00)


def test_the_stored_choice_picks_the_form_at_payment(app, client, user_headers, person, shop, pay):
    campaign, product = shop
    assert put(client, user_headers, person, Form.POINTS).status_code == 200
    order = spend_and_pay(app, campaign, person, product, pay)
    rebate = consumer_rebate(order)
    assert (rebate.form, rebate.amount_fen, rebate.points) == (Form.POINTS, 5_00, 5_00 // app_money().point_value_fen)
    assert balance(account(AccountKind.USER_POINTS, "user", person.id)) == rebate.points
    assert balance(account(AccountKind.USER_CASH, "user", person.id)) == 0
    db.session.refresh(campaign)
    assert campaign.budget_committed_fen == 10_00 + 5_00


def test_without_a_choice_or_with_one_the_rule_does_not_allow_the_default_is_paid(
    app, client, user_headers, person, make_user, shop, pay
):
    campaign, product = shop
    order = spend_and_pay(app, campaign, person, product, pay)
    assert consumer_rebate(order).form == Form.BALANCE
    other = make_user(appid=app.config["WECHAT_APPID"])
    db.session.add(UserIdentity(user_id=other.id, appid=app.config["WECHAT_OA_APPID"], openid="oa-openid-2"))
    db.session.commit()
    assert put(client, user_headers, other, Form.CASH_RED_PACKET).status_code == 200  # receivable, not allowed here
    order = spend_and_pay(app, campaign, other, product, pay)
    rebate = consumer_rebate(order)
    assert (rebate.form, rebate.amount_fen) == (Form.BALANCE, 5_00)
    assert balance(account(AccountKind.USER_CASH, "user", other.id)) == 5_00


def test_a_campaign_offering_no_choice_reads_no_preferences(app, person, make_campaign, make_product, pay):
    campaign = make_campaign(consumer_rule(forms=None), budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    db.session.add(UserPreference(user_id=person.id, rebate_form=Form.POINTS.value, updated_at=utcnow()))
    db.session.commit()
    order = spend_and_pay(app, campaign, person, make_product(price_fen=110_00), pay)
    assert consumer_rebate(order).form == Form.BALANCE


def test_preferred_forms_maps_only_people_with_a_choice(person, make_user, make_merchant):
    from rebate.awards import Beneficiary

    db.session.add(UserPreference(user_id=person.id, rebate_form=Form.POINTS.value, updated_at=utcnow()))
    db.session.commit()
    other = make_user()
    who = {
        "consumer": Beneficiary("user", person.id),
        "inviter": Beneficiary("user", other.id),
        "issuer": Beneficiary("merchant", make_merchant().id),
    }
    assert preferred_forms(who) == {"consumer": Form.POINTS}
    assert preferred_forms({"consumer": None}) == {}


def test_a_refund_claws_back_the_chosen_form(app, client, user_headers, person, shop, pay):
    """Points chosen: a half refund takes half the points back, cumulative and rounded down as always."""
    campaign, product = shop
    assert put(client, user_headers, person, Form.POINTS).status_code == 200
    order = spend_and_pay(app, campaign, person, product, pay)
    begin_refund(order, "R-PREF-1", 50_00)
    apply_refund(order.out_trade_no, "R-PREF-1", 50_00, utcnow(), refund_id="wx-R-PREF-1", money=app_money())
    db.session.commit()
    rebate = consumer_rebate(order)
    assert (rebate.form, rebate.amount_fen) == (Form.POINTS, 2_50)
    points = balance(account(AccountKind.USER_POINTS, "user", person.id))
    assert points == 2_50 // app_money().point_value_fen


def test_two_first_choices_at_once_both_succeed_and_one_is_kept(app, client, user_headers, person):
    """No row yet: two PUTs race to create it; neither fails, and the stored choice is one of theirs."""
    from tests.concurrency import together

    headers = user_headers(person)

    def choose(i: int):
        with app.test_client() as c:
            return c.put(URL, json={"rebate_form": [Form.POINTS.value, Form.BALANCE.value][i % 2]}, headers=headers)

    results = together(6, choose)
    assert [getattr(r, "status_code", r) for r in results] == [200] * 6
    assert rebate_form_of(person.id) in (Form.POINTS, Form.BALANCE)
    rows = db.session.execute(select(UserPreference).where(UserPreference.user_id == person.id)).scalars().all()
    assert len(rows) == 1


@pytest.mark.parametrize(
    "change, words",
    [
        ({"forms": [Form.BALANCE.value, "gold"]}, "roles[0].forms[1] must be one of"),
        ({"forms": [Form.POINTS.value]}, "must include the default form"),
        ({"cap_fen": None}, "needs cap_fen"),
    ],
)
def test_the_campaign_api_refuses_bad_forms_with_422_naming_the_field(client, make_operator, change, words):
    _, headers = make_operator("admin")
    rule = {"role": "consumer", "rate_bps": 500, "form": Form.BALANCE.value, "cap_fen": 20_00, **change}
    body = {
        "name": "choose your rebate",
        "issuer_type": "platform",
        "funder_type": "platform_fund",
        "budget_limit_fen": 1_000_00,
        "packet_amount_fen": 10_00,
        "trigger": {"kind": "claim_code"},
        "rules": {"roles": [rule]},
        "reason": "test",
    }
    response = client.post("/admin/api/campaigns/validate", json=body, headers=headers)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()
    assert words in " ".join([error["message"], *(d["problem"] for d in error.get("details", []))]), error
    good = {**rule, "cap_fen": 20_00, "forms": [Form.BALANCE.value, Form.POINTS.value]}
    response = client.post("/admin/api/campaigns/validate", json={**body, "rules": {"roles": [good]}}, headers=headers)
    assert response.get_json() == {"valid": True, "max_rebate_per_order_fen": 20_00}
