"""The nightly purge of pushed messages and notices kept for a while only (jobs/retention.py)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from jobs.retention import purge_kept_rows_job, purge_messages, purge_notices
from models import InboundMessage, Notice, db, utcnow


def message(key: str, status: str, age_days: float) -> None:
    db.session.add(
        InboundMessage(
            source="oa",
            dedupe_key=key,
            msg_type="event",
            event="subscribe",
            openid="oOA-x",
            payload={},
            status=status,
            received_at=utcnow() - timedelta(days=age_days),
        )
    )


def notice(user_id: int, key: str, status: str, age_days: float) -> None:
    db.session.add(
        Notice(
            user_id=user_id, event="rebate_paid", key=key, status=status, created_at=utcnow() - timedelta(days=age_days)
        )
    )


def keys(model) -> list[str]:
    db.session.expire_all()
    return sorted(db.session.execute(select(model.dedupe_key if model is InboundMessage else model.key)).scalars())


def test_old_messages_applied_or_ignored_go_and_the_rest_stay(app):
    for key, status, age in [
        ("old-done", "done", 91),
        ("old-ignored", "ignored", 200),
        ("old-failed", "failed", 200),  # an operator's queue
        ("old-queued", "queued", 200),  # not applied yet
        ("new-done", "done", 89),
    ]:
        message(key, status, age)
    db.session.commit()
    assert purge_messages(utcnow(), 90, commit=db.session.commit) == 2
    assert keys(InboundMessage) == ["new-done", "old-failed", "old-queued"]


def test_notices_done_with_go_after_their_days_and_pending_ones_stay(app, make_user):
    user = make_user()
    for key, status, age in [
        ("sent", "sent", 181),
        ("inbox", "inbox", 181),
        ("cancelled", "cancelled", 400),
        ("pending", "pending", 400),
        ("sending", "sending", 400),
        ("recent", "sent", 179),
    ]:
        notice(user.id, key, status, age)
    db.session.commit()
    assert purge_notices(utcnow(), 180, commit=db.session.commit) == 3
    assert keys(Notice) == ["pending", "recent", "sending"]


def test_the_purge_goes_in_batches_until_none_is_left(app):
    for i in range(5):
        message(f"m{i}", "done", 100)
    db.session.commit()
    assert purge_messages(utcnow(), 90, batch=2, commit=db.session.commit) == 5
    assert keys(InboundMessage) == []


def test_the_nightly_job_reads_its_days_from_the_settings(app, make_user):
    app.config["MESSAGES_KEEP_DAYS"], app.config["NOTICES_KEEP_DAYS"] = 10, 40
    user = make_user()
    message("m-old", "done", 11)
    message("m-new", "done", 9)
    notice(user.id, "n-old", "sent", 41)
    notice(user.id, "n-new", "sent", 39)
    db.session.commit()
    assert purge_kept_rows_job() == {"messages": 1, "notices": 1}
    assert keys(InboundMessage) == ["m-new"] and keys(Notice) == ["n-new"]


def test_robot_callbacks_go_after_the_messages_days_and_recent_ones_still_answer_a_retry(app):
    """A WeCom robot's callback (with its reply, in plaintext) is kept ``MESSAGES_KEEP_DAYS``: a retry of a recent one
    still gets its recorded reply; an old one is purged (its replay is refused by its stale signed timestamp)."""
    from jobs.retention import purge_bot_callbacks
    from models import BotCallback

    app.config["MESSAGES_KEEP_DAYS"] = 10
    now = utcnow()
    for msgid, age in (("old", 11), ("edge", 10.01), ("new", 9)):
        db.session.add(
            BotCallback(
                bot_id="bot-1",
                msgid=msgid,
                userid="u1",
                outcome="ok",
                reply="绑定码 123456",
                received_at=now - timedelta(days=age),
            )
        )
    db.session.commit()
    assert purge_kept_rows_job() == {"bot_callbacks": 2}
    db.session.expire_all()
    assert list(db.session.execute(select(BotCallback.msgid)).scalars()) == ["new"]
    assert purge_bot_callbacks(now, 10, batch=1) == 0  # nothing left to purge: nothing else goes
