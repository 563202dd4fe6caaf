"""Probe 17: WeChat Pay coupons and card-package coupons as payout rails."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from ledger import account, balance, check_ledger
from models import AccountKind, Alert, Payout, db, utcnow
from payouts.card_rail import CardEventOutcome, CardPayoutBusy, apply_card_event, card_key, outer_str
from payouts.operations import PayoutError, resolve
from payouts.record import DispatchSettings
from tests.test_card_codes import fund_card_payout, offered

CODE = "110201201245"


def _event(app, event: str, payout: Payout):
    key = card_key(app.config["SECRET_KEY"])
    fields = {"CardId": "pCARD0001", "UserCardCode": CODE, "OuterStr": outer_str(payout.external_no, key)}
    return apply_card_event(event, fields, utcnow(), DispatchSettings.from_config(app.config), key)


@pytest.mark.parametrize("event", ["user_consume_card", "user_del_card"])
@pytest.mark.parametrize("status", ["needs_operator", "unknown"])
def test_a_card_redeemed_or_deleted_while_its_payout_awaits_an_operator_is_delivered(app, make_user, event, status):
    # given: a card offered (its cardExt handed to the person), then set aside for an operator (its answers could not
    # be recorded), and the user_get_card event of its adding lost
    user = make_user()
    payout = offered(fund_card_payout(user, key="n"))
    payout.status = status
    db.session.commit()
    settlement = balance(account(AccountKind.WECHAT_SETTLEMENT))
    # when: the card is redeemed at the counter (or deleted from the package) and WeChat pushes the event
    outcome, _ = _event(app, event, payout)
    db.session.commit()
    # then: the card reached the package: the payout is delivered (as user_get_card would have decided it), not left
    # for an operator who, seeing nothing, would send its money back to the person's balance (given twice)
    assert outcome == CardEventOutcome.APPLIED
    db.session.expire_all()
    done = db.session.get(Payout, payout.id)
    assert done.status == "succeeded" and done.wechat_ref == CODE
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) - settlement == done.amount_fen
    assert check_ledger().ok
    # and: no operator can resolve it as failed any more; the event repeated moves nothing
    with pytest.raises(PayoutError):
        resolve(done, False, utcnow(), "nothing seen")
    db.session.rollback()
    assert _event(app, event, done)[0] == CardEventOutcome.ALREADY
    db.session.commit()
    assert db.session.get(Payout, payout.id).status == "succeeded"
    assert db.session.execute(select(Alert.kind)).scalars().all() == []


def test_a_card_redeemed_while_a_dispatcher_holds_its_payout_is_applied_later_not_half_recorded(app, make_user):
    # given: a card offered, being rechecked by a dispatcher (sending), its user_get_card lost
    user = make_user()
    payout = offered(fund_card_payout(user, key="s"))
    payout.status = "sending"
    db.session.commit()
    # when: its user_consume_card arrives meanwhile
    # then: it is applied again later (as user_get_card would be), not recorded as redeemed on a payout left offered
    with pytest.raises(CardPayoutBusy):
        _event(app, "user_consume_card", payout)
    db.session.rollback()
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).card_consumed_at is None


@pytest.mark.parametrize("status", ["needs_operator", "unknown"])
def test_a_card_redeemed_at_the_counter_while_its_payout_awaits_an_operator_is_delivered(app, make_user, status):
    from payouts.operations import settle_redeemed_card

    user = make_user()
    payout = offered(fund_card_payout(user, key="c"))
    payout.status = status
    payout.wechat_ref = CODE  # the code recorded when the card was offered
    db.session.commit()
    settled = settle_redeemed_card(CODE, utcnow())
    db.session.commit()
    assert settled is not None and settled.id == payout.id
    db.session.expire_all()
    done = db.session.get(Payout, payout.id)
    assert done.status == "succeeded" and done.card_consumed_at is not None
    assert check_ledger().ok
    with pytest.raises(PayoutError):  # no operator sends its money back to the balance any more
        resolve(done, False, utcnow(), "nothing seen")
    db.session.rollback()
