"""Probe 21, WeChat's 180-day unfreeze of an order's unshared money (service-provider mode).

WeChat gives a profit-sharing order's money still frozen to its merchant ``FROZEN_FOR`` after the payment (its
``paid_at``, WeChat's success_time). Our books must follow: the rest leaves ``merchant_frozen_sales`` as an unfreeze
does (``order:<id>:released``), once, and the payouts that were waiting to leave by the share go to an operator. A
share WeChat may hold (sent, or PROCESSING there) is asked about first, never booked blindly; nothing happens before
the deadline.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from jobs.profit_sharing import query_profit_shares, share_due_orders
from models import AccountKind, Alert, LedgerEntry, LedgerPosting, Order, RailControl, User, UserStatus, db, utcnow
from models.payouts import Rail
from payouts.profit_share import FROZEN_FOR
from tests.test_profit_sharing import (  # noqa: F401 - fixtures (sim, story)
    bal,
    hold_passes,
    ledger_holds,
    payouts_of,
    results_are_due,
    share_of,
    sim,
    story,
)

LAPSED = "profit_share_frozen_lapsed"


@pytest.fixture
def app_settings(app_settings):
    return {**app_settings, "FUND_FLOW": "service_provider"}


def entries() -> list[str]:
    db.session.expire_all()
    return sorted(db.session.execute(select(LedgerEntry.idempotency_key)).scalars())


def unbalanced_entries() -> list[int]:
    """Entries whose postings do not sum to zero (none, ever)."""
    return list(
        db.session.execute(
            select(LedgerPosting.entry_id).group_by(LedgerPosting.entry_id).having(func.sum(LedgerPosting.amount) != 0)
        ).scalars()
    )


def alerts(kind: str) -> list[str]:
    db.session.expire_all()
    return sorted(db.session.execute(select(Alert.subject).where(Alert.kind == kind)).scalars())


def waiting_for_a_ban(story):
    """A paid profit-sharing order whose share waits, unplanned, for a banned person it pays (nothing sent)."""
    order, buyer, issuer, shop = story()
    db.session.get(User, buyer.id).status = UserStatus.BANNED
    db.session.commit()
    share_due_orders()
    hold_passes(order.id)
    share_due_orders()
    assert share_of(order.id).kind is None and not share_of(order.id).posted
    return order, buyer, issuer, shop


def paid_ago(order_id: int, ago: timedelta) -> None:
    """WeChat's payment time of the order (``paid_at``) moved back; the share is due to be looked at again."""
    db.session.get(Order, order_id).paid_at = utcnow() - ago
    db.session.commit()  # (share_of expires the session)
    row = share_of(order_id)
    row.next_attempt_at = utcnow() - timedelta(seconds=1)
    db.session.commit()


def wechat_unfroze(sim, transaction_id: str) -> None:
    sim.frozen[transaction_id]["unsplit_fen"] = 0


def assert_released_once(order, shop) -> None:
    keys = entries()
    assert keys.count(f"order:{order.id}:released") == 1
    assert unbalanced_entries() == []
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop.id) == 0
    assert db.session.get(Order, order.id).frozen_fen == 0
    ledger_holds()


# -- 1. after the deadline our books follow WeChat, once --------------------------------------------------------------


def test_after_180_days_the_frozen_rest_is_released_and_the_waiting_payouts_go_to_an_operator_once(app, story, sim):
    # given: a share waiting for a banned person since the refund window closed; 181 days after WeChat's payment
    # time, WeChat has unfrozen the order's money to the merchant by itself
    order, buyer, issuer, shop = waiting_for_a_ban(story)
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop.id) == -90_00
    paid_ago(order.id, FROZEN_FOR + timedelta(days=1))
    wechat_unfroze(sim, order.transaction_id)
    # when: the job runs
    share_due_orders()
    # then: the rest left the frozen money as an unfreeze's does, in one balanced entry of its own key
    assert_released_once(order, shop)
    row = share_of(order.id)
    assert row.status == "finished" and row.kind == "unfreeze" and row.shared_fen == 0
    assert "180 days" in (row.last_error or "")
    assert not sim.ps_orders  # nothing was sent to WeChat
    # the payouts that were to leave by the share cannot any more: an operator decides, told once each
    payouts = payouts_of(order.id)
    assert {p.status for p in payouts.values()} == {"needs_operator"}
    assert alerts(LAPSED) == sorted([*(p.external_no for p in payouts.values()), row.out_order_no])
    before = entries()
    # when: the job runs again, and again
    for _ in range(2):
        paid_ago(order.id, FROZEN_FOR + timedelta(days=1))
        share_due_orders()
        query_profit_shares()
    # then: nothing more is booked nor alerted
    assert entries() == before
    assert len(alerts(LAPSED)) == 3
    assert_released_once(order, shop)


def test_a_refund_after_the_release_is_the_merchants_own_money_not_the_frozen(app, story, sim):
    from rebate import apply_refund, begin_refund
    from tests.money_helpers import app_money

    order, buyer, issuer, shop = waiting_for_a_ban(story)
    paid_ago(order.id, FROZEN_FOR + timedelta(days=1))
    share_due_orders()
    # when: the buyer is refunded 40 yuan afterwards (WeChat pays it from the merchant's released money)
    refund = begin_refund(db.session.get(Order, order.id), "R-after-lapse", 40_00)
    apply_refund(order.out_trade_no, refund.out_refund_no, 40_00, utcnow(), money=app_money())
    db.session.commit()
    # then: nothing of it comes out of the frozen money in our books
    assert_released_once(order, shop)
    assert unbalanced_entries() == []


def test_the_release_is_booked_even_while_the_rail_is_switched_off(app, story, sim):
    # given: an operator switched the rail off; the order's share never went, and 180 days have passed
    order, buyer, issuer, shop = waiting_for_a_ban(story)
    db.session.add(RailControl(rail=Rail.PROFIT_SHARING, enabled=False, reason="dispute"))
    paid_ago(order.id, FROZEN_FOR + timedelta(hours=1))
    # when: the job runs
    assert share_due_orders()["rail_off"] == 1
    # then: WeChat released it regardless: so do our books
    assert_released_once(order, shop)
    assert {p.status for p in payouts_of(order.id).values()} == {"needs_operator"}


def test_two_runners_at_once_release_once(app, story, sim):
    from tests.concurrency import together

    order, buyer, issuer, shop = waiting_for_a_ban(story)
    paid_ago(order.id, FROZEN_FOR + timedelta(days=2))
    results = together(2, lambda _: share_due_orders(), app=app)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert_released_once(order, shop)
    assert len(alerts(LAPSED)) == 3
    assert {p.status for p in payouts_of(order.id).values()} == {"needs_operator"}


# -- 2. never before the deadline, by WeChat's payment time; a share WeChat may hold is asked about -------------------


def test_nothing_is_released_before_the_deadline_even_when_our_rows_are_older(app, story, sim):
    # given: WeChat's payment time 180 days less a minute ago; our own rows say far older
    order, buyer, issuer, shop = waiting_for_a_ban(story)
    row = share_of(order.id)
    row.created_at = row.due_at = utcnow() - timedelta(days=400)
    paid_ago(order.id, FROZEN_FOR - timedelta(minutes=1))
    # when: the job runs
    share_due_orders()
    # then: nothing is released: the money is still frozen at WeChat and the share still waits
    assert f"order:{order.id}:released" not in entries()
    assert share_of(order.id).status == "pending" and share_of(order.id).kind is None
    assert {p.status for p in payouts_of(order.id).values()} == {"pending"}
    assert alerts(LAPSED) == []


def test_wechats_payment_time_decides_not_when_our_row_was_made(app, story, sim):
    # given: our share row is new (made today), but WeChat's payment time is 181 days ago
    order, buyer, issuer, shop = waiting_for_a_ban(story)
    row = share_of(order.id)
    row.created_at = row.due_at = utcnow() - timedelta(hours=1)
    paid_ago(order.id, FROZEN_FOR + timedelta(days=1))
    share_due_orders()
    assert_released_once(order, shop)


def test_a_share_processing_at_wechat_at_the_deadline_is_queried_not_booked_blindly(app, story, sim):
    # given: the share was sent and WeChat is still working on it (PROCESSING) when the deadline passes
    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    share_due_orders()
    assert share_of(order.id).status == "processing"
    paid_ago(order.id, FROZEN_FOR + timedelta(days=1))
    row = share_of(order.id)
    row.next_attempt_at = utcnow() + timedelta(minutes=5)  # its answer not yet due
    db.session.commit()
    # when: the share job runs
    share_due_orders()
    # then: nothing is booked blindly
    assert f"order:{order.id}:released" not in entries()
    assert share_of(order.id).status == "processing"
    # when: the answer is asked for
    results_are_due(order.id)
    query_profit_shares()
    # then: WeChat's answer decides: both persons were paid from the frozen money and only the rest released
    assert {p.status for p in payouts_of(order.id).values()} == {"succeeded"}
    assert share_of(order.id).status == "finished" and share_of(order.id).shared_fen == 13_50
    assert alerts(LAPSED) == []
    assert_released_once(order, shop)


def test_a_share_whose_answer_was_lost_is_queried_after_the_deadline_and_never_sent_again(app, story, sim, monkeypatch):
    from wechat.profitsharing import ProfitSharingClient

    # given: the share's POST failed with no answer (WeChat never got it), and then the deadline passed:
    # WeChat unfroze the order's money to the merchant
    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    sim.inject_fault("/v3/profitsharing/orders", 500, "SYSTEM_ERROR", "系统错误", times=1)
    share_due_orders()
    assert share_of(order.id).posted and share_of(order.id).status == "pending"
    paid_ago(order.id, FROZEN_FOR + timedelta(days=1))
    wechat_unfroze(sim, order.transaction_id)
    calls: list[str] = []
    for name in ("post_order", "query_order", "add_receiver"):
        real = getattr(ProfitSharingClient, name)
        monkeypatch.setattr(
            ProfitSharingClient,
            name,
            lambda self, *a, _real=real, _name=name, **k: calls.append(_name) or _real(self, *a, **k),
        )
    # when: the jobs run
    share_due_orders()
    query_profit_shares()
    # then: WeChat was asked, said it never saw the share, and it was not sent again: the rest is booked released
    assert calls == ["query_order"] and not sim.ps_orders
    assert_released_once(order, shop)
    row = share_of(order.id)
    assert row.status == "finished" and row.shared_fen == 0
    payouts = payouts_of(order.id)
    assert {p.status for p in payouts.values()} == {"needs_operator"}
    assert {p.external_no for p in payouts.values()} <= set(alerts(LAPSED))
    # never handed to WeChat (as a refund's clawback reads them: not in flight there)
    assert [p.request for p in payouts.values()] == [None, None]
    assert not row.last_error.startswith("None")
    before = entries()
    results_are_due(order.id)
    query_profit_shares()
    share_due_orders()
    assert entries() == before and not sim.ps_orders and calls == ["query_order"]


def test_a_refund_still_open_at_the_deadline_is_decided_before_the_release(app, story, sim):
    """Found by a reviewer: the release took the whole frozen money while a refund was in flight; its success then
    posted nothing (the money released), overstating the merchant's claim by the refund."""
    from rebate import begin_refund

    order, buyer, issuer, shop = waiting_for_a_ban(story)
    begin_refund(db.session.get(Order, order.id), "R-open-at-lapse", 40_00)
    db.session.commit()
    paid_ago(order.id, FROZEN_FOR + timedelta(days=1))
    share_due_orders()
    assert share_of(order.id).status != "finished" and alerts(LAPSED) == []
    assert f"order:{order.id}:released" not in entries()
