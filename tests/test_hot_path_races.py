"""Races and corner cases of the merged hot path (issue 11 review): crossed campaign locks of two payments,
one campaign decided twice in one payment, and a deadlock answered as retryable to WeChat."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from models import Campaign, Order, Rebate, db, utcnow
from rebate import budgets, create_order, issue_packet
from rebate.awards import Effects
from rebate.orders import LineRequest
from tests.concurrency import is_row_locked, together, wait_until_a_backend_waits_on_a_lock
from tests.conftest import on_postgres
from tests.payment_helpers import pay_as_wechat
from tests.test_wechat_callbacks import NOTIFY, simulator, transaction_resource

REFERRAL_AND_CONSUMER = {
    "applies_to": "referral",
    "roles": [
        {"role": "inviter", "rate_bps": 500, "form": "balance", "cap_fen": 10_00},
        {"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 10_00},
    ],
}


def buy(user, product, packet=None) -> Order:
    order = create_order(user, [LineRequest(product.id, 1)], packet.id if packet else None, utcnow())
    db.session.commit()
    return order


def test_two_payments_crossing_two_campaigns_both_apply(
    app, make_user, make_merchant, make_product, make_campaign, monkeypatch
):
    # given: two referral campaigns X and Y; payment A spends X's packet and earns Y's referral award (and X's),
    # payment B spends Y's packet: each settles one campaign and commits the other's award
    product = make_product(make_merchant(), price_fen=100_00)
    x = make_campaign(REFERRAL_AND_CONSUMER, budget_limit_fen=1_000_00, packet_amount_fen=5_00)
    y = make_campaign(REFERRAL_AND_CONSUMER, budget_limit_fen=1_000_00, packet_amount_fen=5_00)
    orders = []
    for campaign in (x, y):
        buyer = make_user(inviter=make_user())
        packet = issue_packet(campaign, buyer, source="t", source_ref=f"b{buyer.id}", now=utcnow())
        db.session.flush()
        orders.append(create_order(buyer, [LineRequest(product.id, 1)], packet.id, utcnow()))
    db.session.commit()
    trades = [(o.out_trade_no, o.payable_fen) for o in orders]
    if on_postgres():  # both payments reach their first campaign lock before either takes it (SQLite serialises)
        barrier, real = threading.Barrier(2), budgets.lock_in_order

        def lock_together(campaign_ids):
            barrier.wait(timeout=10)
            return real(campaign_ids)

        monkeypatch.setattr(budgets, "lock_in_order", lock_together)

    # when: both are notified at once
    results = together(2, lambda i: pay_as_wechat(trades[i][0], f"tx-{trades[i][0]}", trades[i][1], utcnow()), app=app)

    # then: no deadlock, both orders paid
    assert results == ["applied", "applied"], results
    db.session.rollback()
    statuses = [db.session.execute(select(Order.status).filter_by(out_trade_no=t)).scalar_one() for t, _ in trades]
    assert statuses == ["paid", "paid"]


@pytest.mark.parametrize("moved", [False, True])
def test_a_payment_moves_its_budgets_last_in_one_statement_and_locks_them_first_when_one_moved(
    make_user, make_merchant, make_product, make_campaign, pay, monkeypatch, moved
):
    # given: an invited buyer spending a packet of X, while Y pays the inviter (two campaign rows written);
    # with ``moved``, the first conditional commit finds Y's budget taken (as another payment would)
    product = make_product(make_merchant(), price_fen=100_00)
    x = make_campaign(REFERRAL_AND_CONSUMER, budget_limit_fen=1_000_00, packet_amount_fen=5_00)
    y = make_campaign(REFERRAL_AND_CONSUMER, budget_limit_fen=1_000_00)
    buyer = make_user(inviter=make_user())
    packet = issue_packet(x, buyer, source="t", source_ref="b", now=utcnow())
    db.session.commit()
    order = buy(buyer, product, packet)
    calls, writes = [], []
    lock, commit = budgets.lock_in_order, budgets.commit_many

    def counted_commit(amounts, settles=None):
        calls.append(("commit", sorted({*amounts, *(settles or {})}), len(writes)))
        if moved and len(calls) == 1:
            return {y.id}
        return commit(amounts, settles)

    monkeypatch.setattr(budgets, "lock_in_order", lambda ids: (calls.append(("lock", sorted(ids))), lock(ids))[1])
    monkeypatch.setattr(budgets, "commit_many", counted_commit)
    real_write = Effects.write
    monkeypatch.setattr(Effects, "write", lambda self: (writes.append(1), real_write(self))[1])

    # when
    assert pay(order) == "applied"

    # then: X settled and Y committed in one UPDATE after the rebates were written; when Y had moved,
    # everything was rolled back and done again with both rows locked in one go before the commit
    ids = sorted([x.id, y.id])
    if not moved:
        assert calls == [("commit", ids, 1)]
    else:
        assert calls == [("commit", ids, 1), ("lock", ids), ("commit", ids, 1)]
    db.session.expire_all()
    by_y = sum(r.original_fen for r in db.session.query(Rebate).filter_by(order_id=order.id, campaign_id=y.id))
    assert by_y > 0
    assert db.session.get(Campaign, y.id).budget_committed_fen == by_y, "committed once, what was awarded"


def test_referral_and_attribution_of_one_campaign_share_what_is_left(
    make_user, make_merchant, make_product, make_campaign, pay
):
    # given: a merchant's referral campaign that also attributes its packets' later orders to the shop,
    # a buyer who used its trial packet, and 15 yuan left in its budget
    shop = make_merchant("shop")
    trial, full = make_product(shop, price_fen=10_00), make_product(shop, price_fen=200_00)
    campaign = make_campaign(
        {
            "applies_to": "referral",
            "attribution_days": 30,
            "roles": [
                {"role": "inviter", "rate_bps": 1000, "form": "balance", "cap_fen": 10_00},
                {"role": "issuer", "rate_bps": 500, "form": "merchant_credit", "cap_fen": 10_00},
            ],
        },
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        budget_limit_fen=1_000_00,
        packet_amount_fen=5_00,
        packet_merchant_id=shop.id,
    )
    buyer = make_user(inviter=make_user())
    packet = issue_packet(campaign, buyer, source="trial", source_ref="b", now=utcnow())
    db.session.commit()
    assert pay(buy(buyer, trial, packet=packet)) == "applied"
    c = db.session.get(Campaign, campaign.id)
    left_15 = c.budget_committed_fen + c.budget_reserved_fen + 15_00
    db.session.execute(update(Campaign).where(Campaign.id == c.id).values(budget_limit_fen=left_15))
    db.session.commit()

    # when: a later order earns the inviter 10 yuan (referral) and the shop 10 yuan (attribution)
    later = buy(buyer, full)
    outcome = pay(later)

    # then: the order is applied; the referral takes 10, the attribution what is left (5), never over the limit
    assert outcome == "applied"
    db.session.expire_all()
    assert db.session.get(Order, later.id).status == "paid"
    c = db.session.get(Campaign, campaign.id)
    assert c.budget_committed_fen + c.budget_reserved_fen <= c.budget_limit_fen
    got = {r.role: r.original_fen for r in db.session.query(Rebate).filter_by(order_id=later.id)}
    assert got == {"inviter": 10_00, "issuer": 5_00}


def test_budgets_that_keep_moving_skip_the_award_and_still_apply_the_payment(
    make_user, make_merchant, make_product, make_campaign, pay, monkeypatch
):
    # given: a referral campaign whose conditional commit always finds its budget taken
    product = make_product(make_merchant(), price_fen=100_00)
    referral = make_campaign(REFERRAL_AND_CONSUMER, budget_limit_fen=1_000_00)
    order = buy(make_user(inviter=make_user()), product)
    real = budgets.commit_many
    monkeypatch.setattr(
        budgets, "commit_many", lambda amounts, settles=None: {c for c, f in amounts.items() if f} or real(amounts)
    )

    # when
    outcome = pay(order)

    # then: paid, its awards refused for the budget with a reason, nothing committed
    assert outcome == "applied"
    db.session.expire_all()
    assert db.session.get(Order, order.id).status == "paid"
    assert db.session.get(Campaign, referral.id).budget_committed_fen == 0
    assert db.session.query(Rebate).filter(Rebate.order_id == order.id, Rebate.original_fen > 0).count() == 0


@pytest.mark.parametrize("sqlstate", ["40P01", "40001"])
def test_a_deadlocked_payment_notification_answers_a_retryable_503(
    app, client, make_user, make_product, sqlstate, monkeypatch
):
    # given: a payment whose processing meets a deadlock (or a serialization failure)
    order = create_order(
        make_user(appid=app.config["WECHAT_APPID"]), [LineRequest(make_product().id, 1)], None, utcnow()
    )
    db.session.commit()
    headers, body = simulator(app).build_notification(
        "TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction"
    )
    orig = type("DbError", (Exception,), {"sqlstate": sqlstate})()  # as psycopg's DeadlockDetected carries it

    def deadlock(*args, **kwargs):
        raise OperationalError("UPDATE campaigns ...", {}, orig)

    monkeypatch.setattr("web.wechat_callbacks.apply_payment", deadlock)

    # when
    response = client.post(NOTIFY, data=body, headers=headers)

    # then: 503 with Retry-After (WeChat retries), not a 500; the order is still unpaid
    assert response.status_code == 503, response.get_data()
    assert response.headers["Retry-After"]
    db.session.rollback()
    assert db.session.get(Order, order.id).status == "created"


@pytest.mark.skipif(not on_postgres(), reason="row-lock order: PostgreSQL (SQLite serialises its transactions)")
def test_the_budgets_update_locks_its_campaigns_in_id_order_whatever_the_heap_order(app, make_campaign):
    # given: campaigns X < Y whose rows a sequential scan meets Y first (X's row was rewritten after Y's),
    # and another transaction holding Y
    x = make_campaign(REFERRAL_AND_CONSUMER, budget_limit_fen=1_000_00)
    y = make_campaign(REFERRAL_AND_CONSUMER, budget_limit_fen=1_000_00)
    db.session.execute(update(Campaign).where(Campaign.id == x.id).values(name="x, rewritten"))
    db.session.commit()
    x_id, y_id = x.id, y.id
    lock = select(Campaign.id).with_for_update(key_share=True)
    holder = db.engine.connect()
    holder.begin()
    holder.execute(lock.where(Campaign.id == y_id))

    def commit_both():
        with app.app_context():
            budgets.commit_many({x_id: 1_00, y_id: 1_00})
            db.session.commit()

    payment = threading.Thread(target=commit_both)
    payment.start()
    try:
        # when: the payment's budget statement waits for Y
        probe = db.engine.connect()
        wait_until_a_backend_waits_on_a_lock(probe)

        # then: it holds X already (taken first, in id order), so two payments of X and Y cannot wait in a circle
        assert is_row_locked(probe, select(Campaign.id).where(Campaign.id == x_id))
        probe.close()
    finally:
        holder.rollback()
        holder.close()
        payment.join(timeout=20)
    db.session.expire_all()
    assert db.session.get(Campaign, x_id).budget_committed_fen == 1_00
    assert db.session.get(Campaign, y_id).budget_committed_fen == 1_00
