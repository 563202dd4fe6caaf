"""Round 18 probes of refunds, clawbacks and milestone rebates: payouts in flight when a refund lands, refunds told
out of order or begun elsewhere, service-provider orders. Amounts in comments are yuan; asserted: fen."""

from __future__ import annotations

from sqlalchemy import func, select

from ledger import account, balance, check_ledger
from models import AccountKind, Payout, Receivable, db, utcnow
from rebate import apply_refund, begin_refund, create_order, issue_packet
from rebate.covered_debts import settle_covered
from rebate.orders import LineRequest
from tests.money_helpers import app_money

K = AccountKind


def bal(kind, owner_type=None, owner_id=None) -> int:
    return balance(account(kind, owner_type, owner_id))


def ledger_ok() -> None:
    report = check_ledger(app_money().point_value_fen)
    assert report.ok, report.violations


def owed(user) -> int:
    return int(
        db.session.execute(
            select(func.coalesce(func.sum(Receivable.outstanding_fen), 0)).where(
                Receivable.beneficiary_type == "user",
                Receivable.beneficiary_id == user.id,
                Receivable.outstanding_fen > 0,
            )
        ).scalar_one()
    )


def change_order(make_user, make_product, make_campaign, pay):
    """5 yuan of change on a 100.01-yuan order (a 1-fen packet on it), its transfer queued."""
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "wechat_change", "cap_fen": 20_00}]},
        budget_limit_fen=100_00,
        packet_amount_fen=1,
    )
    user = make_user()
    packet = issue_packet(campaign, user, source="test", source_ref="c", now=utcnow())
    db.session.commit()
    order = create_order(user, [LineRequest(make_product(price_fen=100_01).id, 1)], packet.id, utcnow())
    db.session.commit()
    assert pay(order) == "applied"
    db.session.refresh(order)
    [payout] = db.session.execute(select(Payout).filter_by(order_id=order.id)).scalars()
    assert (payout.amount_fen, payout.status) == (5_00, "pending")
    return campaign, user, order, payout


def test_a_transfer_that_fails_after_a_refund_took_its_rebate_back_is_not_sent_again(
    app, make_user, make_product, make_campaign, pay
):
    from payouts.rails import Outcome, RailResult
    from payouts.record import DispatchSettings, apply_result
    from payouts.transitions import mark_sent, move

    # given: the 5-yuan transfer is at WeChat (its answer unknown) when the whole order is refunded: the clawback
    # finds nothing to take back, so the person owes 5 yuan
    campaign, user, order, payout = change_order(make_user, make_product, make_campaign, pay)
    move(payout, "sending")
    mark_sent(payout, utcnow())
    move(payout, "unknown")
    db.session.commit()
    begin_refund(order, "F1", order.payable_fen)
    apply_refund(order.out_trade_no, "F1", order.payable_fen, utcnow(), refund_id="wx-F1", money=app_money())
    db.session.commit()
    assert owed(user) == 5_00

    # when: WeChat then says the transfer failed for good
    apply_result(
        payout, RailResult(Outcome.FAILED, "FAIL", "bank refused"), utcnow(), DispatchSettings(money=app_money())
    )
    db.session.commit()

    # then: the 5 yuan came back and pay what the person owes; no new transfer sends them the rebate again
    retries = db.session.execute(select(Payout).filter_by(retry_of_id=payout.id)).scalars().all()
    assert [(r.amount_fen, r.status) for r in retries if r.status != "cancelled"] == []
    assert bal(K.USER_CASH, "user", user.id) == 0
    settle_covered(user.id, app_money().point_value_fen)  # (the sweep job's step)
    db.session.commit()
    assert owed(user) == 0
    ledger_ok()


def test_a_refund_that_cancels_the_last_held_part_of_a_milestone_rebate_leaves_it_awarded_not_held(education, pay):
    from models import Rebate
    from rebate.milestones import report_milestone

    # given: the teacher's 195-yuan share of a 1950-yuan tuition, released in two parts; the lessons are done
    school, course, teacher, campaign, student, packet = education
    order = create_order(student, [LineRequest(course.id, 1)], packet.id, utcnow())
    db.session.commit()
    assert pay(order) == "applied"
    report_milestone(order, "lessons_10", None, utcnow(), money=app_money())
    db.session.commit()
    share = db.session.execute(select(Rebate).filter_by(order_id=order.id)).scalar_one()
    assert (share.status, share.amount_fen, share.held_fen) == ("held", 97_50, 97_50)

    # when: half the tuition is refunded: the part still held (the test's) is cancelled
    begin_refund(order, "EDU-HALF", order.payable_fen // 2)
    apply_refund(order.out_trade_no, "EDU-HALF", order.payable_fen // 2, utcnow(), money=app_money())
    db.session.commit()

    # then: nothing waits for a milestone any more: the share is awarded, not "held until its condition is met"
    db.session.refresh(share)
    assert (share.amount_fen, share.held_fen) == (97_50, 0)
    assert share.status == "awarded"
    assert bal(K.USER_CASH, "user", teacher.id) == 97_50
    ledger_ok()


def _taken_back_while_at_wechat(make_user, make_product, make_campaign, pay):
    """The 5-yuan transfer is with WeChat (its answer unknown) when the whole order is refunded: the clawback finds
    nothing to take back, so the person owes 5 yuan and the payout is asked to stop."""
    from payouts.transitions import mark_sent, move

    campaign, user, order, payout = change_order(make_user, make_product, make_campaign, pay)
    move(payout, "sending")
    mark_sent(payout, utcnow())
    move(payout, "unknown")
    payout.next_attempt_at = utcnow()
    db.session.commit()
    begin_refund(order, "F1", order.payable_fen)
    apply_refund(order.out_trade_no, "F1", order.payable_fen, utcnow(), refund_id="wx-F1", money=app_money())
    db.session.commit()
    assert owed(user) == 5_00
    db.session.refresh(payout)
    assert payout.cancel_requested
    return user, payout


def test_a_stopped_transfer_wechat_never_had_is_cancelled_not_sent(app, make_user, make_product, make_campaign, pay):
    from jobs.payouts import dispatch_backlog
    from payouts.rails import Outcome, RailResult
    from tests.test_dispatch import ScriptedRail

    user, payout = _taken_back_while_at_wechat(make_user, make_product, make_campaign, pay)
    # when: the next pass asks WeChat, which never had the bill
    rail = ScriptedRail(RailResult(Outcome.SUCCEEDED, "SUCCESS", wechat_ref="bill-x"))
    dispatch_backlog({rail.name: rail})
    # then: nothing is sent (it had been POSTed then: the rebate the refund took back paid after all, the debt left
    # open); the 5 yuan are back in the balance and pay what the person owes
    assert rail.calls == [("query", payout.external_no)]
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).status == "cancelled"
    settle_covered(user.id, app_money().point_value_fen)
    db.session.commit()
    assert (owed(user), bal(K.USER_CASH, "user", user.id)) == (0, 0)
    ledger_ok()


def test_a_stopped_transfer_answered_fall_back_is_not_sent_on_another_rail(
    app, make_user, make_product, make_campaign, pay
):
    from payouts.rails import Outcome, RailResult
    from payouts.record import DispatchSettings, apply_result

    user, payout = _taken_back_while_at_wechat(make_user, make_product, make_campaign, pay)
    # when: WeChat's answer says this rail cannot pay the person (the rule's fallback is another rail)
    payout.fallback_rail = "cash_red_packet"
    apply_result(payout, RailResult(Outcome.FALLBACK, "NO_AUTH", "no"), utcnow(), DispatchSettings(money=app_money()))
    db.session.commit()
    # then: no new payout on the fallback rail; the money pays the debt
    assert db.session.execute(select(Payout).filter_by(retry_of_id=payout.id)).scalars().all() == []
    settle_covered(user.id, app_money().point_value_fen)
    db.session.commit()
    assert owed(user) == 0
    ledger_ok()


def test_a_rail_paused_by_an_earlier_answer_recorded_late_keeps_the_later_pause(app):
    from datetime import timedelta

    from payouts.controls import rail_control
    from payouts.record import pause_rail

    later, earlier = utcnow() + timedelta(minutes=30), utcnow() + timedelta(minutes=29)
    pause_rail("wechat_change", later, "NOT_ENOUGH: empty")
    pause_rail("wechat_change", earlier, "NOT_ENOUGH: empty")  # the recorders record out of order
    db.session.commit()
    assert rail_control("wechat_change").paused_until == later


def _stop_job(rail: str, *, query_first: bool, posted_before: bool):
    from payouts.dispatch import Claimed

    return Claimed(1, rail, "TB1", {"amount_fen": 5_00}, query_first, True, False, posted_before)


def test_a_not_found_only_a_transfer_query_can_say_cancels_a_stopped_payout():
    from payouts.dispatch import call_wechat
    from payouts.rails import Outcome, RailResult
    from tests.test_dispatch import ScriptedRail

    # a red packet's NOT_FOUND may mean "still processing", a coupon's rail cannot query at all: a stopped payout of
    # theirs is sent again under its own number (WeChat keeps one of it), never cancelled here while it may exist
    for rail_name, cancelled in (("wechat_change", True), ("cash_red_packet", False), ("wechat_coupon", False)):
        rail = ScriptedRail(RailResult(Outcome.SUCCEEDED, "SUCCESS", wechat_ref="x"))
        calls = call_wechat(_stop_job(rail_name, query_first=True, posted_before=True), rail, lambda _: None)
        assert ([c[0] for c in calls] == ["query", "cancel"]) is cancelled, (rail_name, calls)
        assert ([c[0] for c in calls] == ["query", "send"]) is not cancelled, (rail_name, calls)


def test_a_stopped_payout_posted_before_is_asked_about_before_anything_is_sent():
    from payouts.dispatch import call_wechat
    from payouts.rails import Outcome, RailResult
    from tests.test_dispatch import ScriptedRail

    # an earlier POST of its number was answered "retry" (FREQUENCY_LIMITED): WeChat is asked first (it was POSTed
    # blind), and a transfer it never had is cancelled; a number never POSTed is cancelled without a call
    rail = ScriptedRail(RailResult(Outcome.SUCCEEDED, "SUCCESS", wechat_ref="x"))
    calls = call_wechat(_stop_job("wechat_change", query_first=False, posted_before=True), rail, lambda _: None)
    assert [c[0] for c in calls] == ["query", "cancel"] and rail.calls == [("query", "TB1")]
    rail = ScriptedRail()
    calls = call_wechat(_stop_job("cash_red_packet", query_first=False, posted_before=False), rail, lambda _: None)
    assert [c[0] for c in calls] == ["cancel"] and rail.calls == []


def test_a_failed_transfer_whose_rebate_a_refund_took_while_it_was_recorded_is_not_sent_again(
    app, make_user, make_product, make_campaign, pay
):
    from payouts.rails import Outcome, RailResult
    from payouts.record import DispatchSettings, apply_result

    # given: the refund took the whole rebate while the dispatcher held the payout (it passed over it: no stop asked)
    user, payout = _taken_back_while_at_wechat(make_user, make_product, make_campaign, pay)
    payout.cancel_requested = False
    db.session.commit()
    # when: WeChat's answer, recorded then, says the transfer failed for good
    apply_result(payout, RailResult(Outcome.FAILED, "FAIL", "no"), utcnow(), DispatchSettings(money=app_money()))
    db.session.commit()
    # then: no new transfer of a rebate taken back; the 5 yuan pay the debt
    assert db.session.execute(select(Payout).filter_by(retry_of_id=payout.id)).scalars().all() == []
    settle_covered(user.id, app_money().point_value_fen)
    db.session.commit()
    assert owed(user) == 0
    ledger_ok()
