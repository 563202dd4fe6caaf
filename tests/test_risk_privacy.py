"""What risk lets out (issue 12: "the user sees 'under review' and no fraud details"): a person never reads a
reviewer's note, a score, a feature, a rule or another person's ban; a merchant's staff learn that an order's
rebates wait for a review or were refused, never why, and cannot read the review queue."""

from __future__ import annotations

from sqlalchemy import select

from models import Merchant, Order, Product, User, db
from tests.test_review_cases import decide
from tests.test_risk_payment import fresh_rules, shop  # noqa: F401 - fixtures

NOTE = "farm phone 6 accounts; shares issuer device dev-x"
SECRETS = (NOTE, "score", "accounts on this device", "review_high_score", "review case", "ban ")


def _merchant_of(order: Order) -> Merchant:
    return db.session.get(Merchant, db.session.get(Order, order.id).merchant_id)


def test_the_person_reads_no_reviewers_note_after_any_outcome(client, shop, pay, make_operator, user_headers):
    # given: a held order whose case a reviewer revokes with a note naming the evidence
    order, people, *_ = shop(farm=True)
    pay(order)
    _, admin = make_operator("admin")
    [case] = client.get("/admin/api/reviews", headers=admin).get_json()["items"]
    assert decide(client, admin, case["id"], "revoke", NOTE).status_code == 200
    consumer, issuer = (db.session.get(User, people[r].id) for r in ("consumer", "issuer"))
    # when: the buyer and the issuer read their rebates and the order
    seen = [
        client.get("/api/v1/me/rebates", headers=user_headers(consumer)),
        client.get("/api/v1/me/rebates", headers=user_headers(issuer)),
        client.get(f"/api/v1/orders/{order.id}", headers=user_headers(consumer)),
    ]
    # then: the outcome in plain words, none of the evidence
    for answer in seen:
        assert answer.status_code == 200
        text = answer.get_data(as_text=True)
        assert not [s for s in SECRETS if s in text], text
    assert "revoked after a review" in seen[0].get_data(as_text=True)
    # the platform's operators still read the note in the trace
    assert NOTE in client.get(f"/admin/api/trace/orders/{order.id}", headers=admin).get_data(as_text=True)


def test_the_buyer_sees_only_their_own_rebates_on_the_order_not_who_else_was_refused(
    client, shop, pay, make_operator, user_headers
):
    # given: the packet's issuer is banned, with a reason, before the buyer pays
    order, people, *_ = shop(browsing=True)
    _, admin = make_operator("admin")
    banned = client.post(
        "/admin/api/bans",
        json={"subject": "user", "value": str(people["issuer"].id), "reason": "sells accounts"},
        headers=admin,
    )
    assert banned.status_code == 201
    pay(order)
    # when
    body = client.get(f"/api/v1/orders/{order.id}", headers=user_headers(db.session.get(User, people["consumer"].id)))
    # then: the consumer's own rebate only; nothing of the issuer's ban
    assert [r["role"] for r in body.get_json()["rebates"]] == ["consumer"]
    assert "sells accounts" not in body.get_data(as_text=True) and "banned" not in body.get_data(as_text=True)
    trace = client.get(f"/admin/api/trace/orders/{order.id}", headers=admin).get_data(as_text=True)
    assert "sells accounts" in trace  # the platform's trace says which ban refused whom


def test_merchant_staff_learn_that_rebates_wait_never_why_and_cannot_read_the_queue(client, shop, pay, make_operator):
    # given: a held order at the staff's merchant
    order, *_ = shop(farm=True)
    pay(order)
    product = db.session.execute(select(Product).where(Product.merchant_id == _merchant_of(order).id)).scalar()
    _, staff = make_operator("merchant_staff", merchant=db.session.get(Merchant, product.merchant_id))
    # when / then: the queue and a case are not theirs
    assert client.get("/admin/api/reviews", headers=staff).status_code in (403, 404)
    _, admin = make_operator("admin")
    [case] = client.get("/admin/api/reviews", headers=admin).get_json()["items"]
    assert client.get(f"/admin/api/reviews/{case['id']}", headers=staff).status_code in (403, 404)
    # and: the order's trace says the rebates wait for a review, with no score, feature, rule or verdict
    answer = client.get(f"/admin/api/trace/orders/{order.id}", headers=staff)
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["risk"] is None
    assert "Risk checks: rebates of this order wait for a review." in body["lines"]
    text = answer.get_data(as_text=True)
    assert body["order"]["risk_score"] is None
    assert not [s for s in ("Risk score", "accounts on this device", "review_high_score") if s in text], text
    # the platform's trace has it all
    full = client.get(f"/admin/api/trace/orders/{order.id}", headers=admin).get_json()
    assert full["risk"]["score"] == db.session.get(Order, order.id).risk_score


def test_merchant_staff_do_not_learn_that_anyone_is_banned(client, shop, pay, make_operator):
    # given: the packet's issuer is banned before the buyer pays at the staff's merchant
    order, people, *_ = shop(browsing=True)
    _, admin = make_operator("admin")
    made = {"subject": "user", "value": str(people["issuer"].id), "reason": "sells accounts"}
    assert client.post("/admin/api/bans", json=made, headers=admin).status_code == 201
    pay(order)
    _, staff = make_operator("merchant_staff", merchant=_merchant_of(order))
    # when
    traces = [
        client.get(f"/admin/api/trace/orders/{order.id}", headers=staff),
        client.get(f"/admin/api/trace/users/{people['issuer'].id}", headers=staff),
    ]
    # then: the issuer's rebate is "not eligible", with no word of a ban
    body = traces[0].get_json()
    issuer = [d for c in body["campaigns"] for d in c["decisions"] if d["role"] == "issuer"]
    assert [(d["reason_code"], d["why"]) for d in issuer] == [("not_eligible", "not eligible for this rebate")]
    for answer in traces:
        assert answer.status_code in (200, 404)
        assert "banned" not in answer.get_data(as_text=True) and "sells accounts" not in answer.get_data(as_text=True)
    # the platform's trace says which ban
    assert "sells accounts" in client.get(f"/admin/api/trace/orders/{order.id}", headers=admin).get_data(as_text=True)
