"""Probe 17: refunds operators start, the clawbacks they cause, the debts they leave and how those are settled."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from ledger import Leg, account, balance, check_ledger, post_entry
from models import AccountKind, IdempotencyRecord, Order, Rebate, db, utcnow
from rebate import create_order, issue_packet
from rebate.orders import LineRequest
from tests.money_helpers import app_money
from tests.test_probe_refunds import owed, points_order, refund
from tests.test_refund_admin import finance, keyed, paid_order, refund_calls  # noqa: F401 - fixtures
from tests.test_simulator_e2e import app_settings, delivered  # noqa: F401 - fixtures
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture

K = AccountKind


def test_a_later_points_rebate_settles_only_what_its_points_are_worth(app, make_user, make_product, make_campaign, pay):
    # given: a point is worth 1 yuan; the 5 points a rebate gave were spent, then its order refunded whole: the
    # person is 5 points below zero and owes 5 yuan
    app.config["POINT_VALUE_FEN"] = 1_00
    campaign, user, order, _ = points_order(make_user, make_product, make_campaign, pay)
    post_entry(
        "spent", "points spent", [Leg(account(K.USER_POINTS, "user", user.id), -5), Leg(account(K.POINTS_ISSUANCE), 5)]
    )
    db.session.commit()
    refund(order, "P1", order.payable_fen)
    assert (balance(account(K.USER_POINTS, "user", user.id)), owed(user)) == (-5, 5_00)

    # when: their next order earns 1.50 yuan of points: one whole point (the award rounds down)
    packet = issue_packet(campaign, user, source="test", source_ref="p2", now=utcnow())
    db.session.commit()
    second = create_order(user, [LineRequest(make_product(price_fen=30_01).id, 1)], packet.id, utcnow())
    db.session.commit()
    assert pay(second) == "applied"
    later = db.session.execute(select(Rebate).filter_by(order_id=second.id)).scalar_one()
    assert (later.amount_fen, later.points) == (1_50, 1)

    # then: the one point settles one point's worth of the debt (1 yuan), not 1.50: the person is 4 points below
    # zero and owes 4 yuan (before: 3.50 owed, and the ledger check found 4 points below zero unexplained)
    assert (balance(account(K.USER_POINTS, "user", user.id)), owed(user)) == (-4, 4_00)
    report = check_ledger(app_money().point_value_fen)
    assert report.ok, report.violations


# -- the admin refund API --------------------------------------------------------------------------------------------

REFUNDS = "/admin/api/orders/{}/refunds"


def _forget_keys() -> None:
    """The Idempotency-Key's stored answer has expired (``IDEMPOTENCY_TTL_HOURS``): a retry with it runs again."""
    for record in db.session.execute(select(IdempotencyRecord)).scalars():
        record.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()


def test_a_refund_wechat_refused_is_not_sent_again_when_its_key_is_retried_after_the_answer_expired(
    app,
    client,
    paid_order,
    finance,
    refund_calls,
    delivered,  # noqa: F811
):
    # given: WeChat refused the refund outright (nothing was created there): it is failed, its amount refundable again
    headers = {**finance, "Idempotency-Key": "ticket-4711"}
    simulator(app).inject_fault("/v3/refund/domestic/refunds", 403, "USER_ACCOUNT_ABNORMAL")
    first = client.post(REFUNDS.format(paid_order.id), json={"amount_fen": 4_000, "reason": "r"}, headers=headers)
    assert first.json["status"] == "failed"
    # and: the support desk refunded the same amount again under a new key, and WeChat did it
    again = client.post(
        REFUNDS.format(paid_order.id), json={"amount_fen": 4_000, "reason": "r"}, headers=keyed(finance)
    )
    assert again.status_code == 201, again.json
    delivered()
    assert db.session.get(Order, paid_order.id).refunded_fen == 4_000
    calls = len(refund_calls)

    # when: a day later the first ticket's request is sent again with its key (its stored answer gone)
    _forget_keys()
    retried = client.post(REFUNDS.format(paid_order.id), json={"amount_fen": 4_000, "reason": "r"}, headers=headers)
    delivered()

    # then: the refund WeChat refused stays refused and is not asked of WeChat again (it would refund 40 yuan a
    # second time, which the books, holding that refund failed, would never apply: flagged, the money gone)
    assert len(refund_calls) == calls
    assert retried.json["status"] == "failed"
    assert retried.json["id"] == first.json["id"]
    assert sorted(r["refund_fen"] for r in simulator(app).refunds.values()) == [4_000]
    db.session.rollback()
    order = db.session.get(Order, paid_order.id)
    assert (order.refunded_fen, order.review_reason) == (4_000, None)


def test_a_points_rebate_that_pays_a_points_debt_tells_only_the_points_left(
    app, make_user, make_product, make_campaign, pay
):
    from models import Notice
    from notices import NoticeEvent

    # given: a point is worth 1 yuan; the person spent the 5 points a rebate gave, then its order was refunded
    # whole: they owe 5 points' worth
    app.config["POINT_VALUE_FEN"] = 1_00
    campaign, user, order, _ = points_order(make_user, make_product, make_campaign, pay)
    post_entry(
        "spent", "points spent", [Leg(account(K.USER_POINTS, "user", user.id), -5), Leg(account(K.POINTS_ISSUANCE), 5)]
    )
    db.session.commit()
    refund(order, "P1", order.payable_fen)

    def landed(order) -> list[dict]:
        rebate = db.session.execute(select(Rebate).filter_by(order_id=order.id)).scalar_one()
        notices = db.session.execute(select(Notice).where(Notice.event == NoticeEvent.REBATE_LANDED)).scalars()
        return [n.facts for n in notices if n.facts.get("rebate_id") == rebate.id]

    def next_order(ref: str, price_fen: int):
        packet = issue_packet(campaign, user, source="test", source_ref=ref, now=utcnow())
        db.session.commit()
        later = create_order(user, [LineRequest(make_product(price_fen=price_fen).id, 1)], packet.id, utcnow())
        db.session.commit()
        assert pay(later) == "applied"
        return later

    # when: the next order earns 4 points (4 yuan), all of them going to the debt
    second = next_order("p2", 80_01)
    # then: nothing is told as arrived (it had said "4 points arrived" with the wallet still below zero)
    assert (balance(account(K.USER_POINTS, "user", user.id)), owed(user)) == (-1, 1_00)
    assert landed(second) == []
    # when: the one after earns 6 points, one of them going to the rest of the debt
    third = next_order("p3", 120_01)
    # then: the 5 points left are told, worth 5 yuan
    assert (balance(account(K.USER_POINTS, "user", user.id)), owed(user)) == (5, 0)
    [told] = landed(third)
    assert (told["points"], told["amount_fen"], told["form"]) == (5, 5_00, "points")
