"""Probe findings on bans and what their lifting gives back (round 20).

* A milestone met while a ban on the order's device or network refused the buyer was lost to the deadline when
  that ban was lifted: only a lift of the last ban on a person or merchant applied what it had refused.
* A milestone reported while a lift was deciding could be missed by it: the report saw the ban in force, the lift's
  replay did not yet see the report.
* ``DELETE /admin/api/bans/<id>`` answers 202 for a lift that waits for a second operator, which the API's own
  document (/openapi.json) did not list.

The ledger check runs after every test (tests/conftest.py).
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import event, select

from models import Ban, Order, db, utcnow
from rebate import apply_refund, create_order, issue_packet
from rebate.ban_ops import lift_expired_bans
from rebate.milestones import report_milestone
from rebate.orders import LineRequest
from tests.concurrency import is_row_locked, together, wait_until_a_backend_waits_on_a_lock
from tests.conftest import on_postgres, release_test_session
from tests.money_helpers import app_money
from tests.review_helpers import cash, rebates_of

DEVICE = "0123456789abcdef01234567"
OTHER_DEVICE = "fedcba9876543210fedcba98"
# the buyer's 10 % of 90 yuan paid (100 less the 10-yuan packet), held until both milestones, released in parts
CONDITIONAL = {
    "roles": [
        {
            "role": "consumer",
            "rate_bps": 1000,
            "form": "balance",
            "cap_fen": 50_00,
            "condition": {"milestones": ["lessons_10", "test_passed"], "window_days": 30, "release": "parts"},
        }
    ]
}
HELD = 9_00


@pytest.fixture
def shop(make_merchant, make_product, make_campaign):
    merchant = make_merchant()
    product = make_product(merchant, price_fen=100_00)
    campaign = make_campaign(
        CONDITIONAL,
        budget_limit_fen=1_000_00,
        packet_amount_fen=10_00,
        issuer_type="merchant",
        issuer_merchant_id=merchant.id,
        funder_type="merchant_deposit",
        funder_merchant_id=merchant.id,
        max_packets=10,
    )
    return merchant, product, campaign


@pytest.fixture
def buy(shop, make_user, pay):
    """A paid order of a new buyer from ``device`` at ``ip``: its consumer rebate held for two milestones."""
    merchant, product, campaign = shop
    seq = iter(range(1, 100))

    def make(device: str | None = DEVICE, ip: str | None = "198.51.100.9") -> Order:
        buyer = make_user()
        packet = issue_packet(campaign, buyer, source="t", source_ref=f"b{next(seq)}", now=utcnow())
        db.session.commit()
        order = create_order(buyer, [LineRequest(product.id, 1)], packet.id, utcnow())
        order.device, order.ip = device, ip
        db.session.commit()
        pay(order)
        assert held_of(order.id) == ("held", 0, HELD)
        return order

    return make


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")[1]


def held_of(order_id: int) -> tuple[str, int, int]:
    (rebate,) = rebates_of(order_id).values()
    return rebate.status, rebate.amount_fen, rebate.held_fen


def ban(client, admin, subject: str, value: str, **extra) -> int:
    made = client.post(
        "/admin/api/bans", json={"subject": subject, "value": value, "reason": "a click farm", **extra}, headers=admin
    )
    assert made.status_code == 201, made.get_json()
    return made.get_json()["id"]


def lift(client, admin, ban_id: int, reason: str = "not a farm after all") -> dict:
    lifted = client.delete(f"/admin/api/bans/{ban_id}", json={"reason": reason}, headers=admin)
    assert lifted.status_code == 200, lifted.get_json()
    return lifted.get_json()


def lift_status(app, admin, ban_id: int) -> int:
    """A lift from a client of its own (a thread's); its status."""
    return (
        app.test_client()
        .delete(f"/admin/api/bans/{ban_id}", json={"reason": "cleared by review"}, headers=admin)
        .status_code
    )


def report_both(order: Order) -> None:
    for name in ("lessons_10", "test_passed"):
        report_milestone(order, name, None, utcnow(), money=app_money())
    db.session.commit()


# -- 1. a device or network ban's lift gives back what it alone refused ------------------------------------------


@pytest.mark.parametrize(
    ("subject", "value", "ip"),
    [
        ("device", DEVICE, "198.51.100.9"),
        ("net", "198.51.100.9", "198.51.100.9"),
        ("net", "198.51.100.0/24", "198.51.100.9"),
        ("net", "198.51.100.0/24", "::ffff:198.51.100.9"),  # a dual-stack socket's form of the same address
        ("net", "2001:db8:7::/48", "2001:db8:7:0:1::9"),
    ],
)
def test_lifting_a_device_or_network_ban_releases_the_buyers_milestones_met_under_it(
    client, admin, buy, subject, value, ip
):
    # given: a buyer whose held 9 yuan waits for two milestones, and a ban on the device or network they paid from
    order = buy(ip=ip)
    ban_id = ban(client, admin, subject, value)
    # and: both milestones met under the ban: refused, held
    report_both(order)
    assert held_of(order.id) == ("held", 0, HELD)

    # when: the ban is lifted long before the 30-day deadline
    lift(client, admin, ban_id)

    # then: what the milestones unlock is paid now, not expired at the deadline
    assert held_of(order.id) == ("awarded", HELD, 0)
    assert cash(order.user_id) == HELD
    (rebate,) = rebates_of(order.id).values()
    assert sum("released: nothing refuses the consumer" in why for why in rebate.reasons) == 2, rebate.reasons


def test_a_device_ban_lift_leaves_other_buyers_and_other_devices_alone(client, admin, buy):
    # given: two buyers refused by two device bans
    mine, theirs = buy(device=DEVICE, ip=None), buy(device=OTHER_DEVICE, ip=None)
    mine_ban, _ = ban(client, admin, "device", DEVICE), ban(client, admin, "device", OTHER_DEVICE)
    report_both(mine)
    report_both(theirs)

    # when: one device's ban is lifted
    lift(client, admin, mine_ban)

    # then: that device's buyer is paid; the other, still refused, waits
    assert (held_of(mine.id), held_of(theirs.id)) == (("awarded", HELD, 0), ("held", 0, HELD))


@pytest.mark.parametrize("last", ["user", "device", "net"])
def test_a_buyer_refused_three_ways_is_paid_once_at_the_last_lift_whichever_it_is(client, admin, buy, last):
    # given: the buyer, their device and their network all banned; both milestones met under the bans
    order = buy()
    bans = {
        "user": ban(client, admin, "user", str(order.user_id)),
        "device": ban(client, admin, "device", DEVICE),
        "net": ban(client, admin, "net", "198.51.100.0/24"),
    }
    report_both(order)

    # when: the others are lifted: the buyer is still refused, nothing is paid
    for kind, ban_id in bans.items():
        if kind != last:
            lift(client, admin, ban_id)
            assert held_of(order.id) == ("held", 0, HELD), kind

    # when: the last is lifted, and lifted again (the same answer)
    lift(client, admin, bans[last])
    lift(client, admin, bans[last])

    # then: paid once
    assert held_of(order.id) == ("awarded", HELD, 0)
    assert cash(order.user_id) == HELD


def test_an_expired_device_ban_releases_what_it_refused(client, admin, buy):
    # given: a one-day device ban, and both milestones met under it
    order = buy()
    ban(client, admin, "device", DEVICE, days=1)
    report_both(order)

    # when: the job lifts it at its end (before the rebate's deadline)
    assert lift_expired_bans(utcnow() + timedelta(days=1, minutes=1), money=app_money()) == 1
    db.session.commit()

    # then: paid
    assert held_of(order.id) == ("awarded", HELD, 0)


def test_a_device_ban_lift_pays_the_milestone_met_and_the_rest_waits_for_the_next(client, admin, buy):
    # given: the lessons met under the ban, the test not yet passed
    order = buy()
    ban_id = ban(client, admin, "device", DEVICE)
    report_milestone(order, "lessons_10", None, utcnow(), money=app_money())
    db.session.commit()

    # when: lifted
    lift(client, admin, ban_id)

    # then: half released (one milestone of two), half still waiting for the second milestone
    assert held_of(order.id) == ("held", HELD // 2, HELD - HELD // 2)


def test_a_device_ban_lift_and_a_refund_of_the_order_at_once_neither_deadlock_nor_pay_twice(app, client, admin, buy):
    # given: both milestones met under a device ban
    order = buy()
    ban_id = ban(client, admin, "device", DEVICE)
    report_both(order)
    out_trade_no, payable = order.out_trade_no, order.payable_fen

    def work(i: int):
        if i == 0:
            return (
                app.test_client()
                .delete(f"/admin/api/bans/{ban_id}", json={"reason": "cleared by review"}, headers=admin)
                .status_code
            )
        return apply_refund(out_trade_no, "R-1", payable, utcnow(), refund_id="wx-R-1", money=app_money())

    # when: the lift and a full refund at once
    results = together(2, work, app=app)

    # then: both done; the ledger check (conftest) finds every movement balanced
    assert results[0] == 200, results
    assert not isinstance(results[1], Exception), results
    db.session.expire_all()
    assert db.session.get(Ban, ban_id).lifted_at is not None


# -- 2. a milestone reported while a lift is deciding ---------------------------------------------------------------


def _report_held_open(app, order_id: int, reported: threading.Event, go: threading.Event, errors: list) -> None:
    """Report lessons_10 in a transaction of its own and keep it open (holding what it locked) until ``go``."""
    with app.app_context():
        try:
            report_milestone(db.session.get(Order, order_id), "lessons_10", None, utcnow(), money=app_money())
            db.session.flush()
            reported.set()
            go.wait(timeout=30)
            db.session.commit()
        except Exception as exc:  # asserted on by the test
            errors.append(exc)
            db.session.rollback()
            reported.set()
        finally:
            db.session.remove()


@pytest.mark.skipif(not on_postgres(), reason="row locks: PostgreSQL (SQLite serialises its transactions)")
@pytest.mark.parametrize("subject", ["user", "device"])
def test_a_milestone_reported_while_the_lift_decides_is_released_by_one_of_them(app, client, admin, buy, subject):
    """The report, not yet committed, saw the ban in force and refused; the lift, deciding meanwhile, must not miss
    it: it waits for the order the report holds (as it takes every order whose milestones it may release), then
    applies what the report refused."""
    order = buy(ip=None)
    ban_id = ban(client, admin, subject, str(order.user_id) if subject == "user" else DEVICE)
    db.session.commit()
    order_id = order.id
    release_test_session()
    reported, go, errors, answers = threading.Event(), threading.Event(), [], []

    reporter = threading.Thread(target=_report_held_open, args=(app, order_id, reported, go, errors))
    reporter.start()
    assert reported.wait(timeout=30)

    def do_lift():
        resp = app.test_client().delete(f"/admin/api/bans/{ban_id}", json={"reason": "cleared"}, headers=admin)
        answers.append(resp.status_code)

    lifter = threading.Thread(target=do_lift)
    lifter.start()
    probe = db.engine.connect()
    try:  # the lift finishes (it missed the report) or waits for the order the report holds
        wait_until_a_backend_waits_on_a_lock(probe, timeout_s=3)
    finally:
        go.set()
        reporter.join(timeout=30)
        lifter.join(timeout=30)
        probe.close()
    assert not errors, errors
    assert answers == [200]

    # then: the lessons' half is paid (by the report after the lift, or by the lift after the report), once
    assert held_of(order_id) == ("held", HELD // 2, HELD - HELD // 2)


@pytest.mark.parametrize("subject", ["user", "device"])
def test_a_milestone_report_and_a_lift_at_once_release_it_once(app, client, admin, buy, subject):
    """Whichever goes first (both databases): the milestone's part is paid once."""
    order = buy(ip=None)
    ban_id = ban(client, admin, subject, str(order.user_id) if subject == "user" else DEVICE)
    order_id = order.id

    def work(i: int):
        if i == 0:
            return report_milestone(db.session.get(Order, order_id), "lessons_10", None, utcnow(), money=app_money())
        return (
            app.test_client()
            .delete(f"/admin/api/bans/{ban_id}", json={"reason": "cleared by review"}, headers=admin)
            .status_code
        )

    results = together(2, work, app=app)

    assert not any(isinstance(r, Exception) for r in results), results
    assert results[1] == 200
    assert held_of(order_id) == ("held", HELD // 2, HELD - HELD // 2)
    assert cash(db.session.get(Order, order_id).user_id) == HELD // 2


@pytest.mark.skipif(not on_postgres(), reason="row locks: PostgreSQL (SQLite serialises its transactions)")
def test_a_lift_takes_the_orders_it_may_release_even_with_nothing_refused_yet(app, client, admin, buy):
    """What closes the race: a lift locks every order of the beneficiary with a rebate still held before its
    deadline, not only those a refusal is already recorded on (a report in flight has not recorded it yet)."""
    order = buy(ip=None)
    ban_id = ban(client, admin, "device", DEVICE)
    db.session.commit()
    order_id = order.id
    seen: list = []

    def look(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("UPDATE risk_bans SET lifted_at") and not seen:
            probe = db.engine.connect()
            try:
                seen.append(is_row_locked(probe, select(Order.id).where(Order.id == order_id)))
            finally:
                probe.close()

    release_test_session()
    event.listen(db.engine, "before_cursor_execute", look)
    try:
        lift(app.test_client(), admin, ban_id)
    finally:
        event.remove(db.engine, "before_cursor_execute", look)
    assert seen == [True]


# -- 3. the 202 of a lift waiting for a second operator is in the API's document ------------------------------------


def test_the_document_lists_the_202_of_a_lift_waiting_for_a_second_operator(client):
    doc = client.get("/openapi.json").get_json()
    responses = doc["paths"]["/admin/api/bans/{ban_id}"]["delete"]["responses"]
    assert {"200", "202"} <= set(responses), responses
    assert "second operator" in responses["202"]["description"]
