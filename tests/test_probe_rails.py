"""Probe of the payout rails other than the dispatcher core: cash red packets, coupons, cards, transfer notices."""

from __future__ import annotations

from sqlalchemy import select

from ledger import Leg, account, balance, check_ledger, post_entry
from models import AccountKind, Alert, Notice, Payout, db, utcnow
from payouts import enqueue_payout
from payouts.card_rail import CardEventOutcome, apply_card_event, card_key, outer_str
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings, apply_result
from payouts.transitions import mark_returned, mark_sent
from tests.test_card_codes import fund_card_payout, offered
from tests.test_transfer_notify import waiting  # noqa: F401 - fixture
from tests.test_wechat_callbacks import no_network  # noqa: F401 - fixture

CODE = "110201201245"


def _consume(app, payout: Payout, with_outer: bool = True):
    key = card_key(app.config["SECRET_KEY"])
    fields = {"CardId": "pCARD0001", "UserCardCode": CODE}
    if with_outer:
        fields["OuterStr"] = outer_str(payout.external_no, key)
    settings = DispatchSettings.from_config(app.config)
    return apply_card_event("user_consume_card", fields, utcnow(), settings, key)


def test_a_card_redeemed_after_its_payout_was_cancelled_alerts_an_operator(app, make_user):
    # given: a card offered, then cancelled by an operator (its money back in the balance); WeChat cannot recall
    # the card, and the user_get_card event of its adding was lost
    user = make_user()
    payout = offered(fund_card_payout(user))
    mark_returned(payout, "cancelled", utcnow(), "cancelled by an operator")
    db.session.commit()
    cash = balance(account(AccountKind.USER_CASH, "user", user.id))
    assert cash == 5_00
    # when: the card is redeemed at the counter and WeChat pushes user_consume_card
    outcome, _ = _consume(app, payout)
    db.session.commit()
    # then: the money was paid twice (balance and the redeemed card): an operator is told, nothing else moves
    assert outcome == CardEventOutcome.LATE
    kinds = db.session.execute(select(Alert.kind)).scalars().all()
    assert kinds == ["card_consumed_late"]
    db.session.expire_all()
    again = db.session.get(Payout, payout.id)
    assert again.status == "cancelled" and again.card_consumed_at is not None
    assert balance(account(AccountKind.USER_CASH, "user", user.id)) == cash
    assert check_ledger().ok
    # and: the event repeated raises no second alert
    assert _consume(app, again)[0] == CardEventOutcome.ALREADY
    db.session.commit()
    assert db.session.execute(select(Alert.kind)).scalars().all() == ["card_consumed_late"]


def test_a_card_deleted_whose_add_event_was_lost_is_delivered_not_left_offered(app, make_user):
    # given: a card offered; the user added it (its code recorded from wx.addCard) but user_get_card was lost
    user = make_user()
    payout = offered(fund_card_payout(user, key="d"))
    payout.wechat_ref = CODE
    db.session.commit()
    settlement = balance(account(AccountKind.WECHAT_SETTLEMENT))
    # when: the user deletes it from their card package
    key = card_key(app.config["SECRET_KEY"])
    fields = {"CardId": "pCARD0001", "UserCardCode": CODE}
    outcome, _ = apply_card_event("user_del_card", fields, utcnow(), DispatchSettings.from_config(app.config), key)
    db.session.commit()
    # then: the card reached the package (delivered), not still offered with a button to add it again
    assert outcome == CardEventOutcome.APPLIED
    db.session.expire_all()
    done = db.session.get(Payout, payout.id)
    assert done.status == "succeeded" and done.card_deleted_at is not None
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) - settlement == done.amount_fen
    assert check_ledger().ok


def test_a_packet_the_dispatcher_finds_refunded_is_told_as_unclaimed_not_as_failed(app, make_user):
    # given: a packet from the user's balance whose send answer was lost, queried after WeChat refunded it
    user = make_user(appid=app.config["WECHAT_OA_APPID"])
    cash = account(AccountKind.USER_CASH, "user", user.id)
    post_entry("fund:u", "rebate", [Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -2_00), Leg(cash, 2_00)])
    payout = enqueue_payout(
        number_prefix="", rail="cash_red_packet", user_id=user.id, amount_fen=2_00, source=cash, key="u", memo="u"
    )
    mark_sent(payout, utcnow())
    payout.status = "sending"
    db.session.commit()
    # when
    why = "nobody opened the red packet; WeChat refunded 200 fen after 24 h"
    apply_result(
        payout, RailResult(Outcome.UNCLAIMED, "REFUND", why), utcnow(), DispatchSettings.from_config(app.config)
    )
    db.session.commit()
    # then: the person is told the packet was not opened (as the claim check tells it), not that WeChat failed
    [notice] = db.session.execute(select(Notice).where(Notice.user_id == user.id)).scalars()
    assert notice.facts["reason_code"] == "unclaimed"


def test_a_transfer_wechat_closed_unconfirmed_is_told_as_not_confirmed(app, client, waiting):
    from tests.test_transfer_notify import bill_resource, deliver

    # given: a transfer bill offered to the person, who never confirmed it; WeChat closes it after 24 h (FAIL)
    payout = waiting(5_00)
    # when: WeChat's notification of the closed bill arrives
    response = deliver(client, app, bill_resource(app, payout, "FAIL"))
    # then: the money is back in the balance, and the person is told they did not confirm in time
    assert response.status_code == 204
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).status == "failed"
    assert balance(account(AccountKind.USER_CASH, "user", payout.user_id)) == 5_00
    [notice] = db.session.execute(select(Notice).where(Notice.key == f"payout:{payout.id}:failed")).scalars()
    assert notice.facts["reason_code"] == "not_confirmed"
