"""Probe findings on lifting a ban that held many rebates (round 22).

* ``DELETE /admin/api/bans/<id>`` on a busy merchant, device or network locked and replayed every order with a held
  rebate inside the request: tens of thousands of orders were one request (past gunicorn's 60 s), holding every
  order's lock meanwhile, and an operator whose request timed out could not tell what had happened. Now the ban ends
  in the request (new orders are no longer held) and a job releases the held orders in bounded batches, each its own
  transaction (``jobs.risk.release_lifted_bans``); ``GET /admin/api/bans/<id>`` shows how far it is (``release``),
  and a release that stops moving is alerted (``ban_release_stalled``). A lift of a few orders still finishes inline.
* A ban put back on the same subject while its release runs stops the release (the new ban's lift releases them).

The ledger check runs after every test (tests/conftest.py).
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import event, select, update

import jobs.risk as risk_jobs
import rebate.ban_ops as ban_ops
from models import Alert, Ban, Order, Rebate, User, db, utcnow
from rebate import issue_packet
from rebate.milestones import expire_held_after, report_milestone
from rebate.orders import LineRequest, create_order
from tests.concurrency import together
from tests.money_helpers import app_money
from tests.review_helpers import cash, rebates_of
from tests.test_probe20_bans import CONDITIONAL, DEVICE, HELD, OTHER_DEVICE, admin, ban, held_of, lift  # noqa: F401


@pytest.fixture
def shop(make_merchant, make_product, make_campaign):
    merchant = make_merchant()
    product = make_product(merchant, price_fen=100_00)
    campaign = make_campaign(
        CONDITIONAL,
        budget_limit_fen=10_000_00,
        packet_amount_fen=10_00,
        issuer_type="merchant",
        issuer_merchant_id=merchant.id,
        funder_type="merchant_deposit",
        funder_merchant_id=merchant.id,
        max_packets=200,
    )
    return merchant, product, campaign


@pytest.fixture
def buy(shop, make_user, pay):
    """A paid order of a new buyer from ``device`` at ``ip``, its consumer rebate held for two milestones."""
    merchant, product, campaign = shop
    seq = iter(range(1, 1000))

    def make(device: str | None = DEVICE, ip: str | None = "198.51.100.9", buyer=None) -> Order:
        buyer = buyer or make_user()
        packet = issue_packet(campaign, buyer, source="t", source_ref=f"b{next(seq)}", now=utcnow())
        db.session.commit()
        order = create_order(buyer, [LineRequest(product.id, 1)], packet.id, utcnow())
        order.device, order.ip = device, ip
        db.session.commit()
        pay(order)
        return order

    return make


@pytest.fixture
def small_inline(monkeypatch):
    """A lift of more than two orders to release is left to the job; the job's batches are of three orders."""
    monkeypatch.setattr(ban_ops, "INLINE_RELEASE_ORDERS", 2, raising=False)
    monkeypatch.setattr(risk_jobs, "RELEASE_BATCH", 3, raising=False)


def refused_orders(client, admin, buy, n: int, device: str = DEVICE) -> tuple[int, list[int]]:  # noqa: F811
    """``n`` orders from ``device``, a ban on it, and both milestones of each met under it: (ban id, order ids)."""
    orders = [buy(device=device, ip=None) for _ in range(n)]
    ban_id = ban(client, admin, "device", device)
    for order in orders:
        for name in ("lessons_10", "test_passed"):
            report_milestone(order, name, None, utcnow(), money=app_money())
    db.session.commit()
    ids = [o.id for o in orders]
    assert all(held_of(i) == ("held", 0, HELD) for i in ids)
    return ban_id, ids


def paid(order_ids: list[int]) -> int:
    return sum(held_of(i) == ("awarded", HELD, 0) for i in order_ids)


def run_job(now=None, **kw) -> Counter:
    db.session.commit()
    out = risk_jobs.release_lifted_bans(now or utcnow(), money=app_money(), **kw)
    db.session.expire_all()
    return out


def shown(client, admin, ban_id: int) -> dict:  # noqa: F811
    got = client.get(f"/admin/api/bans/{ban_id}", headers=admin)
    assert got.status_code == 200, got.get_json()
    return got.get_json()


def counted_lift(client, admin, ban_id: int) -> tuple[dict, list[str]]:  # noqa: F811
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        sent.append(statement)

    db.session.commit()
    event.listen(db.engine, "before_cursor_execute", record)
    try:
        body = lift(client, admin, ban_id)
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    return body, sent


# -- 1. the request does bounded work; the job releases in batches --------------------------------------------------


def test_a_lift_of_many_held_orders_does_the_same_bounded_work_in_the_request_whatever_their_number(
    client, admin, buy, small_inline
):
    # given: two device bans, one holding 4 orders' milestones, the other 9
    few_ban, few = refused_orders(client, admin, buy, 4, DEVICE)
    many_ban, many = refused_orders(client, admin, buy, 9, OTHER_DEVICE)

    # when: each is lifted
    few_body, few_sent = counted_lift(client, admin, few_ban)
    many_body, many_sent = counted_lift(client, admin, many_ban)

    # then: both requests sent as many statements, none locking an order; the bans ended at once
    assert len(few_sent) == len(many_sent), (few_sent, many_sent)
    assert not [s for s in many_sent if "FROM orders" in s and "FOR UPDATE" in s]
    assert few_body["active"] is False and many_body["active"] is False
    assert many_body["release"]["state"] == "running"
    # and: nothing released yet, by the request
    assert paid(few + many) == 0

    # when: the job runs
    outcome = run_job()

    # then: every order paid, once; the releases done
    assert paid(few + many) == 13
    assert outcome["orders"] == 13
    for ban_id, n in ((few_ban, 4), (many_ban, 9)):
        release = shown(client, admin, ban_id)["release"]
        assert release["state"] == "done", release
        assert (release["orders_done"], release["orders_left"], release["paid_fen"]) == (n, 0, n * HELD)


def test_the_job_releases_in_batches_each_its_own_transaction_and_the_ban_shows_how_far(
    client, admin, buy, small_inline
):
    # given: a lifted device ban holding 7 orders (batches of 3)
    ban_id, ids = refused_orders(client, admin, buy, 7)
    lift(client, admin, ban_id)
    assert shown(client, admin, ban_id)["release"] | {"last_batch_at": None} == {
        "state": "running",
        "orders_done": 0,
        "orders_left": 7,
        "paid_fen": 0,
        "stalled": False,
        "last_batch_at": None,
    }

    # when: one batch (a job whose run is cut short after it)
    db.session.commit()
    assert ban_ops.release_batch(ban_id, utcnow(), 3, money=app_money()) == (3, 3 * HELD, True)
    db.session.commit()

    # then: three orders paid and the rest still held, as the ban shows
    assert paid(ids) == 3
    assert paid(ids[:3]) == 3
    release = shown(client, admin, ban_id)["release"]
    assert (release["state"], release["orders_done"], release["orders_left"]) == ("running", 3, 4)
    assert release["paid_fen"] == 3 * HELD

    # when: the job runs: the rest, a transaction each batch of three
    commits: list[int] = []

    def committed(session):
        commits.append(1)

    event.listen(db.session, "after_commit", committed)
    try:
        run_job()
    finally:
        event.remove(db.session, "after_commit", committed)
    assert paid(ids) == 7
    assert shown(client, admin, ban_id)["release"]["state"] == "done"
    assert len(commits) >= 2


def test_a_small_lift_still_finishes_in_the_request(client, admin, buy, small_inline):
    ban_id, ids = refused_orders(client, admin, buy, 2)
    body = lift(client, admin, ban_id)
    assert paid(ids) == 2
    assert body["release"]["state"] == "done"
    assert (body["release"]["orders_done"], body["release"]["paid_fen"]) == (2, 2 * HELD)


@pytest.mark.parametrize(
    ("subject", "value", "ip"),
    [
        ("device", DEVICE, "198.51.100.9"),
        ("net", "198.51.100.9", "198.51.100.9"),
        ("net", "198.51.100.0/24", "::ffff:198.51.100.9"),
        ("net", "2001:db8:7::/48", "2001:db8:7:0:1::9"),
    ],
)
def test_the_job_releases_what_the_request_would_have_released(client, admin, buy, monkeypatch, subject, value, ip):
    # given: buyers refused by a device or network ban, and neighbours it never banned (refused by another ban)
    monkeypatch.setattr(ban_ops, "INLINE_RELEASE_ORDERS", 0, raising=False)
    mine = [buy(device=DEVICE, ip=ip) for _ in range(3)]
    theirs = buy(device=OTHER_DEVICE, ip="203.0.113.5")
    ban_id = ban(client, admin, subject, value)
    ban(client, admin, "device", OTHER_DEVICE)
    for order in [*mine, theirs]:
        for name in ("lessons_10", "test_passed"):
            report_milestone(order, name, None, utcnow(), money=app_money())
    db.session.commit()

    # when: lifted (all left to the job) and the job runs
    assert lift(client, admin, ban_id)["release"]["state"] == "running"
    run_job()

    # then: its buyers are paid, the other still waits for its own ban's lift
    assert paid([o.id for o in mine]) == 3
    assert held_of(theirs.id) == ("held", 0, HELD)
    (rebate,) = rebates_of(mine[0].id).values()
    assert sum("released: nothing refuses the consumer" in why for why in rebate.reasons) == 2, rebate.reasons


def test_an_expired_ban_holding_many_orders_is_released_by_the_job_too(client, admin, buy, small_inline):
    ban_id, ids = refused_orders(client, admin, buy, 5)
    db.session.execute(update(Ban).where(Ban.id == ban_id).values(ends_at=utcnow() + timedelta(minutes=1)))
    db.session.commit()
    later = utcnow() + timedelta(minutes=2)
    assert risk_jobs.lift_expired_bans(later, money=app_money())["lifted"] == 1
    db.session.expire_all()
    assert paid(ids) == 0
    run_job(later)
    assert paid(ids) == 5


# -- 2. exactly once: two runners, a report meanwhile --------------------------------------------------------------


def test_two_job_runners_at_once_release_each_order_once(app, client, admin, buy, small_inline):
    ban_id, ids = refused_orders(client, admin, buy, 8)
    lift(client, admin, ban_id)
    buyers = [db.session.get(Order, i).user_id for i in ids]
    db.session.commit()

    results = together(2, lambda i: risk_jobs.release_lifted_bans(utcnow(), money=app_money(), batch=2), app=app)

    assert not any(isinstance(r, Exception) for r in results), results
    db.session.expire_all()
    assert paid(ids) == 8
    assert [cash(u) for u in buyers] == [HELD] * 8
    assert sum(r["orders"] for r in results) == 8, results
    assert shown(client, admin, ban_id)["release"]["state"] == "done"


def test_a_milestone_reported_while_the_job_releases_is_paid_once(app, client, admin, buy, small_inline):
    # given: a lifted ban whose release runs; one order's lessons not reported yet
    late = buy(device=DEVICE, ip=None)
    ban_id, ids = refused_orders(client, admin, buy, 4)
    lift(client, admin, ban_id)
    late_id = late.id

    def work(i: int):
        if i == 0:
            return report_milestone(db.session.get(Order, late_id), "lessons_10", None, utcnow(), money=app_money())
        return risk_jobs.release_lifted_bans(utcnow(), money=app_money(), batch=2)

    # when: the report and the job at once
    results = together(2, work, app=app)

    # then: the lessons' half paid once, by one of them; the others whole
    assert not any(isinstance(r, Exception) for r in results), results
    db.session.expire_all()
    assert held_of(late_id) == ("held", HELD // 2, HELD - HELD // 2)
    assert cash(db.session.get(Order, late_id).user_id) == HELD // 2
    assert paid(ids) == 4


# -- 3. a ban put back stops the release ---------------------------------------------------------------------------


def test_a_ban_put_back_while_the_release_runs_stops_it_and_its_own_lift_releases_the_rest(
    client, admin, buy, small_inline
):
    # given: a lifted device ban holding 7 orders, one batch of three released
    ban_id, ids = refused_orders(client, admin, buy, 7)
    lift(client, admin, ban_id)
    db.session.commit()
    assert ban_ops.release_batch(ban_id, utcnow(), 3, money=app_money()) == (3, 3 * HELD, True)
    db.session.commit()
    assert paid(ids) == 3

    # when: the device is banned again, and the job runs
    again = ban(client, admin, "device", DEVICE)
    run_job()

    # then: nothing more is paid; the release is stopped, saying by which ban
    assert paid(ids) == 3
    release = shown(client, admin, ban_id)["release"]
    assert release["state"] == "stopped", release
    assert release["orders_done"] == 3

    # when: the new ban is lifted and the job runs
    lift(client, admin, again)
    run_job()

    # then: the rest paid, each once
    assert paid(ids) == 7
    assert sum(cash(db.session.get(Order, i).user_id) for i in ids) == 7 * HELD


def test_a_ban_put_back_at_the_same_time_as_the_job_runs_pays_each_order_at_most_once(
    app, client, admin, buy, small_inline
):
    # given: a lifted device ban holding 8 orders, released in batches of two
    ban_id, ids = refused_orders(client, admin, buy, 8)
    lift(client, admin, ban_id)
    buyers = [db.session.get(Order, i).user_id for i in ids]

    def work(i: int):
        if i == 0:
            return risk_jobs.release_lifted_bans(utcnow(), money=app_money(), batch=2)
        made = app.test_client().post(
            "/admin/api/bans", json={"subject": "device", "value": DEVICE, "reason": "back again"}, headers=admin
        )
        return made.status_code, made.get_json()["id"]

    # when: the job and the device banned again at once
    results = together(2, work, app=app)

    # then: no error; each buyer paid once or not yet, never twice; the release done or stopped
    assert not any(isinstance(r, Exception) for r in results), results
    db.session.expire_all()
    assert results[1][0] == 201
    assert {cash(u) for u in buyers} <= {0, HELD}
    release = shown(client, admin, ban_id)["release"]
    assert release["state"] in ("done", "stopped"), release
    assert release["paid_fen"] == sum(cash(u) for u in buyers)

    # when: the new ban is lifted and the job runs
    lift(client, admin, results[1][1])
    run_job()

    # then: every order paid, once
    assert paid(ids) == 8
    assert [cash(u) for u in buyers] == [HELD] * 8


def test_a_person_banned_again_is_not_paid_by_the_first_bans_release(client, admin, buy, small_inline):
    # given: a buyer with 3 orders (a fourth would be held for a risk review), both milestones of each met under a ban
    # on the person
    first = buy(device=None, ip=None)
    buyer = db.session.get(User, first.user_id)
    orders = [first, *(buy(device=None, ip=None, buyer=buyer) for _ in range(2))]
    ids, buyer_id = [o.id for o in orders], buyer.id
    ban_id = ban(client, admin, "user", str(buyer_id))
    for order in orders:
        for name in ("lessons_10", "test_passed"):
            report_milestone(order, name, None, utcnow(), money=app_money())
    db.session.commit()
    assert paid(ids) == 0

    # when: lifted (left to the job), one batch released, and the person banned again before the rest
    assert lift(client, admin, ban_id)["release"]["state"] == "running"
    db.session.commit()
    assert ban_ops.release_batch(ban_id, utcnow(), 2, money=app_money()) == (2, 2 * HELD, True)
    db.session.commit()
    again = ban(client, admin, "user", str(buyer_id))
    run_job()

    # then: the first two paid, the other waits for the new ban's lift
    assert paid(ids) == 2
    assert cash(buyer_id) == 2 * HELD
    assert shown(client, admin, ban_id)["release"]["state"] == "stopped"
    lift(client, admin, again)
    run_job()
    assert paid(ids) == 3
    assert cash(buyer_id) == 3 * HELD


# -- 4. progress and stalls ----------------------------------------------------------------------------------------


def test_a_release_that_stops_moving_is_alerted_and_shown_stalled(client, admin, buy, small_inline, monkeypatch):
    # given: a lifted ban whose release fails at every batch
    ban_id, ids = refused_orders(client, admin, buy, 4)
    lift(client, admin, ban_id)

    def broken(*args, **kwargs):
        raise RuntimeError("replay failed")

    monkeypatch.setattr(ban_ops, "resume_refused", broken)

    # when: the job runs now, and again past the stall time
    outcome = run_job()
    assert outcome["error"] >= 1
    assert paid(ids) == 0
    alerts = set(db.session.execute(select(Alert.kind).where(Alert.resolved_at.is_(None))).scalars())
    assert "ban_release_failed" in alerts
    later = utcnow() + ban_ops.RELEASE_STALLED_AFTER + timedelta(minutes=1)
    run_job(later)

    # then: an operator is told it stalls, and the ban shows it
    stalled = db.session.execute(select(Alert).where(Alert.kind == "ban_release_stalled")).scalars().all()
    assert [a.subject for a in stalled] == [f"ban {ban_id}"]
    assert shown(client, admin, ban_id)["release"]["orders_left"] == 4

    # when: it works again
    monkeypatch.undo()
    monkeypatch.setattr(ban_ops, "INLINE_RELEASE_ORDERS", 2)
    run_job()

    # then: released, and the stall alert resolved
    assert paid(ids) == 4
    assert db.session.execute(select(Alert.resolved_at).where(Alert.kind == "ban_release_stalled")).scalar() is not None


def test_an_award_whose_deadline_passes_while_the_release_runs_is_paid_not_expired(client, admin, buy, small_inline):
    # given: a lifted ban whose release runs, the held awards' deadline a minute after the lift (before the job's turn)
    ban_id, ids = refused_orders(client, admin, buy, 4)
    lift(client, admin, ban_id)
    lifted_at = db.session.get(Ban, ban_id).lifted_at
    db.session.execute(
        update(Rebate).where(Rebate.order_id.in_(ids)).values(condition_deadline=lifted_at + timedelta(minutes=1))
    )
    db.session.commit()

    # when: the expiry job runs past the deadline before the release's batches
    later = lifted_at + timedelta(minutes=5)
    read, expired = expire_held_after(later, 0)
    db.session.commit()

    # then: nothing the lift owes expired; the release pays each as of the lift, and expiry goes on once it is done
    assert (read, expired) == ([], 0)
    run_job(later)
    assert paid(ids) == 4
    assert shown(client, admin, ban_id)["release"]["state"] == "done"


def test_awards_due_before_a_running_release_began_still_expire(client, admin, buy, small_inline):
    # given: a running release, and a held award of another buyer (no ban) whose deadline passed before that lift
    ban_id, ids = refused_orders(client, admin, buy, 4)
    other = buy(device="another-device", ip=None)
    lift(client, admin, ban_id)
    lifted_at = db.session.get(Ban, ban_id).lifted_at
    db.session.execute(
        update(Rebate).where(Rebate.order_id == other.id).values(condition_deadline=lifted_at - timedelta(minutes=1))
    )
    db.session.commit()

    # when: the expiry job runs
    read, expired = expire_held_after(lifted_at + timedelta(minutes=5), 0)
    db.session.commit()

    # then: that award expired as ever; the release's own are untouched
    assert expired == 1
    assert {r.order_id for r in db.session.execute(select(Rebate).where(Rebate.id.in_(read))).scalars()} == {other.id}
    assert paid(ids) == 0


def test_awards_a_lift_owed_are_paid_when_the_same_ban_put_back_is_lifted_whatever_their_deadline(
    client, admin, buy, small_inline
):
    # given: a lifted device ban holding 7 orders, the awards due an hour after the lift; one batch of three released
    ban_id, ids = refused_orders(client, admin, buy, 7)
    lift(client, admin, ban_id)
    lifted_at = db.session.get(Ban, ban_id).lifted_at
    db.session.execute(
        update(Rebate).where(Rebate.order_id.in_(ids)).values(condition_deadline=lifted_at + timedelta(hours=1))
    )
    db.session.commit()
    assert ban_ops.release_batch(ban_id, utcnow(), 3, money=app_money()).orders == 3
    db.session.commit()

    # when: the device is banned again before the job walked the rest, stays banned past the deadline (the expiry
    # job runs), then is lifted, and the job runs
    again = ban(client, admin, "device", DEVICE)
    run_job()
    assert shown(client, admin, ban_id)["release"]["state"] == "stopped"
    later = lifted_at + timedelta(hours=2)
    assert expire_held_after(later, 0) == ([], 0)
    db.session.commit()
    lift(client, admin, again)
    run_job(later)

    # then: as the lift in one request of before would have: each of the 7 paid once
    assert paid(ids) == 7
    assert shown(client, admin, ban_id)["release"]["state"] == "done"
    assert sum(cash(db.session.get(Order, i).user_id) for i in ids) == 7 * HELD


def test_a_stalled_release_keeps_only_its_own_awards_from_expiring(client, admin, buy, small_inline, monkeypatch):
    # given: a lifted ban whose release fails at every batch, and another buyer's award due a minute after the lift
    ban_id, ids = refused_orders(client, admin, buy, 4)
    other = buy(device="another-device", ip=None)
    lift(client, admin, ban_id)
    lifted_at = db.session.get(Ban, ban_id).lifted_at
    db.session.execute(
        update(Rebate)
        .where(Rebate.order_id.in_([*ids, other.id]))
        .values(condition_deadline=lifted_at + timedelta(minutes=1))
    )
    db.session.commit()

    def broken(*args, **kwargs):
        raise RuntimeError("replay failed")

    monkeypatch.setattr(ban_ops, "resume_refused", broken)
    run_job()

    # when: the expiry job runs a month later, the release still stalled
    read, expired = expire_held_after(lifted_at + timedelta(days=30), 0)
    db.session.commit()

    # then: the other buyer's award expired; the release's own wait for it
    assert expired == 1
    assert {r.order_id for r in db.session.execute(select(Rebate).where(Rebate.id.in_(read))).scalars()} == {other.id}
    assert all(held_of(i) == ("held", 0, HELD) for i in ids)


def test_a_late_report_of_another_milestone_does_not_expire_what_a_running_release_owes(
    client, admin, buy, small_inline
):
    # given: 4 orders from a banned device, lessons_10 met (refused) under the ban; lifted: the job's release runs
    orders = [buy(device=DEVICE, ip=None) for _ in range(4)]
    ban_id = ban(client, admin, "device", DEVICE)
    for o in orders:
        report_milestone(o, "lessons_10", None, utcnow(), money=app_money())
    db.session.commit()
    lift(client, admin, ban_id)
    ban_row = db.session.get(Ban, ban_id)
    assert ban_row.release_state == "running"
    lifted_at = ban_row.lifted_at
    ids = [o.id for o in orders]
    db.session.execute(
        update(Rebate).where(Rebate.order_id.in_(ids)).values(condition_deadline=lifted_at + timedelta(minutes=1))
    )
    db.session.commit()

    # when: test_passed on the last order is reported after the deadline, before the job reaches it; then the job runs
    late = lifted_at + timedelta(minutes=2)
    report_milestone(db.session.get(Order, ids[-1]), "test_passed", None, late, money=app_money())
    db.session.commit()
    run_job(late)

    # then: as a lift in one request would have paid: lessons_10's part of every order (it was met before the
    # deadline and the ban lifted before it)
    got = [held_of(i) for i in ids]
    assert all(amount == HELD // 2 for _, amount, _ in got), got


def test_a_resumed_release_does_not_pay_what_the_second_ban_refused_past_the_deadline(client, admin, buy, small_inline):
    # given: 4 orders, lessons_10 refused under ban A; A lifted (running); deadline an hour after the lift
    orders = [buy(device=DEVICE, ip=None) for _ in range(4)]
    first = ban(client, admin, "device", DEVICE)
    for o in orders:
        report_milestone(o, "lessons_10", None, utcnow(), money=app_money())
    db.session.commit()
    lift(client, admin, first)
    lifted_at = db.session.get(Ban, first).lifted_at
    ids = [o.id for o in orders]
    db.session.execute(
        update(Rebate).where(Rebate.order_id.in_(ids)).values(condition_deadline=lifted_at + timedelta(hours=1))
    )
    db.session.commit()

    # when: the device is banned again before the job ran (A stops), test_passed is met under ban B, the deadline
    # passes with B in force, B is lifted two hours later and the job runs
    again = ban(client, admin, "device", DEVICE)
    run_job()
    assert shown(client, admin, first)["release"]["state"] == "stopped"
    for o in orders:
        report_milestone(db.session.get(Order, o.id), "test_passed", None, utcnow(), money=app_money())
    db.session.commit()
    deadline = utcnow()  # after the reports, before B's lift: B was in force at the deadline
    db.session.execute(update(Rebate).where(Rebate.order_id.in_(ids)).values(condition_deadline=deadline))
    db.session.commit()
    assert deadline > lifted_at
    lift(client, admin, again)
    run_job(lifted_at + timedelta(hours=2))

    # then: A owed lessons_10's part; test_passed was refused by B until past the deadline: not paid
    got = [held_of(i) for i in ids]
    buyers = sum(cash(db.session.get(Order, i).user_id) for i in ids)
    assert buyers == 4 * HELD // 2, (got, buyers)


def test_a_lagging_release_does_not_pay_what_another_ban_standing_at_its_lift_refused_and_lifted_too_late(
    client, admin, buy, small_inline
):
    # given: 4 orders from a banned device, one buyer banned too; both milestones met under the bans
    orders = [buy(device=DEVICE, ip=None) for _ in range(4)]
    device_ban = ban(client, admin, "device", DEVICE)
    person_ban = ban(client, admin, "user", str(orders[0].user_id))
    for o in orders:
        for name in ("lessons_10", "test_passed"):
            report_milestone(db.session.get(Order, o.id), name, None, utcnow(), money=app_money())
    db.session.commit()
    ids = [o.id for o in orders]
    assert all(held_of(i) == ("held", 0, HELD) for i in ids)

    # when: the device ban is lifted (its release left to the job), the deadline passes just after that lift with
    # the person's ban still standing, that ban is lifted two minutes later, and only then the device's job runs
    t = utcnow() + timedelta(seconds=5)
    ban_ops._lift(device_ban, t, "cleared", None, app_money())
    db.session.commit()
    assert shown(client, admin, device_ban)["release"]["state"] == "running"
    db.session.execute(
        update(Rebate).where(Rebate.order_id.in_(ids)).values(condition_deadline=t + timedelta(milliseconds=1))
    )
    db.session.commit()
    ban_ops._lift(person_ban, t + timedelta(minutes=2), "cleared", None, app_money())  # its own lift: too late
    db.session.commit()
    run_job(t + timedelta(minutes=3))

    # then: the other three buyers are paid as of the device's lift; the banned buyer's milestones were refused by
    # their own ban then, which was lifted only after the deadline: as a lift in one request would have decided
    assert [held_of(i) for i in ids[1:]] == [("awarded", HELD, 0)] * 3
    assert cash(orders[0].user_id) == 0
    assert held_of(ids[0])[1] == 0


def test_two_bans_lifted_a_moment_apart_with_crossed_clocks_still_pay_the_buyer(client, admin, buy):
    """The second lift to commit carries a ``now`` a second earlier than the first's (another node's clock behind,
    or a request that took its ``now`` before waiting on the first lift's lock): neither release may take the
    other's ban for one still standing (``risk.bans.LIFTS_APART``), or no release pays though no ban stands."""
    order = buy(device=DEVICE, ip=None)
    device_ban = ban(client, admin, "device", DEVICE)
    person_ban = ban(client, admin, "user", str(order.user_id))
    for name in ("lessons_10", "test_passed"):
        report_milestone(db.session.get(Order, order.id), name, None, utcnow(), money=app_money())
    db.session.commit()
    assert held_of(order.id) == ("held", 0, HELD)

    t = utcnow() + timedelta(seconds=5)
    ban_ops._lift(device_ban, t, "cleared", None, app_money())  # the person's ban stands: nothing paid yet
    db.session.commit()
    assert held_of(order.id) == ("held", 0, HELD)
    ban_ops._lift(person_ban, t - timedelta(seconds=1), "cleared", None, app_money())
    db.session.commit()
    db.session.expire_all()

    assert held_of(order.id) == ("awarded", HELD, 0)
