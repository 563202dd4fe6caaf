"""SQL statements of one paid notification through the real callback route: a count, never a time.

The scenario of issue 11: a buyer invited by a friend pays with a platform campaign's packet; the
packet's campaign pays the consumer 10 % as WeChat change and a referral campaign pays the inviter
10 % as WeChat change: two rebates, two payouts. Every cursor execute of the request is counted
(an executemany counts once). The count must stay the same with ten times more history and ten
times more active campaigns (other merchants', unrelated).
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from sqlalchemy import event, func, select, text, update

from models import Campaign, LedgerEntry, Order, Payout, Rebate, db, utcnow
from rebate import create_order, issue_packet
from rebate.orders import LineRequest
from tests.concurrency import together
from tests.test_wechat_callbacks import simulator, transaction_resource

NOTIFY = "/wechat/pay/notify"
# 13 on PostgreSQL before risk scoring (14 on SQLite, which adds BEGIN IMMEDIATE); scoring adds two: the one read
# of the buyer's aggregates (risk.scoring) and the upsert of their profile (risk.profiles). The packet here is the
# platform's, so no triangle pair is written (a merchant's or a person's packet adds that upsert).
MAX_STATEMENTS = 16
# PostgreSQL writes a batch's ledger entries, postings and flows in one statement (ledger/posting.py), two fewer,
# and numbers the payouts from their ids as they are inserted (migration 0028), one fewer.
POSTGRES_STATEMENTS = 12
CONSUMER = {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "wechat_change", "cap_fen": 100_00}]}
REFERRAL = {
    "applies_to": "referral",
    "roles": [{"role": "inviter", "rate_bps": 1000, "form": "wechat_change", "cap_fen": 100_00}],
}


@contextmanager
def counted():
    """Every statement the app's engine sends while inside (an executemany is one)."""
    statements: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    engine = db.engine
    event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", before)


@pytest.fixture
def shop(app, make_user, make_merchant, make_product, make_campaign):
    """A merchant, a platform packet campaign paying the consumer, a budgeted referral campaign paying the inviter."""
    merchant = make_merchant()
    product = make_product(merchant, price_fen=200_00)
    packet_campaign = make_campaign(CONSUMER, budget_limit_fen=1_000_000_00, packet_amount_fen=10_00)
    referral = make_campaign(REFERRAL, budget_limit_fen=1_000_000_00)
    return merchant, product, packet_campaign, referral


def paid_order(app, make_user, product, packet_campaign):
    """An invited buyer's unpaid order spending one packet of ``packet_campaign``."""
    inviter = make_user(appid=app.config["WECHAT_APPID"])
    buyer = make_user(appid=app.config["WECHAT_APPID"], inviter=inviter)
    packet = issue_packet(packet_campaign, buyer, source="test", source_ref=f"b{buyer.id}", now=utcnow())
    db.session.flush()
    order = create_order(buyer, [LineRequest(product.id, 1)], packet.id, utcnow())
    db.session.commit()
    return order


def notify(app, client, order):
    headers, body = simulator(app).build_notification(
        "TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction"
    )
    with counted() as statements:
        response = client.post(NOTIFY, data=body, headers=headers)
    assert response.status_code == 204, response.get_data(as_text=True)
    return headers, body, statements


def test_a_paid_notification_with_two_rebates_and_two_payouts_costs_at_most_16_statements(app, client, make_user, shop):
    merchant, product, packet_campaign, referral = shop
    notify(app, client, paid_order(app, make_user, product, packet_campaign))  # this process has read their rules
    order = paid_order(app, make_user, product, packet_campaign)
    headers, body, statements = notify(app, client, order)
    db.session.rollback()
    assert db.session.get(Order, order.id).status == "paid"
    rebates = db.session.execute(select(Rebate).where(Rebate.order_id == order.id)).scalars().all()
    assert sorted((r.role, r.amount_fen) for r in rebates) == [
        ("consumer", 19_00),
        ("inviter", 19_00),
    ]  # 10 % of 190 paid
    assert db.session.execute(select(func.count(Payout.id)).where(Payout.order_id == order.id)).scalar_one() == 2
    assert len(statements) <= MAX_STATEMENTS, "\n".join(statements)
    if db.engine.dialect.name == "postgresql":
        assert len(statements) == POSTGRES_STATEMENTS, "\n".join(statements)
    # a duplicate delivery: seen under the order's lock, nothing moves
    entries = db.session.execute(select(func.count(LedgerEntry.id))).scalar_one()
    db.session.rollback()
    with counted() as again:
        assert client.post(NOTIFY, data=body, headers=headers).status_code == 204
    assert len(again) <= 4, "\n".join(again)
    assert db.session.execute(select(func.count(LedgerEntry.id))).scalar_one() == entries


def test_the_count_is_the_same_with_ten_times_the_history_and_the_active_campaigns(
    app, client, make_user, make_merchant, make_campaign, shop
):
    merchant, product, packet_campaign, referral = shop
    notify(app, client, paid_order(app, make_user, product, packet_campaign))
    *_, before = notify(app, client, paid_order(app, make_user, product, packet_campaign))
    # given: ten times the active campaigns (other merchants', on paid orders and codes) and the history
    for _ in range(10):
        other = make_merchant()
        for trigger in ({"kind": "order_paid", "min_order_fen": 0}, {"kind": "claim_code"}):
            make_campaign(
                CONSUMER, issuer_type="merchant", issuer_merchant_id=other.id, packet_amount_fen=5_00, trigger=trigger
            )
    for _ in range(10):
        notify(app, client, paid_order(app, make_user, product, packet_campaign))
    # when
    *_, after = notify(app, client, paid_order(app, make_user, product, packet_campaign))
    # then
    assert len(after) == len(before), "\n".join(after)


@pytest.fixture
def referral_nearly_spent(app, make_user, shop, monkeypatch):
    """Between the payment's read of the referral campaign and its commit, someone else takes all but 5 yuan."""
    import rebate.payments as payments

    merchant, product, packet_campaign, referral = shop
    load = payments._load

    def load_then_spend(out_trade_no):
        loaded = load(out_trade_no)
        db.session.execute(
            update(Campaign)
            .where(Campaign.id == referral.id)
            .values(budget_committed_fen=Campaign.budget_limit_fen - Campaign.budget_reserved_fen - 5_00)
            .execution_options(synchronize_session=False)  # the payment keeps what it read
        )
        return loaded

    monkeypatch.setattr(payments, "_load", load_then_spend)
    return product, packet_campaign, referral


def test_an_unreserved_award_is_decided_again_within_what_is_left_when_the_budget_moved(
    app, client, make_user, referral_nearly_spent
):
    product, packet_campaign, referral = referral_nearly_spent
    order = paid_order(app, make_user, product, packet_campaign)
    notify(app, client, order)
    db.session.rollback()
    campaign = db.session.get(Campaign, referral.id)
    assert campaign.budget_available_fen == 0, "the 5 yuan left, no more"
    inviter = db.session.execute(
        select(Rebate).where(Rebate.order_id == order.id, Rebate.campaign_id == referral.id)
    ).scalar_one()
    assert (inviter.amount_fen, inviter.reason_code) == (5_00, "budget_exhausted")
    payouts = db.session.execute(select(Payout.amount_fen).where(Payout.order_id == order.id)).scalars().all()
    assert sorted(payouts) == [5_00, 19_00]


def test_concurrent_payments_never_overspend_an_unreserved_budget(app, make_user, make_campaign, shop):
    merchant, product, packet_campaign, referral = shop
    small = make_campaign(REFERRAL, budget_limit_fen=50_00)  # two and a half inviter awards of 19 yuan
    orders = [paid_order(app, make_user, product, packet_campaign) for _ in range(6)]
    bodies = [
        simulator(app).build_notification("TRANSACTION.SUCCESS", transaction_resource(app, o), "transaction")
        for o in orders
    ]
    statuses = together(
        len(bodies), lambda i: app.test_client().post(NOTIFY, data=bodies[i][1], headers=bodies[i][0]).status_code
    )
    assert statuses == [204] * len(bodies)
    db.session.rollback()
    campaign = db.session.get(Campaign, small.id)
    awarded = db.session.execute(
        select(func.coalesce(func.sum(Rebate.original_fen), 0)).where(Rebate.campaign_id == small.id)
    ).scalar_one()
    assert campaign.budget_committed_fen == awarded == 50_00


def test_payout_numbers_come_from_their_ids_with_the_insert_or_the_update_after_it(app, make_user):
    # given: three people with a balance each; on PostgreSQL once with the numbering trigger, once without it
    from ledger import Leg, account
    from ledger.posting import Batch
    from models import AccountKind, Payout
    from payouts.outbox import PayoutRequest, enqueue_payouts, external_no_for
    from tests.money_helpers import app_money

    people = [make_user() for _ in range(3)]
    db.session.commit()
    postgres = db.engine.dialect.name == "postgresql"
    for with_trigger in (True, False) if postgres else (True,):
        if not with_trigger:  # as a database built without migration 0028 (rolled back with the test's transaction)
            db.session.execute(text("ALTER TABLE payouts DISABLE TRIGGER payouts_number"))
        batch, requests = Batch(), []
        for i, person in enumerate(people):
            cash = account(AccountKind.USER_CASH, "user", person.id)
            key = f"fund:{person.id}:{with_trigger}"
            batch.add(key, "rebate", [Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -100), Leg(cash, 100)])
            rail = ("wechat_change", "cash_red_packet", "wechat_change")[i]
            requests.append(PayoutRequest(rail, person.id, 100, cash, f"p:{key}", "t", app_money().number_prefix))
        batch.post()

        # when: their payouts are queued in one call
        with counted() as statements:
            queued = enqueue_payouts(requests, batch)
        batch.post()

        # then: each payout's number is its rail's tag and its id, in the order asked; with the trigger in one
        # INSERT (PostgreSQL), without it (SQLite, or a database without the migration) an UPDATE after it
        rows = [db.session.get(Payout, q.id) for q in queued]
        assert [(p.user_id, p.rail) for p in rows] == [(r.user_id, r.rail) for r in requests]
        assert [p.external_no for p in rows] == [external_no_for(p.rail, p.id, app_money().number_prefix) for p in rows]
        updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE PAYOUTS")]
        assert len(updates) == (0 if postgres and with_trigger else 1), statements
    db.session.rollback()
