"""Receivables the balance has covered since are settled, with their budgets (``rebate.covered_debts``).

A refund claws back a rebate the person had already spent: their balance goes below zero and the rest is a
receivable, its campaign's budget still committed by it. Then money comes back to the balance another way than a
rebate: the refund of the order the balance paid for, the close of an unpaid order that held it, a payout
returned. The wallet must stop showing a debt the balance has paid, and the budget gets it back."""

from __future__ import annotations

from sqlalchemy import select

from jobs.payouts import settle_covered_debts
from ledger import Leg, account, balance, check_ledger, post_entry
from models import AccountKind, Receivable, db, utcnow
from rebate import close_order
from rebate.covered_debts import settle_covered
from tests.test_refunds import budget, refund, story  # noqa: F401 - fixture
from tests.test_wallet import buy

K = AccountKind


def owed(user) -> list[int]:
    rows = db.session.execute(
        select(Receivable.outstanding_fen).where(Receivable.beneficiary_id == user.id).order_by(Receivable.id)
    )
    return list(rows.scalars())


def cash(user) -> int:
    return balance(account(K.USER_CASH, "user", user.id))


def spent_then_clawed_back(story, make_product, pay, *, close=False):
    """5 yuan earned to the balance on order 1 and spent on order 2 (paid, or only held when ``close``); then
    order 1 is refunded whole: the balance is 5 yuan below zero and 5 yuan is owed on the campaign."""
    campaign, user, _, first = story()
    second = buy(user, make_product(price_fen=20_00), balance_fen=5_00)
    if not close:
        assert pay(second) == "applied"
    refund(first, "R-FIRST", first.paid_fen)
    assert (cash(user), owed(user)) == (-5_00, [5_00])
    assert budget(campaign) == (0, 5_00)  # the 5 still owed (the packet's 10 came back with the whole refund)
    return campaign, user, second


def test_a_refund_giving_the_balance_back_settles_what_it_covers(story, make_product, pay, client):
    campaign, user, second = spent_then_clawed_back(story, make_product, pay)

    refund(second, "R-SECOND", second.paid_fen)  # gives back the 5 yuan of balance the order used

    assert (cash(user), owed(user)) == (0, [0])
    assert budget(campaign) == (0, 0)  # the funder has its 5 yuan back: so has the budget
    assert check_ledger().ok


def test_closing_an_order_that_held_the_balance_settles_what_it_covers(story, make_product, pay):
    campaign, user, second = spent_then_clawed_back(story, make_product, pay, close=True)

    close_order(second, utcnow())
    db.session.commit()

    assert (cash(user), owed(user)) == (0, [0])
    assert budget(campaign) == (0, 0)
    assert check_ledger().ok


def test_the_job_settles_what_a_payout_back_in_the_balance_covers_and_no_more(story, make_product, pay):
    campaign, user, _ = spent_then_clawed_back(story, make_product, pay)
    # given: 3 yuan back in the balance from outside the rebate layer (as a returned payout or an unopened red
    # packet books it), then 4 more
    post_entry(
        "test:returned:1",
        "a payout back in the balance",
        [Leg(account(K.WECHAT_SETTLEMENT), -3_00), Leg(account(K.USER_CASH, "user", user.id), 3_00)],
    )
    db.session.commit()

    assert settle_covered_debts() == {"people": 1, "settled_fen": 3_00}
    assert (cash(user), owed(user), budget(campaign)) == (-2_00, [2_00], (0, 2_00))
    assert settle_covered_debts() == {}  # nothing more is covered
    post_entry(
        "test:returned:2",
        "another payout back in the balance",
        [Leg(account(K.WECHAT_SETTLEMENT), -4_00), Leg(account(K.USER_CASH, "user", user.id), 4_00)],
    )
    db.session.commit()
    assert settle_covered_debts() == {"people": 1, "settled_fen": 2_00}
    assert (cash(user), owed(user), budget(campaign)) == (2_00, [0], (0, 0))
    assert check_ledger().ok


def test_points_owed_are_settled_at_a_points_value(app, make_user, make_campaign):
    # given: 3 yuan owed in points on a campaign, and the person 20 points below zero at 10 fen a point
    campaign = make_campaign({"roles": [{"role": "consumer", "rate_bps": 500, "form": "points", "cap_fen": 9_00}]})
    campaign.budget_committed_fen = 3_00
    user = make_user()
    db.session.add(
        Receivable(
            beneficiary_type="user",
            beneficiary_id=user.id,
            kind="points",
            campaign_id=campaign.id,
            outstanding_fen=3_00,
        )
    )
    post_entry(
        "test:points-below",
        "points clawed back below zero",
        [Leg(account(K.USER_POINTS, "user", user.id), -20), Leg(account(K.POINTS_ISSUANCE), 20)],
    )
    db.session.commit()

    assert settle_covered(user.id, None) == 0  # without a point's value, points are left to the job
    assert settle_covered(user.id, 10) == 1_00  # 20 points below zero cover 2 yuan of the 3 owed: 1 yuan settled
    db.session.commit()
    assert owed(user) == [2_00]
    db.session.refresh(campaign)
    assert campaign.budget_committed_fen == 2_00
