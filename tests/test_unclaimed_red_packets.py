"""Cash red packets nobody opened (issue 9 §3): WeChat refunds them after 24 h; the user gets the money back.

End to end on the app's simulator: a packet is sent, the simulator refunds it
unopened (or the user opens it), and the job queries it after WeChat's refund time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from insights.trace import _payout
from jobs.payouts import check_unclaimed, dispatch_due, payout_rails
from ledger import account, balance
from models import AccountKind, LedgerEntry, Payout, PayoutAttempt, User, db, utcnow
from models.base import BEIJING
from payouts import MoneySettings, enqueue_payout
from payouts.record import DispatchSettings
from payouts.unclaimed import return_unclaimed
from tests.money_helpers import queue_from_balance
from tests.test_wechat_callbacks import simulator


def ten_am_tomorrow() -> datetime:
    day = utcnow().astimezone(BEIJING).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, 10, tzinfo=BEIJING).astimezone(UTC)


@pytest.fixture
def sent_packet(app, make_user):
    """A 5-yuan cash red packet from the user's balance, sent at 10:00 Beijing time tomorrow."""

    def make(amount_fen: int = 5_00) -> Payout:
        user = make_user(appid=app.config["WECHAT_OA_APPID"])
        payout = queue_from_balance(user, amount_fen, rail="cash_red_packet", tag="r")
        at = ten_am_tomorrow()
        dispatch_due(payout_rails(app), settings=DispatchSettings.from_config(app.config), clock=lambda: at)
        db.session.expire_all()
        payout = db.session.get(Payout, payout.id)
        assert payout.status == "succeeded" and simulator(app).redpacks[payout.external_no]["status"] == "SENT"
        return payout

    return make


def rail(app):
    return payout_rails(app)["cash_red_packet"]


def cash_of(payout: Payout) -> int:
    return balance(account(AccountKind.USER_CASH, "user", payout.user_id))


def checks(payout: Payout) -> int:
    return db.session.scalar(select(func.count()).where(PayoutAttempt.payout_id == payout.id))


def test_an_unopened_packet_refunded_by_wechat_goes_back_to_the_balance_with_the_reason(
    app, client, sent_packet, user_headers
):
    # given: a packet nobody opened; WeChat refunded it after 24 h
    payout = sent_packet(5_00)
    assert cash_of(payout) == 0
    simulator(app).refund_unopened_redpack(payout.external_no)
    # when: the job runs after the refund time
    outcomes = check_unclaimed(rail(app), payout.sent_at + timedelta(hours=26))
    # then: the money is the user's again, with the reason in the trace and the user's history
    assert dict(outcomes) == {"unclaimed": 1}
    db.session.expire_all()
    payout = db.session.get(Payout, payout.id)
    assert cash_of(payout) == 5_00
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 0
    assert "nobody opened" in payout.last_error and "back in your balance" in payout.last_error
    user = db.session.get(User, payout.user_id)
    [mine] = client.get("/api/v1/me/payouts", headers=user_headers(user)).json["items"]
    assert "back in your balance" in mine["reason"]
    info, line = _payout(payout)  # how the order trace describes the payout
    assert "back in your balance" in line and info["last_error"] == payout.last_error
    # and: another run changes nothing (one ledger entry, not due any more)
    assert not check_unclaimed(rail(app), payout.sent_at + timedelta(hours=30))
    assert cash_of(payout) == 5_00
    key = f"payout:{payout.id}:unclaimed"
    assert db.session.scalar(select(func.count()).where(LedgerEntry.idempotency_key == key)) == 1


def test_returning_an_unclaimed_packet_twice_moves_the_money_once(app, sent_packet):
    payout = sent_packet(3_00)
    return_unclaimed(payout, "nobody opened it", utcnow())
    return_unclaimed(payout, "nobody opened it", utcnow())
    db.session.commit()
    assert cash_of(payout) == 3_00


def test_an_opened_packet_is_done_and_never_asked_again(app, sent_packet):
    payout = sent_packet(5_00)
    simulator(app).receive_redpack(payout.external_no)
    assert dict(check_unclaimed(rail(app), payout.sent_at + timedelta(hours=26))) == {"succeeded": 1}
    assert not check_unclaimed(rail(app), payout.sent_at + timedelta(days=2))
    db.session.expire_all()
    assert cash_of(payout) == 0 and checks(payout) == 2  # the send, and one check
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 5_00


def test_a_packet_is_not_asked_before_wechats_refund_time(app, sent_packet):
    payout = sent_packet(5_00)
    assert not check_unclaimed(rail(app), payout.sent_at + timedelta(hours=24))


def test_a_packet_still_sent_is_asked_again_on_the_next_run(app, sent_packet):
    payout = sent_packet(5_00)
    later = payout.sent_at + timedelta(hours=26)
    assert dict(check_unclaimed(rail(app), later)) == {"in_progress": 1}  # SENT: not opened, not refunded yet
    db.session.expire_all()
    # …a SENT answer is not final: the packet is asked again until RECEIVED or REFUND
    simulator(app).refund_unopened_redpack(payout.external_no)
    assert dict(check_unclaimed(rail(app), later + timedelta(hours=1))) == {"unclaimed": 1}
    assert cash_of(payout) == 5_00


def test_a_planted_answer_for_another_amount_moves_nothing_and_alerts(app, sent_packet):
    from models import Alert

    payout = sent_packet(5_00)
    sim = simulator(app)
    sim.refund_unopened_redpack(payout.external_no)
    sim.redpacks[payout.external_no]["params"]["total_amount"] = "50000"
    assert dict(check_unclaimed(rail(app), payout.sent_at + timedelta(hours=26))) == {"mismatch": 1}
    assert cash_of(payout) == 0
    assert db.session.query(Alert).filter_by(kind="payout_answer_mismatch").count() == 1


def test_a_packet_the_dispatcher_finds_refunded_returns_to_the_balance_without_a_new_packet(app, make_user):
    from payouts.rails import Outcome, RailResult
    from payouts.record import apply_result
    from payouts.transitions import mark_sent

    # given: a packet whose send answer was lost (unknown), queried only after WeChat refunded it
    user = make_user(appid=app.config["WECHAT_OA_APPID"])
    fund = account(AccountKind.PLATFORM_MARKETING_FUND)
    payout = enqueue_payout(
        number_prefix="", rail="cash_red_packet", user_id=user.id, amount_fen=2_00, source=fund, key="u", memo="u"
    )
    mark_sent(payout, utcnow())
    payout.status = "sending"
    # when
    apply_result(
        payout,
        RailResult(Outcome.UNCLAIMED, "REFUND", "nobody opened it"),
        utcnow(),
        DispatchSettings(money=MoneySettings()),
    )
    db.session.commit()
    # then: the user's money, in their balance; no new packet sent unasked
    assert payout.status == "failed" and "back in your balance" in payout.last_error
    assert cash_of(payout) == 2_00
    assert db.session.scalar(select(func.count()).where(Payout.retry_of_id == payout.id)) == 0


def alerts_for(kind: str, payout: Payout) -> list[str]:
    from models import Alert

    return [a.message for a in db.session.query(Alert).filter_by(kind=kind, subject=payout.external_no)]


def test_a_refund_of_another_amount_goes_to_an_operator_at_once_and_moves_nothing(app, sent_packet, monkeypatch):
    # given: WeChat says REFUND, but of less than the packet's amount
    payout = sent_packet(5_00)
    simulator(app).refund_unopened_redpack(payout.external_no)
    packets = rail(app)
    original = packets.client.query

    def partial(mch_billno):
        answer = original(mch_billno)
        answer.fields["refund_amount"] = "200"
        return answer

    monkeypatch.setattr(packets.client, "query", partial)
    # when
    outcomes = check_unclaimed(packets, payout.sent_at + timedelta(hours=26))
    # then: an alert naming the payout now, no money moved, and never asked again (no silent requery)
    assert dict(outcomes) == {"mismatch": 1}
    [message] = alerts_for("payout_answer_mismatch", payout)
    assert payout.external_no in message and "200" in message
    assert cash_of(payout) == 0 and balance(account(AccountKind.WECHAT_SETTLEMENT)) == 5_00
    assert not check_unclaimed(packets, payout.sent_at + timedelta(hours=27))
    assert len(alerts_for("payout_answer_mismatch", payout)) == 1


def test_a_packet_without_a_final_answer_at_the_end_of_the_window_raises_an_alert(app, sent_packet):
    # given: a packet WeChat still reports as SENT each time it is asked
    payout = sent_packet(5_00)
    assert dict(check_unclaimed(rail(app), payout.sent_at + timedelta(hours=26))) == {"in_progress": 1}
    # when: gethbinfo's 30-day window ends with no final answer
    outcomes = check_unclaimed(rail(app), payout.sent_at + timedelta(days=30, minutes=1))
    # then: it does not vanish: an operator is alerted, naming it; nothing moved
    assert dict(outcomes) == {"ask_operator": 1}
    [message] = alerts_for("red_packet_unresolved", payout)
    assert payout.external_no in message and "30 days" in message
    assert cash_of(payout) == 0 and balance(account(AccountKind.WECHAT_SETTLEMENT)) == 5_00
    # and: once only
    assert not check_unclaimed(rail(app), payout.sent_at + timedelta(days=31))
    assert len(alerts_for("red_packet_unresolved", payout)) == 1


def test_a_packet_never_checked_inside_the_window_is_still_alerted(app, sent_packet):
    payout = sent_packet(5_00)  # the job did not run for a month
    assert dict(check_unclaimed(rail(app), payout.sent_at + timedelta(days=40))) == {"ask_operator": 1}
    assert len(alerts_for("red_packet_unresolved", payout)) == 1


def test_a_packet_settled_inside_the_window_is_not_alerted_at_its_end(app, sent_packet):
    payout = sent_packet(5_00)
    simulator(app).receive_redpack(payout.external_no)
    check_unclaimed(rail(app), payout.sent_at + timedelta(hours=26))
    assert not check_unclaimed(rail(app), payout.sent_at + timedelta(days=31))
    assert alerts_for("red_packet_unresolved", payout) == []


def test_a_failing_check_keeps_one_open_alert_not_one_every_pass(app, sent_packet, monkeypatch):
    from payouts.rails import Outcome, RailResult

    payout = sent_packet(5_00)
    packets = rail(app)
    monkeypatch.setattr(packets, "query", lambda no, req: RailResult(Outcome.CONFIG_ERROR, "SIGN_ERROR", "bad sign"))
    for hours in (26, 27, 28):
        assert dict(check_unclaimed(packets, payout.sent_at + timedelta(hours=hours))) == {"config_error": 1}
    assert len(alerts_for("payout_claim_check", payout)) == 1


def test_a_packet_given_back_is_dated_by_wechat_and_matched_by_that_days_fund_flow_bill(app, sent_packet):
    from jobs.payouts import reconcile_day
    from models.reconciliation import ReconciliationMismatch, ReconciliationRun

    # given: a packet nobody opened, given back by WeChat, and our check that found it
    payout = sent_packet(5_00)
    sim = simulator(app)
    sim.refund_unopened_redpack(payout.external_no)
    check_unclaimed(rail(app), payout.sent_at + timedelta(hours=26))
    db.session.expire_all()
    payout = db.session.get(Payout, payout.id)
    refund_time = sim.redpacks[payout.external_no]["refund_time"]  # Beijing time, as gethbinfo says it
    assert payout.returned_at == datetime.fromisoformat(refund_time).replace(tzinfo=BEIJING)
    # when: the day of the refund is reconciled against the simulator's bills
    day = refund_time[:10]
    after = datetime.fromisoformat(day).replace(hour=10, tzinfo=BEIJING) + timedelta(days=1)
    reconcile_day(app.extensions["wechat"].pay, day, after.astimezone(UTC))
    # then: its send and its return are both in the bill, and both match
    db.session.rollback()
    assert db.session.scalars(select(ReconciliationMismatch)).all() == []
    fund = db.session.scalars(select(ReconciliationRun).where(ReconciliationRun.kind == "fundflow")).one()
    assert (fund.status, fund.lines_read, fund.matched) == ("done", 2, 2)


# -- one packet that cannot be checked never keeps the others' money back ---------------------------------


def test_a_refund_time_at_the_calendars_end_is_no_date_and_the_money_still_comes_back(app, sent_packet):
    from payouts.redpack_rail import refund_time

    assert refund_time("0001-01-01 00:00:00") is None  # no UTC instant: dated by our check instead
    assert refund_time("0001-01-01 07:59:59") is None
    assert refund_time("2026-01-02 08:00:00") == datetime(2026, 1, 2, tzinfo=UTC)
    # given: two packets WeChat refunded, one with a refund_time that has no UTC instant
    odd, fine = sent_packet(5_00), sent_packet(3_00)
    sim = simulator(app)
    sim.refund_unopened_redpack(odd.external_no)
    sim.refund_unopened_redpack(fine.external_no)
    sim.redpacks[odd.external_no]["refund_time"] = "0001-01-01 00:00:00"
    later = max(odd.sent_at, fine.sent_at) + timedelta(hours=26)
    # when
    outcomes = check_unclaimed(rail(app), later)
    # then: both back in their balances, the odd one dated by our check
    assert dict(outcomes) == {"unclaimed": 2}
    db.session.expire_all()
    assert (cash_of(odd), cash_of(fine)) == (5_00, 3_00)
    assert not check_unclaimed(rail(app), later + timedelta(hours=1))


def test_a_packet_whose_answer_cannot_be_recorded_is_skipped_and_the_others_come_back(app, sent_packet, monkeypatch):
    from models import Alert
    from payouts import unclaimed

    # given: two refunded packets; recording the first one's answer fails
    odd, fine = sent_packet(5_00), sent_packet(3_00)
    for packet in (odd, fine):
        simulator(app).refund_unopened_redpack(packet.external_no)
    original = unclaimed.record_check

    def record_check(payout_id, request, answer, at):
        original(payout_id, request, answer, at)  # its writes are rolled back with it
        if payout_id == odd.id:
            raise RuntimeError("cannot record this one")

    monkeypatch.setattr(unclaimed, "record_check", record_check)
    later = max(odd.sent_at, fine.sent_at) + timedelta(hours=26)
    # when: the job runs, twice
    first = check_unclaimed(rail(app), later)
    second = check_unclaimed(rail(app), later + timedelta(hours=1))
    # then: the other packet's money is back; the bad one is logged, alerted once, nothing of it kept, asked again
    assert dict(first) == {"unclaimed": 1, "error": 1} and dict(second) == {"error": 1}
    db.session.expire_all()
    assert (cash_of(odd), cash_of(fine)) == (0, 3_00)
    assert db.session.get(Payout, odd.id).status == "succeeded"
    assert db.session.query(Alert).filter_by(kind="payout_claim_check_failed", subject=f"payout {odd.id}").count() == 1
    # and: once it can be recorded, it comes back too
    monkeypatch.setattr(unclaimed, "record_check", original)
    assert dict(check_unclaimed(rail(app), later + timedelta(hours=2))) == {"unclaimed": 1}
    db.session.expire_all()
    assert cash_of(odd) == 5_00
