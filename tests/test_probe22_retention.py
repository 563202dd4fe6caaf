"""Probe round 22: retention of ``limit_counters``, and the client's address behind a proxy writing ``ip:port``.

Found by a probe helper; each test here failed before its fix.

* ``limit_counters`` (claim limits, device tokens, the sign-in steps a minute, the behaviour events' rate) was never
  purged: every address, device and person ever seen kept its rows for good. The nightly purge
  (``jobs.retention.purge_limit_counters``) now deletes the rows that can never refuse anything again: a past
  Beijing day, a past UTC minute, an interval taken longer ago than any interval can be. A lifetime count
  (window ``-``: a campaign's "one per person ever") is never deleted.
* Behind a proxy that writes ``ip:port`` into X-Forwarded-For (``203.0.113.7:51234``, ``[2001:db8::1]:443``), every
  request was taken as coming from the proxy itself: every per-address limit counted the whole platform as one
  address. The port is now dropped and the address checked; any other text still leaves the socket's address.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import responses
from sqlalchemy import event, select

from app import create_app
from models import Order, db
from models.limits import LimitCounter
from risk.limits import (
    Claimant,
    ClaimLimits,
    LimitHit,
    PlatformLimits,
    Slot,
    enforce_claim_limits,
    enforce_platform_limits,
    take_slots,
)

# 10:00 UTC, 18:00 Beijing (Beijing midnight is 16:00 UTC)
NOON = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)


def keys() -> list[str]:
    db.session.rollback()
    return sorted(db.session.execute(select(LimitCounter.key)).scalars())


def purge(now: datetime, batch: int = 5000) -> int:
    from jobs.retention import purge_limit_counters

    return purge_limit_counters(now, longest_interval_seconds(), batch, commit=db.session.commit)


def longest_interval_seconds() -> int:
    from flask import current_app

    from jobs.retention import longest_interval_seconds as longest

    return longest(current_app.config)


ONCE_EVER = ClaimLimits(per_ip_per_day=None, min_interval_seconds=None, per_person=1)
TWICE_A_DAY = ClaimLimits(per_ip_per_day=None, min_interval_seconds=None, per_person=None, per_person_per_day=2)


# -- limit_counters: what goes, what stays ----------------------------------------------------------------------------


def test_a_once_per_person_ever_limit_still_refuses_after_any_purge(app):
    # given: a person's one claim of a campaign limited to one per person, ever
    amy = Claimant(person_id=7)
    enforce_claim_limits(ONCE_EVER, campaign_id=3, claimant=amy, now=NOON)
    db.session.commit()
    # when: the purge runs a year later (every day, minute and interval long past)
    later = NOON + timedelta(days=400)
    purge(later)
    # then: the lifetime count is still there, and a second claim is still refused
    assert keys() == ["c3:person:7"]
    with pytest.raises(LimitHit) as refused:
        enforce_claim_limits(ONCE_EVER, campaign_id=3, claimant=amy, now=later)
    assert refused.value.code == "person_limit"


def test_a_daily_limit_still_refuses_the_same_day_after_the_purge_and_yesterdays_rows_go(app):
    # given: yesterday's claims (platform-wide and a campaign's per-person-per-day) and today's, which fill the day
    ben = Claimant(person_id=8, ip="203.0.113.7", device="dev-ben")
    yesterday = NOON - timedelta(days=1)
    enforce_claim_limits(TWICE_A_DAY, campaign_id=4, claimant=ben, now=yesterday)
    enforce_platform_limits(PlatformLimits(), ben, yesterday)
    db.session.commit()
    for minutes in (0, 1):
        enforce_claim_limits(
            TWICE_A_DAY, campaign_id=4, claimant=Claimant(person_id=9), now=NOON + timedelta(minutes=minutes)
        )
    db.session.commit()
    # when: the purge runs later the same Beijing day (23:30 Beijing)
    tonight = NOON + timedelta(hours=5, minutes=30)
    removed = purge(tonight)
    # then: yesterday's daily counts go; today's stays and refuses. The intervals taken yesterday stay (for the
    # longest a campaign may set, 30 days: the purge does not tell a platform's interval from a campaign's by age)
    assert removed == 4
    assert keys() == [
        "c4:person-day:9",
        "p:device-interval:dev-ben",
        "p:ip-interval:203.0.113.7",
        "p:person-interval:8",
    ]
    with pytest.raises(LimitHit) as refused:
        enforce_claim_limits(TWICE_A_DAY, campaign_id=4, claimant=Claimant(person_id=9), now=tonight)
    assert refused.value.code == "person_daily_limit"


def test_a_day_just_ended_is_kept_an_hour_past_beijing_midnight(app):
    # given: a count of the Beijing day that ends at 16:00 UTC
    enforce_claim_limits(TWICE_A_DAY, campaign_id=4, claimant=Claimant(person_id=9), now=NOON)
    db.session.commit()
    # then: a minute past midnight it stays (a claim stamped before midnight may still be landing); later it goes
    assert purge(datetime(2026, 12, 1, 16, 1, tzinfo=UTC)) == 0
    assert purge(datetime(2026, 12, 1, 17, 1, tzinfo=UTC)) == 1


def test_past_minutes_go_and_the_current_one_stays(app):
    # given: the sign-in steps' counts a UTC minute (web.login.take_minute_slot), two hours ago and now
    def minute_slot(address: str, now: datetime) -> None:
        window = now.strftime("%Y-%m-%dT%H:%M")
        assert not take_slots([Slot(f"login:ip-minute:{address}", window, "login_rate_limited", "x", 60, 3)], now)

    minute_slot("198.51.100.1", NOON - timedelta(hours=2))
    for _ in range(3):
        minute_slot("198.51.100.2", NOON)
    db.session.commit()
    # when: the purge runs within that minute
    assert purge(NOON + timedelta(seconds=30)) == 1
    # then: the full current minute still refuses
    assert keys() == ["login:ip-minute:198.51.100.2"]
    window = NOON.strftime("%Y-%m-%dT%H:%M")
    slot = Slot("login:ip-minute:198.51.100.2", window, "login_rate_limited", "x", 60, 3)
    assert take_slots([slot], NOON + timedelta(seconds=31)) == [slot]


def test_an_interval_goes_only_once_no_interval_can_still_refuse(app):
    # given: a campaign's interval set to its longest (30 days), taken 10 days ago and 40 days ago
    slow = ClaimLimits(per_ip_per_day=None, min_interval_seconds=30 * 86_400, per_person=None)
    enforce_claim_limits(slow, campaign_id=5, claimant=Claimant(1, device="dev-recent"), now=NOON - timedelta(days=10))
    enforce_claim_limits(slow, campaign_id=5, claimant=Claimant(2, device="dev-old"), now=NOON - timedelta(days=40))
    db.session.commit()
    # when: the purge runs
    assert purge(NOON) == 1
    # then: the recent one stays, and still refuses
    assert keys() == ["c5:device-interval:dev-recent"]
    with pytest.raises(LimitHit) as refused:
        enforce_claim_limits(slow, campaign_id=5, claimant=Claimant(3, device="dev-recent"), now=NOON)
    assert refused.value.code == "device_interval"


def test_a_platform_interval_longer_than_any_campaigns_is_honoured(app):
    # given: the platform's interval per person set to 60 days, taken 45 days ago
    app.config["CLAIM_PERSON_INTERVAL_SECONDS"] = 60 * 86_400
    enforce_platform_limits(PlatformLimits.from_config(app.config), Claimant(11), NOON - timedelta(days=45))
    db.session.commit()
    # when: the purge runs
    purge(NOON)
    # then: the interval stays (it still refuses for 15 days)
    assert keys() == ["p:person-interval:11"]


def test_the_purge_walks_the_table_in_batches_a_bounded_number_of_statements(app):
    # given: 25 rows, 20 of them from a day long past, and batches of 10
    for i in range(20):
        enforce_platform_limits(PlatformLimits(0, 0, 1, 0, 0, 0), Claimant(100 + i), NOON - timedelta(days=3))
    for i in range(5):
        enforce_claim_limits(ONCE_EVER, campaign_id=6, claimant=Claimant(200 + i), now=NOON)
    db.session.commit()
    statements: list[str] = []

    def on_execute(conn, cursor, statement, *args):
        statements.append(statement.split()[0].upper())

    event.listen(db.engine, "before_cursor_execute", on_execute)
    try:
        removed = purge(NOON, batch=10)
    finally:
        event.remove(db.engine, "before_cursor_execute", on_execute)
    # then: 20 gone, the lifetime counts kept; three pages of at most 10 keys: a read and a delete each, and the
    # read that finds the end (none a row)
    assert removed == 20
    assert len(keys()) == 5
    assert statements.count("DELETE") == 3, statements
    assert statements.count("SELECT") <= 4, statements


def test_the_nightly_job_purges_limit_counters(app):
    from jobs.retention import purge_kept_rows_job

    enforce_platform_limits(PlatformLimits(), Claimant(5, ip="203.0.113.7"), datetime.now(UTC) - timedelta(days=3))
    enforce_claim_limits(ONCE_EVER, campaign_id=3, claimant=Claimant(5), now=datetime.now(UTC) - timedelta(days=3))
    db.session.commit()
    assert purge_kept_rows_job()["limit_counters"] == 2
    assert keys() == ["c3:person:5", "p:ip-interval:203.0.113.7", "p:person-interval:5"]


# -- X-Forwarded-For with a port --------------------------------------------------------------------------------------

LOGIN = "/api/v1/auth/login"
MOCK_API = "https://api.weixin.test"
JSCODE2SESSION = re.compile(MOCK_API + r"/sns/jscode2session.*")
PROXY = {"REMOTE_ADDR": "10.0.0.1"}


@pytest.fixture
def proxied(app, app_settings):
    behind = create_app(
        {**app_settings, "TRUSTED_PROXY_COUNT": 1, "LOGIN_PER_IP_PER_MINUTE": 2, "WECHAT_API_BASE": MOCK_API}
    )
    yield behind
    with behind.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def wechat_api(proxied):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(JSCODE2SESSION, json={"openid": "o-mp", "session_key": "c2Vzc2lvbktleTEyMzQ1Ng=="})
        yield rsps


def login(app, forwarded: str):
    return app.test_client().post(
        LOGIN, json={"code": "0a1b2c"}, headers={"X-Forwarded-For": forwarded}, environ_base=PROXY
    )


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (["203.0.113.7:51234", "203.0.113.7:51235", "203.0.113.7"], "198.51.100.9:443"),
        (["[2001:db8::1]:443", "[2001:db8::2]:8443", "2001:db8::3"], "[2001:db8:1::1]:443"),
    ],
)
def test_a_proxy_writing_ip_and_port_counts_each_client_apart(proxied, wechat_api, one, other):
    # given: logins limited to 2 a minute per address, behind a proxy that writes the client's ip:port
    # when: one client logs in three times (another port each time), and then another client
    codes = [login(proxied, hop).status_code for hop in one]
    # then: the first client is refused its third; the other client (not the proxy's address) is let in
    assert codes == [200, 200, 429]
    assert login(proxied, other).status_code == 200


@pytest.mark.parametrize(
    ("hop", "seen"),
    [
        ("203.0.113.7:51234", "203.0.113.7"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("203.0.113.7", "203.0.113.7"),
        ("203.0.113.7:", "10.0.0.1"),
        ("203.0.113.7:99999", "10.0.0.1"),
        ("203.0.113.7:+80", "10.0.0.1"),
        ("203.0.113.7:80:80", "10.0.0.1"),
        ("[203.0.113.7]:80", "10.0.0.1"),
        ("2001:db8::1]:443", "10.0.0.1"),
        ("[2001:db8::1:443", "10.0.0.1"),
        ("example.com:443", "10.0.0.1"),
        ("fe80::1%" + "x" * 100, "10.0.0.1"),
        ("[fe80::1%eth0]:443", "10.0.0.1"),
        ("x" * 100, "10.0.0.1"),
    ],
)
def test_the_address_read_from_a_forwarded_hop(proxied, make_product, make_user, user_headers, hop, seen):
    # given: a client behind one trusted proxy, whose hop is read as its address
    product, buyer = make_product(), make_user()
    headers = user_headers(buyer, **{"Idempotency-Key": "xff", "X-Forwarded-For": hop})
    # when: it orders
    response = proxied.test_client().post(
        "/api/v1/orders",
        json={"lines": [{"product_id": product.id, "quantity": 1}]},
        headers=headers,
        environ_base=PROXY,
    )
    # then: served under the hop's address less its port; any other text leaves the socket's (the proxy's)
    assert response.status_code == 201, response.get_json()
    db.session.rollback()
    assert db.session.execute(select(Order.ip)).scalar_one() == seen


def test_two_purges_at_once_delete_each_row_once_and_keep_the_lifetime_counts(app):
    from flask import current_app

    from jobs.retention import longest_interval_seconds as longest
    from jobs.retention import purge_limit_counters
    from tests.concurrency import together

    # given: 40 counts of a day long past and 10 lifetime counts
    for i in range(40):
        enforce_platform_limits(PlatformLimits(0, 0, 1, 0, 0, 0), Claimant(300 + i), NOON - timedelta(days=3))
    for i in range(10):
        enforce_claim_limits(ONCE_EVER, campaign_id=8, claimant=Claimant(400 + i), now=NOON)
    db.session.commit()
    seconds = longest(current_app.config)

    # when: two jobs processes purge at once, in small batches
    def run(_: int) -> int:
        try:
            return purge_limit_counters(NOON, seconds, 7, commit=db.session.commit)
        finally:
            db.session.remove()

    got = together(2, run, app)
    # then: neither failed, the 40 rows went once in all, the lifetime counts stayed
    assert all(isinstance(n, int) for n in got), got
    assert sum(got) == 40
    assert keys() == sorted(f"c8:person:{400 + i}" for i in range(10))
