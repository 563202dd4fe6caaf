"""Area D: scheduled jobs and payout dispatch tried from outside (a rail stopped mid-batch, crashes, late answers)."""

from __future__ import annotations

import threading

import pytest

import jobs.expiring as expiring_module
import jobs.payouts as job_module
from jobs.payouts import dispatch_backlog
from models import Alert, Payout, PayoutAttempt, RailControl, db, utcnow
from payouts import MoneySettings
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings
from tests.test_dispatch import ScriptedRail, _disarm, funded_payout, ok  # noqa: F401 - fixtures
from tests.test_unclaimed_red_packets import sent_packet  # noqa: F401 - fixture


def settings(batch=5):
    return DispatchSettings(money=MoneySettings(), batch=batch)


class Counting(ScriptedRail):
    """Answers every send with ``answer`` (thread-safe); ``on_first`` runs during the first send."""

    def __init__(self, answer, on_first=None):
        super().__init__()
        self.answer, self.on_first, self.lock = answer, on_first, threading.Lock()

    def send(self, external_no, request):
        with self.lock:
            self.calls.append(("send", external_no))
            first = len(self.calls) == 1
        if first and self.on_first is not None:
            self.on_first()
        return self.answer(external_no)


def test_not_enough_mid_batch_stops_the_rest_of_the_claimed_batch(funded_payout):
    # given: four transfers claimed in one batch; the merchant account is empty (WeChat answers NOT_ENOUGH)
    payouts = [funded_payout(amount_fen=1_00 + i)[0] for i in range(4)]
    rail = Counting(lambda _: RailResult(Outcome.PAUSE_RAIL, "NOT_ENOUGH", "balance insufficient"))
    # when: one run of the dispatcher
    outcomes = dispatch_backlog({rail.name: rail}, settings=settings(batch=4), calls_in_flight=1)
    # then: the first answer paused the rail: the three others are never sent on it (they had been: 4 NOT_ENOUGH
    # calls, 4 alerts), and go back untouched, their attempt given back, due when the rail is on again
    db.session.expire_all()
    assert rail.calls == [("send", payouts[0].external_no)]
    assert outcomes == {Outcome.PAUSE_RAIL: 1, job_module.STOPPED: 3}
    assert db.session.query(Alert).filter_by(kind="rail_paused").count() == 1
    rest = [db.session.get(Payout, p.id) for p in payouts[1:]]
    assert [(p.status, p.attempts, p.sent_at, p.lease_until) for p in rest] == [("pending", 0, None, None)] * 3
    assert db.session.query(PayoutAttempt).filter(PayoutAttempt.payout_id.in_([p.id for p in rest])).count() == 0


def test_a_rail_switched_off_mid_batch_sends_nothing_more(app, funded_payout, monkeypatch):
    # given: four transfers claimed in one batch, and an operator who switches the rail off (an incident) while the
    # first is being sent (the switch is read before each call here: the interval is a tuning, at most a second)
    monkeypatch.setattr(job_module, "RAIL_RECHECK_S", 0.0, raising=False)
    payouts = [funded_payout(amount_fen=1_00 + i)[0] for i in range(4)]

    def switch_off():
        def off():
            with app.app_context():
                db.session.add(RailControl(rail="wechat_change", enabled=False, reason="incident", updated_at=utcnow()))
                db.session.commit()
                db.session.remove()

        thread = threading.Thread(target=off)  # another process: the console
        thread.start()
        thread.join()

    rail = Counting(ok, on_first=switch_off)
    # when
    outcomes = dispatch_backlog({rail.name: rail}, settings=settings(batch=4), calls_in_flight=1)
    # then: only the payout already in flight went out; the rest wait for the rail to be switched on
    db.session.expire_all()
    assert rail.calls == [("send", payouts[0].external_no)]
    assert outcomes == {Outcome.SUCCEEDED: 1, job_module.STOPPED: 3}
    assert [db.session.get(Payout, p.id).status for p in payouts] == ["succeeded"] + ["pending"] * 3


@pytest.mark.parametrize("in_flight", [1, 3])
def test_a_rail_that_stays_on_sends_the_whole_batch(funded_payout, in_flight):
    payouts = [funded_payout(amount_fen=1_00 + i)[0] for i in range(6)]
    rail = Counting(ok)
    outcomes = dispatch_backlog({rail.name: rail}, settings=settings(batch=6), calls_in_flight=in_flight)
    assert outcomes == {Outcome.SUCCEEDED: 6}
    assert sorted(no for _, no in rail.calls) == sorted(p.external_no for p in payouts)


@pytest.fixture
def lapsed_packets(make_campaign, make_merchant, make_user):
    """``count`` packets of a merchant's campaign, every one past its expiry a minute ago: (campaign, packets)."""
    from datetime import timedelta

    from rebate import issue_packet
    from tests.test_campaign_edges import CAPPED

    def made(count: int):
        merchant = make_merchant()
        campaign = make_campaign(
            CAPPED,
            budget_limit_fen=100_00,
            packet_amount_fen=10_00,
            issuer_type="merchant",
            issuer_merchant_id=merchant.id,
            funder_type="merchant_deposit",
            funder_merchant_id=merchant.id,
            starts_at=utcnow() - timedelta(days=1),
            ends_at=utcnow() + timedelta(days=10),
            claim_limits={"per_person": None, "per_person_per_day": None, "per_ip_per_day": None},
        )
        packets = [
            issue_packet(campaign, make_user(), source="t", source_ref=str(i), now=utcnow()) for i in range(count)
        ]
        for packet in packets:
            packet.expires_at = utcnow() - timedelta(minutes=1)
        db.session.commit()
        return campaign, packets

    return made


def test_a_campaigns_packets_ending_together_all_expire_in_one_run(lapsed_packets, monkeypatch):
    # given: a merchant's campaign whose packets all end at one instant (its end date), more of them than one
    # transaction expires (a batch of 2 here, 500 in production)
    from models import Campaign, RedPacket

    campaign, packets = lapsed_packets(5)
    monkeypatch.setattr(expiring_module, "EXPIRE_BATCH", 2)
    # when: one run of the job
    result = expiring_module.expire_packets_and_conditions()
    # then: every one expired and its reservation given back in that run (it had been one batch per run: 2 of 5,
    # the rest holding the budget and the deposit until later runs)
    db.session.expire_all()
    assert result["packets"] == 5
    assert {db.session.get(RedPacket, p.id).status for p in packets} == {"expired"}
    assert db.session.get(Campaign, campaign.id).budget_reserved_fen == 0


def test_an_audience_run_that_always_fails_does_not_keep_the_next_runs_from_issuing(
    app, make_operator, make_campaign, monkeypatch
):
    # given: two batch runs; every step of the older one fails (a bad row, a bug)
    import jobs.audiences as audience_jobs
    from models import AudienceRun, RunStatus
    from tests.test_audiences import RULES, many_users, new_run

    many_users(6)
    campaign = make_campaign(RULES, packet_amount_fen=1_00, budget_limit_fen=1_000_00)
    broken = new_run(make_operator, campaign, {"kind": "never_used_packet"}, 0)
    fine = new_run(make_operator, campaign, {"kind": "never_used_packet"}, 0)
    real = audience_jobs.work_run

    def failing(run_id, now, chunk):
        if run_id == broken.id:
            raise RuntimeError("this run cannot be worked")
        return real(run_id, now, chunk)

    monkeypatch.setattr(audience_jobs, "work_run", failing)
    # when: the scheduled job passes twice
    first, second = audience_jobs.audience_runs_job(), audience_jobs.audience_runs_job()
    # then: the other run is done (it had never started: each pass died on the broken one), the broken one is
    # left for later and an operator is told once
    db.session.expire_all()
    assert db.session.get(AudienceRun, fine.id).status == RunStatus.DONE
    assert db.session.get(AudienceRun, broken.id).status == RunStatus.PENDING
    assert (first["failed"], second["failed"]) == (1, 1)
    assert db.session.query(Alert).filter_by(kind="audience_run_failed").count() == 1


def test_a_day_whose_rollup_fails_does_not_keep_today_from_being_rebuilt(app, monkeypatch):
    # given: two days due (an old one never built, and today); the old day's rebuild fails every time
    from datetime import date

    import jobs.insights as insight_jobs

    old, today = date(2026, 11, 30), date(2026, 12, 1)
    rebuilt = []

    def rebuild_day(day, now):
        if day == old:
            raise RuntimeError("a row of that day cannot be rolled up")
        rebuilt.append(day)
        return 3

    monkeypatch.setattr(insight_jobs, "due_days", lambda now: [old, today])
    monkeypatch.setattr(insight_jobs, "rebuild_day", rebuild_day)
    # when
    result = insight_jobs.insights_rollup_job()
    # then: today is rebuilt (the reports had stayed at the failing day for good), an operator is told once
    assert rebuilt == [today]
    assert (result["days"], result["rows"], result["failed"]) == (1, 3, 1)
    assert db.session.query(Alert).filter_by(kind="insights_day_failed").count() == 1


def test_an_alert_with_a_long_chinese_reason_is_cut_to_what_the_robot_takes(app):
    # given: an alert whose text is 1,000 Chinese characters (3,000 bytes: a WeCom robot takes 2,048 bytes of text,
    # and answers errcode 40058 to more)
    import json

    import responses

    from jobs.payouts import deliver_alerts
    from models import raise_alert

    url = "https://qyapi.test/cgi-bin/webhook/send?key=robot-key"
    app.config["ALERT_WEBHOOK_URL"] = url
    raise_alert("payout_needs_operator", "TB000000000009", "余" * 1000)
    db.session.commit()
    posted = []

    def robot(request):
        content = json.loads(request.body)["text"]["content"]
        posted.append(content)
        too_long = len(content.encode("utf-8")) > 2048
        return 200, {}, json.dumps({"errcode": 40058 if too_long else 0, "errmsg": "content exceed max length"})

    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.POST, url, callback=robot)
        # when
        first = deliver_alerts()
    # then: delivered at the first run (it had been refused at every run, for good), cut on a character
    assert first == {"sent": 1}
    assert posted[0].startswith("[payout_needs_operator] TB000000000009: 余") and posted[0].endswith("…")
    assert len(posted[0].encode("utf-8")) <= 2048


@pytest.mark.parametrize("name", ["daily_reconciliation", "purge_behaviour_events_job", "purge_kept_rows_job"])
def test_a_daily_job_that_starts_late_still_runs(app, name):
    # given: the daily job's run time came while every thread of the scheduler's pool was busy (slow WeChat calls of
    # the order and payout jobs during an outage), so its run starts two minutes after its time
    from datetime import UTC, datetime, timedelta

    from apscheduler.events import EVENT_JOB_EXECUTED
    from apscheduler.executors.base import run_job

    from jobs.scheduler import build_scheduler

    job = build_scheduler(app).get_job(name)
    ran = []
    job.func = lambda: ran.append(name)  # the job itself is not the point: whether the scheduler runs it
    # when: the pool's thread finally takes it
    events = run_job(job, "default", [datetime.now(UTC) - timedelta(minutes=2)], "tests")
    # then: it runs (it had been dropped as missed after 30 s: a day never reconciled, a night never purged)
    assert [e.code for e in events] == [EVENT_JOB_EXECUTED] and ran == [name]


def test_the_claim_check_goes_on_batch_after_batch_until_every_due_packet_is_asked(app, sent_packet, monkeypatch):
    # given: five red packets nobody opened, refunded by WeChat; the check reads two a batch here (50 in production:
    # one batch a run, every 15 minutes, was 4,800 packets a day at most)
    from datetime import timedelta

    from jobs.payouts import check_unclaimed, payout_rails
    from payouts import unclaimed
    from tests.test_wechat_callbacks import simulator

    packets = [sent_packet(1_00 + i) for i in range(5)]
    for packet in packets:
        simulator(app).refund_unopened_redpack(packet.external_no)
    monkeypatch.setattr(job_module, "CLAIM_CHECK_BATCH", 2, raising=False)
    real = unclaimed.due_checks
    monkeypatch.setattr(unclaimed, "due_checks", lambda now, batch=50, after=None: real(now, min(batch, 2), after))
    # when: one run
    outcomes = check_unclaimed(payout_rails(app)["cash_red_packet"], packets[-1].sent_at + timedelta(hours=26))
    # then: every one is asked and its money is back in its owner's balance in that run
    assert dict(outcomes) == {"unclaimed": 5}


def test_a_packet_not_final_yet_is_asked_once_a_run(app, sent_packet, monkeypatch):
    # given: three packets still unopened at WeChat (SENT: asked again next run), read two a batch
    from datetime import timedelta

    from jobs.payouts import check_unclaimed, payout_rails
    from models import PayoutAttempt

    packets = [sent_packet(1_00 + i) for i in range(3)]
    monkeypatch.setattr(job_module, "CLAIM_CHECK_BATCH", 2)
    # when
    outcomes = check_unclaimed(payout_rails(app)["cash_red_packet"], packets[-1].sent_at + timedelta(hours=26))
    # then: each asked at most once in the run (a packet not final comes back in the next batch: not asked again)
    asked = [db.session.query(PayoutAttempt).filter_by(payout_id=p.id, action="claim_check").count() for p in packets]
    assert asked[:2] == [1, 1] and max(asked) == 1
    assert set(outcomes) == {"in_progress"}


def test_an_order_whose_check_fails_at_every_run_is_alerted_once(app, make_user, make_product, monkeypatch):
    # given: two unpaid orders past their expiry; the first one's step fails at every run (a bad row, a bug)
    from datetime import timedelta

    import jobs.orders as order_jobs
    from tests.test_audiences import plant_order

    user, product = make_user(), make_product()
    past = utcnow() - timedelta(hours=1)
    bad, good = (plant_order(user, product, past, 10_00, status="created") for _ in range(2))
    bad_id, good_id = bad.id, good.id
    closed = []

    def settle(order_id, now):
        if order_id == bad_id:
            raise RuntimeError("one bad row")
        closed.append(order_id)
        return "closed"

    monkeypatch.setattr(order_jobs, "settle_expired_order", settle)
    # when: two runs
    first, second = order_jobs.close_expired_orders(), order_jobs.close_expired_orders()
    # then: the other order goes on each run, and an operator is told once of the failing one (the README's
    # "guard each row: rolled back, logged and alerted once"; it had been in the logs only)
    assert (first, second) == ({"error": 1, "closed": 1}, {"error": 1, "closed": 1})
    assert closed == [good_id, good_id]
    alerts = db.session.query(Alert).filter_by(kind="order_check_failed").all()
    assert [a.subject for a in alerts] == [f"order {bad_id}"]


def test_run_once_runs_every_job_even_after_one_fails(app, monkeypatch):
    # given: the first job fails (a bug, the database away for a moment)
    from collections import Counter

    from jobs import scheduler

    ran = []

    def broken() -> Counter:
        raise RuntimeError("this job cannot run")

    def fine() -> Counter:
        ran.append("fine")
        return Counter(done=1)

    monkeypatch.setattr(scheduler, "JOBS", ((broken, 60), (fine, 60)))
    # when
    result = app.test_cli_runner().invoke(args=["jobs", "run-once"])
    # then: the next job still ran (it had never run: the command died on the first), and the failure is said
    assert ran == ["fine"]
    assert "fine: {'done': 1}" in result.stdout
    assert "broken: failed: RuntimeError('this job cannot run')" in result.stderr
    assert result.exit_code == 1


def test_packets_wechat_keeps_answering_not_final_never_keep_the_later_ones_from_being_asked(
    app, sent_packet, monkeypatch
):
    """Two packets still unopened at WeChat (SENT: not final) head every batch of two; the third, sent after them,
    was refunded unopened. A run reads past them: the third is asked and its money is back in that run (the
    batches had always read the same two, every run, until they left WeChat's 30-day window)."""
    from datetime import timedelta

    from jobs.payouts import check_unclaimed, payout_rails
    from models import PayoutAttempt
    from tests.test_wechat_callbacks import simulator

    packets = [sent_packet(1_00 + i) for i in range(3)]
    simulator(app).refund_unopened_redpack(packets[2].external_no)
    monkeypatch.setattr(job_module, "CLAIM_CHECK_BATCH", 2)
    outcomes = check_unclaimed(payout_rails(app)["cash_red_packet"], packets[-1].sent_at + timedelta(hours=26))
    assert dict(outcomes) == {"in_progress": 2, "unclaimed": 1}
    asked = [db.session.query(PayoutAttempt).filter_by(payout_id=p.id, action="claim_check").count() for p in packets]
    assert asked == [1, 1, 1]


def test_a_rail_restarted_after_a_top_up_sends_what_the_pause_put_off_at_once(client, make_operator, funded_payout):
    # given: WeChat answered NOT_ENOUGH: the rail is paused 30 minutes and the payout put off to the pause's end
    from datetime import timedelta

    payout, _ = funded_payout()
    rail = Counting(lambda _: RailResult(Outcome.PAUSE_RAIL, "NOT_ENOUGH", "balance insufficient"))
    dispatch_backlog({rail.name: rail}, settings=settings())
    later = funded_payout(amount_fen=2_00)[0]  # and one a retry put off to tomorrow: not the pause's
    db.session.get(Payout, later.id).next_attempt_at = utcnow() + timedelta(days=1)
    db.session.commit()
    # when: the operator tops the account up and switches the rail back on ("restarting also lifts any pause")
    _, admin = make_operator("admin")
    answer = client.put("/admin/api/rails/wechat_change", headers=admin, json={"enabled": True, "reason": "topped up"})
    assert answer.status_code == 200, answer.json
    rail.answer = ok
    dispatch_backlog({rail.name: rail}, settings=settings())
    # then: the payout goes out now (it had waited out the 30 minutes all the same); the other keeps its time
    db.session.expire_all()
    assert rail.calls == [("send", payout.external_no)] * 2
    assert db.session.get(Payout, payout.id).status == "succeeded"
    assert db.session.get(Payout, later.id).status == "pending"


def test_every_job_has_a_thread_of_its_own(app):
    # given: WeChat is down, and every job that calls it holds its thread for minutes (fifty rows a run, each call up
    # to 13 s): close_expired_orders, query_unnotified_payments, query_stuck_refunds, check_unclaimed_red_packets,
    # share_due_orders, query_profit_shares, dispatch_payouts, dispatch_notices, deliver_alerts, send_chat_replies,
    # post_challenge_standings, update_chat_tool_cards…
    from jobs.scheduler import DAILY_JOBS, JOBS, build_scheduler

    scheduler = build_scheduler(app)
    # then: the pool has a thread for each job (none runs twice at once: max_instances 1), so the jobs that need no
    # WeChat (bans lifted, packets expired, balance marks folded, the daily runs) never wait for one past their grace
    # time and get skipped (APScheduler's default pool has 10 threads)
    pool = scheduler._lookup_executor("default")._pool
    assert pool._max_workers >= len(JOBS) + len(DAILY_JOBS) == len(scheduler.get_jobs())


def test_cancelling_a_transfer_while_the_dispatcher_asks_about_it_says_so(client, make_operator, funded_payout):
    # given: a transfer waiting for the user's confirmation, claimed again by the dispatcher for its 6-hourly query
    # (sending, under its lease, while the call is under way)
    from datetime import timedelta

    payout, _ = funded_payout()
    dispatch_backlog({"wechat_change": Counting(lambda _: RailResult(Outcome.WAITING_USER_CONFIRM, package_info="p"))})
    row = db.session.get(Payout, payout.id)
    assert row.status == "waiting_user_confirm"
    row.status, row.lease_until = "sending", utcnow() + timedelta(minutes=5)
    db.session.commit()
    _, admin = make_operator("admin")
    # when: an operator cancels it at that moment
    answer = client.post(f"/admin/api/payouts/{payout.id}/cancel", headers=admin, json={"reason": "wrong person"})
    # then: 409 saying why and what to do (it had said only unsent or waiting payouts can be cancelled: this one was
    # waiting a second before), nothing changed
    assert (answer.status_code, answer.json["error"]) == (409, "payout_state")
    assert "with WeChat right now" in answer.json["message"]
    db.session.expire_all()
    row = db.session.get(Payout, payout.id)
    assert (row.status, row.cancel_requested) == ("sending", False)


def test_a_packet_whose_expiry_fails_is_alerted_once_and_the_others_expire(lapsed_packets, monkeypatch):
    """One packet whose release raises (a bad row, a bug) had failed the whole batch at every run, and it heads every
    batch (by id): no packet of the platform expired again. Now it is rolled back alone and alerted once."""
    import rebate.packets as packets_module
    from models import PacketStatus, RedPacket

    _, packets = lapsed_packets(3)
    bad_id = packets[0].id
    real = packets_module.release_packet

    def release(packet, status):
        if packet.id == bad_id:
            raise RuntimeError("a bad row")
        return real(packet, status)

    monkeypatch.setattr(packets_module, "release_packet", release)
    for _ in range(2):
        expiring_module.expire_packets_and_conditions()
    db.session.expire_all()
    statuses = [db.session.get(RedPacket, p.id).status for p in packets]
    assert statuses == [PacketStatus.ISSUED, PacketStatus.EXPIRED, PacketStatus.EXPIRED]
    alerts = db.session.query(Alert).filter_by(kind="packet_expiry_failed").all()
    assert [a.subject for a in alerts] == [f"packet {bad_id}"]


def test_a_job_meeting_a_busy_database_is_a_warning_not_a_failure(app, caplog):
    """A job that waits past the lock timeout (a long writer; every pooled connection taken) is deferred to its next
    run: logged as a warning without a traceback, not as a failed job (an operator's alarm for nothing)."""
    import logging

    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from jobs.scheduler import in_app

    def waits_too_long():
        raise PoolTimeout("QueuePool limit of size 5 overflow 10 reached")

    def broken():
        raise RuntimeError("a bug")

    with caplog.at_level(logging.WARNING):
        in_app(app, waits_too_long)()
        in_app(app, broken)()
    by_message = {r.getMessage(): r for r in caplog.records}
    assert by_message["job deferred: database busy"].levelno == logging.WARNING
    assert by_message["job failed"].levelno == logging.ERROR and by_message["job failed"].exc_info


def test_a_payout_cancelled_with_no_words_from_wechat_tells_the_person_why_in_words(funded_payout):
    """WeChat's cancellation of a bill may come with no message: the person's payout list read "CANCELLED: "."""
    payout, _ = funded_payout()
    rail = Counting(lambda _: RailResult(Outcome.CANCELLED, "CANCELLED", ""))
    dispatch_backlog({rail.name: rail}, settings=settings())
    db.session.expire_all()
    done = db.session.get(Payout, payout.id)
    assert (done.status, done.last_error) == ("cancelled", "CANCELLED: cancelled before it reached you")


def test_a_long_run_is_said_skipped_once_until_it_ends(app, caplog):
    # given: the dispatcher's run goes on for minutes (a WeChat outage), its interval 2 s: APScheduler says "skipped:
    # maximum number of running instances reached" at every tick (thirty lines a minute burying the ones that matter)
    import logging
    from datetime import UTC, datetime

    from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent

    from jobs.scheduler import SKIPPED_STILL_RUNNING, build_scheduler

    scheduler = build_scheduler(app)
    dispatcher, other = scheduler.get_job("dispatch_payouts"), scheduler.get_job("deliver_alerts")

    def skipped() -> list[str]:
        return [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="apscheduler.scheduler"):
        # when: the scheduler skips it three times, and another job once
        for _ in range(3):
            scheduler._logger.warning(SKIPPED_STILL_RUNNING, dispatcher, 1)
        scheduler._logger.warning(SKIPPED_STILL_RUNNING, other, 1)
        # then: said once for each job, naming it
        assert len(skipped()) == 2
        assert "dispatch_payouts" in skipped()[0] and "said once until this run ends" in skipped()[0]
        # when: the long run ends (the scheduler's own event) and the next run is long too
        scheduler._dispatch_event(JobExecutionEvent(EVENT_JOB_EXECUTED, dispatcher.id, "default", datetime.now(UTC)))
        scheduler._logger.warning(SKIPPED_STILL_RUNNING, dispatcher, 1)
        scheduler._logger.warning(SKIPPED_STILL_RUNNING, other, 1)
        # then: that run's first skip is said again; the other job's run still goes on, unsaid
        assert len(skipped()) == 3
        # and the scheduler's other warnings pass untouched
        scheduler._logger.warning("Run time of job %s was missed", "x")
        scheduler._logger.warning("Run time of job %s was missed", "x")
        assert sum("was missed" in r.getMessage() for r in caplog.records) == 2
