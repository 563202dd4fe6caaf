"""Probe 19: notices and WeChat's message push, as WeChat, an attacker and a second dispatcher node would try them."""

from __future__ import annotations

from datetime import timedelta

from models import Alert, db, utcnow
from notices.consents import remaining
from tests.test_notice_dispatch import TMPL, consent, messages, notify, person, run, sim, the  # noqa: F401 - fixture
from wechat.errors import WeChatUnavailable
from wechat.messages import WeChatMessageRefused

# -- WeChat's certain "not sent" arriving after another node gave the call up as "outcome unknown" ---------------


def slow_then(app, answer, called):
    """A send that takes longer than its lease: meanwhile another node's pass finds the lease lapsed; then WeChat's
    answer ``answer`` (an exception) arrives."""

    def send(job):
        run(app, clock=lambda: called + timedelta(minutes=2))  # the other node
        assert the().status == "inbox" and "outcome unknown" in the().last_error
        raise answer

    return send


def test_wechat_busy_after_the_lease_lapsed_is_still_retried_on_the_same_consent(app, person):
    """WeChat's "system busy" (-1) says the message was certainly not sent. Arriving after another node had put the
    notice in the inbox as "outcome unknown" (the lease lapsed during a slow call), it was dropped: the notice never
    went out and its consent was lost (README: WeChat's busy is "retried later on the same consent")."""
    user = person()
    consent(app, user)
    notify(user)
    called = utcnow()
    busy = WeChatUnavailable("system error", code="-1")
    assert run(app, send=slow_then(app, busy, called), clock=lambda: called)["retry"] == 1
    notice = the()
    assert (notice.status, notice.channel, notice.template_id) == ("pending", "subscribe", TMPL)
    assert remaining(user.id)[TMPL] == 0  # held by the notice for its retry
    later = notice.next_attempt_at + timedelta(seconds=1)
    assert run(app, clock=lambda: later)["ok"] == 1
    assert the().status == "sent" and len(messages(app)) == 1


def test_a_refusal_after_the_lease_lapsed_gives_the_consent_back_and_alerts(app, person):
    """47003 (bad data) after the lease lapsed: WeChat did not use the consent, so it comes back to the person; the
    notice is in the inbox as refused (not "outcome unknown") and the operators are alerted as for any refusal."""
    user = person()
    consent(app, user)
    notify(user)
    called = utcnow()
    refused = WeChatMessageRefused("argument invalid! data.thing1.value invalid", code="47003")
    assert run(app, send=slow_then(app, refused, called), clock=lambda: called)["refused"] == 1
    notice = the()
    assert notice.status == "inbox" and notice.last_error.startswith("refused by WeChat")
    assert remaining(user.id)[TMPL] == 1
    db.session.expire_all()
    assert db.session.query(Alert).filter(Alert.kind == "notice_refused").count() == 1


def test_a_notice_put_back_unsent_after_the_lease_lapsed_is_sent_later(app, person):
    """No turn in the channel's rate before the deadline: the notice was never called and is put back. If another
    node had meanwhile given it up as "outcome unknown" (the lease lapsed while this one waited), it stayed in the
    inbox for good, never sent though WeChat was never asked."""
    user = person()
    consent(app, user)
    notify(user)
    called = utcnow()

    def no_turn(channel):
        run(app, clock=lambda: called + timedelta(minutes=2))  # the other node, while this one waits for a turn
        return False

    assert run(app, take=no_turn, clock=lambda: called)["released"] == 1
    assert (the().status, the().attempts) == ("pending", 0)
    assert run(app, clock=lambda: called + timedelta(minutes=3))["ok"] == 1
    assert the().status == "sent" and len(messages(app)) == 1
    assert remaining(user.id)[TMPL] == 0


# -- the shared token store (Redis) failing for a moment: the message was never sent, so it is retried ------------


class FlakyStore:
    """The shared token store (Redis) timing out on its first read, then answering again."""

    def __init__(self, store):
        self.store, self.failed = store, False

    def get(self, key):
        if not self.failed:
            self.failed = True
            import redis

            raise redis.exceptions.TimeoutError("Timeout reading from socket")
        return self.store.get(key)

    def set(self, key, value, ttl_s):
        self.store.set(key, value, ttl_s)

    def discard(self, key, value):
        self.store.discard(key, value)


def test_a_token_store_timeout_before_the_call_retries_the_notice_on_its_consent(app, person):
    """The access token could not be read from the shared store (a Redis timeout): WeChat was never asked, as with
    no token from WeChat (README: retried later on the same consent). The error escaped the pass instead; the notice
    was left sending, and the next pass gave it up as "outcome unknown": never sent, its consent lost."""
    from jobs.notices import Senders, dispatch_pass
    from notices.dispatch import NoticeSettings

    user = person()
    consent(app, user)
    notify(user)
    cfg = NoticeSettings.from_config(app.config)
    senders = Senders(app.config, app.extensions["wechat"], cfg)
    senders.mp.token_store = FlakyStore(senders.mp.token_store)
    called = utcnow()
    outcome = dispatch_pass(app.extensions["notice_templates"], cfg, senders.send, lambda c: True, lambda: called)
    assert outcome["retry"] == 1
    notice = the()
    assert (notice.status, notice.channel) == ("pending", "subscribe") and "TOKEN" in notice.last_error
    later = notice.next_attempt_at + timedelta(seconds=1)
    assert (
        dispatch_pass(app.extensions["notice_templates"], cfg, senders.send, lambda c: True, lambda: later)["ok"] == 1
    )
    assert the().status == "sent" and len(messages(app)) == 1
    assert remaining(user.id)[TMPL] == 0


# -- an unfollow learnt from 43004 must not hide a follow WeChat timed after the call --------------------------


def test_a_follow_in_the_second_after_a_43004_still_counts(app, person):
    """The person unfollowed, the dispatcher's OA template message got 43004 (not following), and a moment later the
    person followed again. The 43004 was recorded as an unfollow at the time of its record (to the microsecond), while
    WeChat's follow event carries whole seconds: the follow, applied after, read as older and changed nothing. They
    follow, but every later notice skipped the official account. The unfollow WeChat's 43004 tells of is known
    only from the call's claim on; a follow WeChat timed at or after that second wins."""
    from sqlalchemy import select

    from models import OaFollower
    from models.messages import follows_oa, record_follow

    user = person(follows=True)
    notify(user)
    claimed = utcnow().replace(microsecond=0) + timedelta(seconds=10)
    times = iter([claimed, claimed + timedelta(seconds=1, milliseconds=200)])

    def not_following(job):
        raise WeChatMessageRefused("require subscribe", code="43004")

    run(app, send=not_following, clock=lambda: next(times))
    assert the().status == "inbox" and not follows_oa(user.id)
    follower = db.session.execute(select(OaFollower).where(OaFollower.user_id == user.id)).scalar_one()
    # the push worker applies WeChat's events: the unfollow (CreateTime: the claim's second) and the follow after the
    # call, in the next second (CreateTime counts whole seconds)
    record_follow(follower.appid, follower.openid, False, claimed)
    record_follow(follower.appid, follower.openid, True, claimed + timedelta(seconds=1))
    db.session.commit()
    assert follows_oa(user.id)


def test_a_follow_in_the_very_second_of_the_claim_applied_before_the_43004_still_counts(app, person):
    # given: the person follows again in the second the dispatcher claimed the notice, and that follow push is
    # applied while the call is out; then WeChat answers 43004 (it had read them unfollowed)
    from sqlalchemy import select

    from models import OaFollower
    from models.messages import follows_oa, record_follow

    user = person(follows=True)
    follower = db.session.execute(select(OaFollower).where(OaFollower.user_id == user.id)).scalar_one()
    appid, openid = follower.appid, follower.openid
    notify(user)
    claimed = utcnow().replace(microsecond=0) + timedelta(seconds=10)
    times = iter([claimed + timedelta(milliseconds=300), claimed + timedelta(milliseconds=900)])

    def not_following(job):
        record_follow(appid, openid, True, claimed)  # WeChat's CreateTime: the claim's own second
        db.session.commit()
        raise WeChatMessageRefused("require subscribe", code="43004")

    # when: the 43004 is recorded
    run(app, send=not_following, clock=lambda: next(times))

    # then: the follow stands (a tie had gone to the 43004, applied later)
    assert the().status == "inbox"
    assert follows_oa(user.id)
