"""Probe 20, scheduled jobs that fail quietly: a row (or a whole job) busy on every run, a row that fails at the head of
every expiry batch, and a profit share waiting for a ban until WeChat's frozen-money deadline."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import TimeoutError as PoolTimeout

import jobs.scheduler as scheduler
from jobs.payouts import row_failed
from models import Alert, db, utcnow
from tests.conftest import release_test_session
from tests.test_jobs_outside import lapsed_packets  # noqa: F401 - fixture
from tests.test_profit_sharing import sim, story  # noqa: F401 - fixtures (service-provider mode: the class below)


def _busy() -> PoolTimeout:
    return PoolTimeout("QueuePool limit of size 5 overflow 10 reached")


class Clock:
    """``jobs.scheduler``'s monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(scheduler, "monotonic", clock, raising=False)
    return clock


def _alerts(kind: str) -> list[tuple[str, bool]]:
    db.session.rollback()
    rows = db.session.execute(select(Alert).where(Alert.kind == kind).order_by(Alert.id)).scalars()
    found = [(a.subject, a.resolved_at is None) for a in rows]
    db.session.rollback()  # SQLite: the test's transaction holds the write lock the job's run waits for
    return found


def scheduled(app, job):
    """``job`` as the scheduler runs it (``jobs.scheduler.in_app``: its own app context and session)."""
    run = scheduler.in_app(app, job)

    def once() -> None:
        release_test_session()
        run()

    return once


# -- 1. a row deferred as busy on every run pages, once, after a bounded time -----------------------------------------


def test_a_row_busy_on_every_run_is_alerted_once_and_cleared_when_it_goes_through(app, clock):
    # given: a job one of whose rows meets a busy database on every run (a lock holder that never lets go)
    state = {"busy": True}

    def settle_people():
        if state["busy"]:
            row_failed("covered_debt_failed", "user", 7, _busy())

    run = scheduled(app, settle_people)
    # when: it runs every five minutes; a one-off contention (two runs, a minute apart) is only a warning
    run()
    clock.now += 60
    run()
    assert _alerts("row_stuck_busy") == []
    # ... but still busy after the bound, run after run: one alert (not one per run)
    for _ in range(6):
        clock.now += 300
        run()
    assert _alerts("row_stuck_busy") == [("user 7", True)]
    message = db.session.execute(select(Alert.message).where(Alert.kind == "row_stuck_busy")).scalar_one()
    db.session.rollback()
    assert "covered_debt_failed" in message and "settle_people" in message
    # when: the row goes through
    state["busy"] = False
    clock.now += 300
    run()
    # then: its alert is cleared; busy again, a new streak pages again only after the bound
    assert _alerts("row_stuck_busy") == [("user 7", False)]
    state["busy"] = True
    run()
    clock.now += 60
    run()
    assert _alerts("row_stuck_busy") == [("user 7", False)]
    clock.now += scheduler.BUSY_ALERT_AFTER.total_seconds()
    run()
    assert _alerts("row_stuck_busy") == [("user 7", False), ("user 7", True)]


def test_a_job_busy_on_every_run_is_alerted_once_and_cleared_when_it_runs(app, clock):
    # given: a job that meets a busy database as a whole on every run (every pooled connection held, say)
    state = {"busy": True}

    def fold_marks():
        if state["busy"]:
            raise _busy()

    run = scheduled(app, fold_marks)
    run()
    clock.now += 60
    run()
    assert _alerts("job_stuck_busy") == []
    for _ in range(5):
        clock.now += 300
        run()
    assert _alerts("job_stuck_busy") == [("fold_marks", True)]
    state["busy"] = False
    clock.now += 300
    run()
    assert _alerts("job_stuck_busy") == [("fold_marks", False)]


def test_a_row_busy_outside_the_scheduler_is_still_only_a_warning(app):
    # given: `flask jobs run-once` (no run of the scheduler around it): a busy row is deferred as before
    row_failed("covered_debt_failed", "user", 7, _busy())
    assert _alerts("row_stuck_busy") == [] and _alerts("covered_debt_failed") == []


# -- 2. a row failing at the head of every expiry batch does not stall expiry --------------------------------------


def test_rows_failing_at_the_head_of_every_batch_do_not_stop_the_others_expiring(app, lapsed_packets, monkeypatch):  # noqa: F811
    import jobs.expiring
    import jobs.payouts
    import rebate.packets as packets_module
    from jobs.scheduler import build_scheduler
    from models import Campaign, PacketStatus, RedPacket

    # given: five lapsed packets, the first two of which fail to expire (a bad row) every time; a batch of two
    campaign, packets = lapsed_packets(5)
    bad = {packets[0].id, packets[1].id}
    reserved_by_bad = sum(p.reserved_fen for p in packets[:2])
    monkeypatch.setattr(jobs.expiring, "EXPIRE_BATCH", 2)
    real = packets_module.release_packet
    released: list[int] = []

    def release(packet, status):
        if packet.id in bad:
            raise RuntimeError("a bad row")
        released.append(packet.id)
        return real(packet, status)

    monkeypatch.setattr(packets_module, "release_packet", release)
    job = build_scheduler(app).get_job("expire_packets_and_conditions").func
    release_test_session()
    # when: the scheduler's expiry job runs, twice
    job()
    job()
    # then: the three others expired in the first run (it had stopped at the first batch, both its rows failing:
    # none expired, run after run), each once; the bad two alerted once each and left as they were
    db.session.expire_all()
    statuses = [db.session.get(RedPacket, p.id).status for p in packets]
    assert statuses == [PacketStatus.ISSUED] * 2 + [PacketStatus.EXPIRED] * 3
    assert sorted(released) == sorted(p.id for p in packets[2:])
    assert db.session.get(Campaign, campaign.id).budget_reserved_fen == reserved_by_bad
    assert sorted(_alerts("packet_expiry_failed")) == sorted((f"packet {i}", True) for i in bad)


def test_a_row_failing_in_a_full_batch_does_not_end_the_run(lapsed_packets, monkeypatch):  # noqa: F811
    import jobs.expiring
    import rebate.packets as packets_module
    from models import PacketStatus, RedPacket

    # given: five lapsed packets, batches of two, the first failing
    _, packets = lapsed_packets(5)
    monkeypatch.setattr(jobs.expiring, "EXPIRE_BATCH", 2, raising=False)
    real = packets_module.release_packet

    def release(packet, status):
        if packet.id == packets[0].id:
            raise RuntimeError("a bad row")
        return real(packet, status)

    monkeypatch.setattr(packets_module, "release_packet", release)
    # when: one run
    result = jobs.expiring.expire_packets_and_conditions()
    # then: all four others expired in it (a batch of one done of two had ended the run: 1 a run)
    db.session.expire_all()
    assert [db.session.get(RedPacket, p.id).status for p in packets[1:]] == [PacketStatus.EXPIRED] * 4
    assert (result["packets"], result["packets_failed"]) == (4, 1)


# -- 3. a profit share waiting for a ban: alerted again before WeChat unfreezes the order's money -------------------


class TestAShareWaitingForABan:
    @pytest.fixture
    def app_settings(self, app_settings):
        return {**app_settings, "FUND_FLOW": "service_provider"}

    def _banned_and_due(self, story, paid_days_ago: int):
        from jobs.profit_sharing import share_due_orders
        from models import Order, User, UserStatus
        from tests.test_profit_sharing import hold_passes, share_of

        order, buyer, _, _ = story()
        db.session.get(User, buyer.id).status = UserStatus.BANNED
        db.session.commit()
        share_due_orders()  # its share opened, due when the refund window closes
        hold_passes(order.id)
        share_due_orders()
        assert _alerts("profit_share_waits_for_ban") == [(share_of(order.id).out_order_no, True)]
        row = share_of(order.id)
        db.session.get(Order, order.id).paid_at = utcnow() - timedelta(days=paid_days_ago)
        row.next_attempt_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
        return order, row.out_order_no

    def test_the_operator_is_alerted_again_a_week_before_wechat_unfreezes_the_money(self, story):  # noqa: F811
        from jobs.profit_sharing import share_due_orders
        from tests.test_profit_sharing import share_of

        # given: a share waiting for a banned person it pays, its order paid 174 days ago (the ban permanent)
        order, number = self._banned_and_due(story, 174)
        # when: the job comes round again, and again
        share_due_orders()
        row = share_of(order.id)
        row.next_attempt_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
        share_due_orders()
        # then: one more alert, saying when WeChat unfreezes the money and what the operator must do before it
        assert _alerts("profit_share_frozen_deadline") == [(number, True)]
        message = db.session.execute(
            select(Alert.message).where(Alert.kind == "profit_share_frozen_deadline")
        ).scalar_one()
        assert "180 days" in message and "lift the ban" in message and "cancel" in message
        assert share_of(order.id).kind is None  # still waiting, nothing sent

    def test_a_share_far_from_the_deadline_is_not_alerted_again(self, story):  # noqa: F811
        from jobs.profit_sharing import share_due_orders

        self._banned_and_due(story, 100)
        share_due_orders()
        assert _alerts("profit_share_frozen_deadline") == []
