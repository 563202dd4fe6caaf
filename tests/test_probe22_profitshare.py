"""Probe 22, profit sharing around WeChat's 180-day unfreeze (service-provider mode).

1. Every share not finished a week before WeChat unfreezes its order's money to the merchant warns an operator once
   (not only one held by a ban): one waiting for a rail switched off, one handed to an operator, one queued behind a
   refund, one PROCESSING at WeChat.
2. A query is not a new share: shares WeChat holds are still asked about while the rail is switched off (so the books
   follow WeChat at the deadline), and nothing is sent then.
3. The books and WeChat agree around the deadline: no share is sent once the deadline is near or past (even one
   claimed before it), a refund still open is decided before a lapsed share's release, a share answered after the
   deadline is booked as WeChat answered, and two runners release once.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from jobs.profit_sharing import query_profit_shares, share_due_orders
from models import Alert, Order, RailControl, db, utcnow
from models.payouts import Rail
from payouts.profit_share import FROZEN_FOR, FROZEN_WARNING
from tests.test_probe21_profit_share import (
    assert_released_once,
    entries,
    paid_ago,
    unbalanced_entries,
    waiting_for_a_ban,
    wechat_unfroze,
)
from tests.test_profit_sharing import (  # noqa: F401 - fixtures (sim, story)
    hold_passes,
    ledger_holds,
    payouts_of,
    results_are_due,
    share_of,
    sim,
    story,
)

DEADLINE = "profit_share_frozen_deadline"
LAPSED = "profit_share_frozen_lapsed"
NEAR = FROZEN_FOR - FROZEN_WARNING + timedelta(days=1)  # paid this long ago: the deadline is 6 days away


@pytest.fixture
def app_settings(app_settings):
    return {**app_settings, "FUND_FLOW": "service_provider"}


def deadline_alerts() -> list[tuple[str, str]]:
    db.session.expire_all()
    return list(db.session.execute(select(Alert.subject, Alert.message).where(Alert.kind == DEADLINE)).tuples())


def rail_off() -> None:
    db.session.add(RailControl(rail=Rail.PROFIT_SHARING, enabled=False, reason="dispute"))
    db.session.commit()


def rail_on() -> None:
    db.session.get(RailControl, Rail.PROFIT_SHARING).enabled = True
    db.session.commit()


def sent(order) -> None:
    """The order's share was sent and WeChat is working on it (PROCESSING)."""
    share_due_orders()
    hold_passes(order.id)
    share_due_orders()
    assert share_of(order.id).status == "processing"


def answer_not_due(order_id: int) -> None:
    row = share_of(order_id)
    row.next_attempt_at = utcnow() + timedelta(minutes=30)
    db.session.commit()


def assert_warned_once(order, *words: str) -> str:
    number = share_of(order.id).out_order_no
    found = deadline_alerts()
    assert [s for s, _ in found] == [number], found
    message = found[0][1]
    assert str(order.id) in message and "180 days" in message and "Beijing time" in message, message
    for word in words:
        assert word in message, message
    return message


def twice(job) -> None:
    """The job comes round again, and again (the share looked at each time)."""
    for _ in range(2):
        job()


# -- 1. every share not finished a week before the deadline warns an operator once -----------------------------------


def test_a_share_waiting_for_a_rail_switched_off_is_warned_a_week_before_the_deadline(app, story, sim):
    # given: the share's refund window closed, but an operator switched the rail off; the order was paid 174 days ago
    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    rail_off()
    paid_ago(order.id, NEAR)
    # when: the jobs run, again and again
    twice(share_due_orders)
    twice(query_profit_shares)
    # then: an operator is warned once, naming the order, the deadline and why it waits
    assert_warned_once(order, "switched off", "2 payout(s)")
    assert share_of(order.id).status == "pending" and not sim.ps_orders


def test_a_share_processing_at_wechat_a_week_before_the_deadline_is_warned(app, story, sim):
    order, buyer, issuer, shop = story()
    sent(order)
    paid_ago(order.id, NEAR)
    answer_not_due(order.id)
    twice(share_due_orders)
    assert_warned_once(order, "PROCESSING")


def test_a_share_waiting_for_an_operator_a_week_before_the_deadline_is_warned(app, story, sim):
    # given: WeChat refused the share outright: it waits for an operator
    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    sim.inject_fault("/v3/profitsharing/orders", 400, "INVALID_REQUEST", "参数错误", times=1)
    share_due_orders()
    assert share_of(order.id).status == "needs_operator"
    paid_ago(order.id, NEAR)
    twice(share_due_orders)
    assert_warned_once(order, "operator")


def test_a_share_queued_behind_a_refund_a_week_before_the_deadline_is_warned(app, story, sim):
    from rebate import begin_refund

    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    begin_refund(db.session.get(Order, order.id), "R-near-deadline", 40_00)
    db.session.commit()
    paid_ago(order.id, NEAR)
    twice(share_due_orders)
    assert_warned_once(order, "refund")


def test_a_share_waiting_for_a_ban_is_warned_once_with_what_to_do_even_with_the_rail_off(app, story, sim):
    order, buyer, issuer, shop = waiting_for_a_ban(story)
    rail_off()
    paid_ago(order.id, NEAR)
    twice(share_due_orders)
    rail_on()
    paid_ago(order.id, NEAR)
    twice(share_due_orders)
    assert_warned_once(order, "banned", "lift the ban", "cancel")


def test_no_warning_far_from_the_deadline_nor_for_a_finished_share(app, story, sim):
    # given: one share waiting for the rail, paid 100 days ago; one finished long ago, paid 179 days ago
    waiting, *_ = story()
    done, *_ = story()
    sent(done)
    results_are_due(done.id)
    query_profit_shares()
    assert share_of(done.id).status == "finished"
    share_due_orders()
    hold_passes(waiting.id)
    rail_off()
    paid_ago(waiting.id, timedelta(days=100))
    paid_ago(done.id, FROZEN_FOR - timedelta(days=1))
    twice(share_due_orders)
    assert deadline_alerts() == []


def test_two_runners_warn_once(app, story, sim):
    from tests.concurrency import together

    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    rail_off()
    paid_ago(order.id, NEAR)
    results = together(3, lambda _: share_due_orders(), app=app)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert_warned_once(order)


# -- 2. a query is not a new share: asked about with the rail off ---------------------------------------------------


def test_a_share_processing_at_the_deadline_is_queried_while_the_rail_is_switched_off(app, story, sim):
    # given: the share was sent and WeChat is still working on it; an operator switches the rail off; the deadline
    # passes (WeChat finishes the share and unfreezes the rest)
    order, buyer, issuer, shop = story()
    sent(order)
    rail_off()
    paid_ago(order.id, FROZEN_FOR + timedelta(days=1))
    results_are_due(order.id)
    shares_at_wechat = len(sim.ps_orders)
    # when: the query job runs
    query_profit_shares()
    # then: WeChat was asked (a query sends nothing): both persons were paid, only the rest released, once
    assert {p.status for p in payouts_of(order.id).values()} == {"succeeded"}
    row = share_of(order.id)
    assert row.status == "finished" and row.shared_fen == 13_50
    assert len(sim.ps_orders) == shares_at_wechat
    assert_released_once(order, shop)
    before = entries()
    twice(query_profit_shares)
    twice(share_due_orders)
    assert entries() == before


def test_with_the_rail_off_a_share_whose_answer_was_lost_is_asked_about_but_never_sent(app, story, sim, monkeypatch):
    from wechat.profitsharing import ProfitSharingClient

    # given: the share's POST failed with no answer (WeChat never got it); then the rail is switched off
    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    sim.inject_fault("/v3/profitsharing/orders", 500, "SYSTEM_ERROR", "系统错误", times=1)
    share_due_orders()
    assert share_of(order.id).posted and share_of(order.id).status == "pending"
    rail_off()
    calls: list[str] = []
    for name in ("post_order", "query_order", "add_receiver"):
        real = getattr(ProfitSharingClient, name)
        monkeypatch.setattr(
            ProfitSharingClient,
            name,
            lambda self, *a, _real=real, _name=name, **k: calls.append(_name) or _real(self, *a, **k),
        )
    attempts = share_of(order.id).attempts
    # when: the query job runs, many times, the answer due each time
    for _ in range(10):
        results_are_due(order.id)
        query_profit_shares()
    # then: WeChat was asked only; nothing sent; the share still waits for the rail (not an operator's)
    assert set(calls) == {"query_order"} and not sim.ps_orders
    row = share_of(order.id)
    assert row.status == "pending" and row.attempts == attempts
    assert {p.status for p in payouts_of(order.id).values()} <= {"sending", "unknown"}
    # when: the deadline passes, the rail still off (WeChat unfroze the money)
    paid_ago(order.id, FROZEN_FOR + timedelta(days=1))
    wechat_unfroze(sim, order.transaction_id)
    query_profit_shares()
    share_due_orders()
    # then: WeChat never saw it: released once in our books, its payouts to an operator, never sent
    assert not sim.ps_orders and "post_order" not in calls
    assert share_of(order.id).status == "finished"
    assert {p.status for p in payouts_of(order.id).values()} == {"needs_operator"}
    assert_released_once(order, shop)


def test_with_the_rail_off_a_share_waiting_for_an_operator_is_asked_about_and_stays_the_operators(app, story, sim):
    # given: the share was sent, its answers lost until it went to an operator; then the rail is switched off
    order, buyer, issuer, shop = story()
    sent(order)
    row = share_of(order.id)
    row.status, row.next_attempt_at = "needs_operator", utcnow() - timedelta(seconds=1)
    db.session.commit()
    rail_off()
    paid_ago(order.id, FROZEN_FOR + timedelta(days=1))
    results_are_due(order.id)
    # when: the query job runs
    query_profit_shares()
    # then: WeChat's answer decides
    assert share_of(order.id).status == "finished"
    assert {p.status for p in payouts_of(order.id).values()} == {"succeeded"}
    assert_released_once(order, shop)


# -- 3. the books and WeChat agree around the deadline ----------------------------------------------------------------


def test_a_share_claimed_before_the_deadline_is_not_sent_after_it(app, story, sim):
    from jobs.profit_sharing import _context
    from payouts import profit_share

    # given: the share is claimed (planned, its body fixed) two hours before the deadline, but the call is made after
    # it (a slow runner)
    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    paid_ago(order.id, FROZEN_FOR + timedelta(minutes=1))
    row = share_of(order.id)
    row.due_at = row.next_attempt_at = utcnow() - timedelta(hours=3)
    db.session.commit()
    settings, client = _context()
    profit_share.store_ratio(shop.sub_mchid, 3000, utcnow() - timedelta(hours=2))
    (job,) = profit_share.claim(utcnow() - timedelta(hours=2), settings, client, querying=False)
    db.session.commit()
    wechat_unfroze(sim, order.transaction_id)
    # when: the call is made now, and recorded
    result = profit_share.call(job, client)
    profit_share.record(job, result, utcnow(), settings)
    db.session.commit()
    # then: nothing was sent; the books follow WeChat's unfreeze, once
    assert "send" not in result.calls and not sim.ps_orders
    assert share_of(order.id).status == "finished"
    assert {p.status for p in payouts_of(order.id).values()} == {"needs_operator"}
    assert_released_once(order, shop)


def test_no_share_is_sent_in_the_last_hour_before_the_deadline_nor_released_before_it(app, story, sim):
    # given: a share whose refund window has closed; WeChat unfreezes its order's money in 30 minutes
    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    paid_ago(order.id, FROZEN_FOR - timedelta(minutes=30))
    # when: the jobs run
    twice(share_due_orders)
    query_profit_shares()
    # then: nothing is sent (WeChat may answer it after its unfreeze), and nothing is released yet
    assert not sim.ps_orders
    assert f"order:{order.id}:released" not in entries()
    assert share_of(order.id).status == "pending"
    # when: the deadline has passed
    paid_ago(order.id, FROZEN_FOR + timedelta(minutes=1))
    wechat_unfroze(sim, order.transaction_id)
    share_due_orders()
    query_profit_shares()
    # then: released once, never sent
    assert not sim.ps_orders
    assert share_of(order.id).status == "finished"
    assert {p.status for p in payouts_of(order.id).values()} == {"needs_operator"}
    assert_released_once(order, shop)


def test_a_refund_open_when_a_lost_share_is_found_lapsed_is_decided_before_the_release(app, story, sim):
    """The lapsed share's release took the whole frozen money while a refund was in flight (as release_lapsed did
    before the twenty-first round): its success then took nothing from the frozen money, overstating the merchant's
    claim by the refund."""
    from rebate import apply_refund, begin_refund
    from tests.money_helpers import app_money

    # given: the share's POST was lost (WeChat never got it); a refund of 40 yuan is begun; the deadline passes
    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    sim.inject_fault("/v3/profitsharing/orders", 500, "SYSTEM_ERROR", "系统错误", times=1)
    share_due_orders()
    refund = begin_refund(db.session.get(Order, order.id), "R-open-lost-share", 40_00)
    db.session.commit()
    refund_id, out_refund_no = refund.id, refund.out_refund_no
    paid_ago(order.id, FROZEN_FOR + timedelta(days=1))
    # when: the share is asked about (WeChat never saw it)
    query_profit_shares()
    share_due_orders()
    # then: nothing is released while the refund is open
    assert f"order:{order.id}:released" not in entries()
    assert share_of(order.id).status != "finished"
    # when: the refund succeeds, then the share is asked about again
    apply_refund(order.out_trade_no, out_refund_no, 40_00, utcnow(), money=app_money())
    db.session.commit()
    results_are_due(order.id)
    query_profit_shares()
    share_due_orders()
    # then: the refund came out of the frozen money, the rest released once
    assert share_of(order.id).status == "finished"
    assert f"refund:{refund_id}" in entries()
    assert_released_once(order, shop)
    assert unbalanced_entries() == []


def test_a_share_answered_after_the_deadline_is_booked_as_wechat_answered_and_never_released_blindly(app, story, sim):
    # given: the share was sent; its answer (PROCESSING) is awaited when the deadline passes
    order, buyer, issuer, shop = story()
    sent(order)
    paid_ago(order.id, FROZEN_FOR + timedelta(days=3))
    answer_not_due(order.id)
    # when: the share job (the release) runs before the answer
    share_due_orders()
    assert f"order:{order.id}:released" not in entries() and share_of(order.id).status == "processing"
    # when: WeChat answers later: one person's share CLOSED
    from tests.test_profit_sharing import openid_of

    sim.close_share_to(openid_of(buyer.id, app.config["WECHAT_APPID"]))
    results_are_due(order.id)
    query_profit_shares()
    # then: the issuer paid, the buyer's returned, the rest released once; no lapsed alert
    payouts = payouts_of(order.id)
    assert (payouts[issuer.id].status, payouts[buyer.id].status) == ("succeeded", "failed")
    assert share_of(order.id).status == "finished"
    db.session.expire_all()
    assert not list(db.session.execute(select(Alert.subject).where(Alert.kind == LAPSED)).scalars())
    ledger_holds()
    assert entries().count(f"order:{order.id}:released") == 1
    assert unbalanced_entries() == []


def test_two_query_runners_at_the_deadline_book_once(app, story, sim):
    from tests.concurrency import together

    order, buyer, issuer, shop = story()
    sent(order)
    rail_off()
    paid_ago(order.id, FROZEN_FOR + timedelta(days=1))
    results_are_due(order.id)
    results = together(3, lambda _: (query_profit_shares(), share_due_orders()), app=app)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert {p.status for p in payouts_of(order.id).values()} == {"succeeded"}
    assert_released_once(order, shop)
