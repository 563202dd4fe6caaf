"""Probe 17: growth mechanics as a user farming them would attack them.

Lock orders (PostgreSQL): two events of two people on one network address, one of whom is outside a campaign's
audience (its region, its channel), must not lock the campaigns and the address's limit counter in opposite
orders; nor two people claiming each other's share links at once their two people's counters.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event, select, text

from models import RedPacket, User, db, utcnow
from rebate.claims import claim_share_link
from rebate.triggers import create_share_link, on_registered, sign_in
from risk import Claimant, PlatformLimits
from tests.concurrency import together
from tests.conftest import on_postgres

CONSUMER_5 = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]}
LIMITS = PlatformLimits(
    ip_per_day=50,
    device_per_day=0,
    person_per_day=50,
    ip_interval_seconds=0,
    device_interval_seconds=0,
    person_interval_seconds=0,
)
IP = "203.0.113.7"


def _interleaved(app, first_event, second_event, second_marker: str = "UPDATE CAMPAIGNS") -> list:
    """Run two events so that the first holds its limit counters (after its first packet) while the second
    runs its first statement starting with ``second_marker`` (or waits on a lock); then the first goes on."""
    first_holds_counter, second_went_on = threading.Event(), threading.Event()
    who = threading.local()
    probe = db.engine.connect()

    def after(conn, cursor, statement, parameters, context, executemany):
        role = getattr(who, "role", None)
        if role == 0 and "limit_counters" in statement and not first_holds_counter.is_set():
            first_holds_counter.set()
            # go on once the second event locked a campaign row, or waits on one of ours
            for _ in range(200):
                if second_went_on.is_set():
                    break
                waiting = probe.execute(
                    text(
                        "select count(*) from pg_stat_activity where datname = current_database() "
                        "and wait_event_type = 'Lock'"
                    )
                ).scalar_one()
                probe.rollback()
                if waiting:
                    break
                threading.Event().wait(0.02)
        if role == 1 and statement.lstrip().upper().startswith(second_marker):
            second_went_on.set()

    def work(i: int):
        who.role = i
        if i == 1:
            first_holds_counter.wait(10)
        return (first_event, second_event)[i]()

    event.listen(db.engine, "after_cursor_execute", after)
    try:
        return together(2, work, app=app)
    finally:
        event.remove(db.engine, "after_cursor_execute", after)
        probe.close()


@pytest.mark.skipif(not on_postgres(), reason="row locks: PostgreSQL")
def test_two_newcomers_on_one_address_one_outside_a_region_register_at_once_without_a_deadlock(
    app, make_user, make_campaign
):
    # given: two newcomer campaigns, the first for Shanghai only; amy is in Shanghai, ben has no region
    shanghai = make_campaign(
        CONSUMER_5, budget_limit_fen=1_000_00, packet_amount_fen=5_00, trigger={"kind": "registration"}, regions=["SH"]
    )
    everyone = make_campaign(
        CONSUMER_5, budget_limit_fen=1_000_00, packet_amount_fen=5_00, trigger={"kind": "registration"}
    )
    amy, ben = make_user(region="SH").id, make_user().id

    def register(uid: int):
        def run():
            user = db.session.get(User, uid)
            return [
                p.campaign_id for p in on_registered(user, utcnow(), "mini_program", Claimant(uid, IP), limits=LIMITS)
            ]

        return run

    # when: both register at once from one network address
    results = _interleaved(app, register(amy), register(ben))

    # then: neither is refused by the database; amy has both packets, ben the one for everyone
    assert results == [[shanghai.id, everyone.id], [everyone.id]]
    owners = db.session.execute(select(RedPacket.owner_id, RedPacket.campaign_id).order_by(RedPacket.id)).all()
    assert sorted(owners) == sorted([(amy, shanghai.id), (amy, everyone.id), (ben, everyone.id)])


@pytest.mark.skipif(not on_postgres(), reason="row locks: PostgreSQL")
def test_two_people_on_one_address_signing_in_on_two_channels_at_once_without_a_deadlock(app, make_user, make_campaign):
    # given: two sign-in campaigns, the first on the mini program only
    mini = make_campaign(
        CONSUMER_5,
        budget_limit_fen=1_000_00,
        packet_amount_fen=1_00,
        trigger={"kind": "daily_sign_in"},
        channels=["mini_program"],
    )
    every = make_campaign(
        CONSUMER_5, budget_limit_fen=1_000_00, packet_amount_fen=1_00, trigger={"kind": "daily_sign_in"}
    )
    amy, ben = make_user().id, make_user().id

    def sign(uid: int, channel: str):
        def run():
            user = db.session.get(User, uid)
            _, packets = sign_in(user, utcnow(), channel, Claimant(uid, IP), limits=LIMITS)
            return [p.campaign_id for p in packets]

        return run

    # when: amy signs in on the mini program, ben on the official account, at once, from one address
    results = _interleaved(app, sign(amy, "mini_program"), sign(ben, "official_account"))

    # then: both signed in and got their packets
    assert results == [[mini.id, every.id], [every.id]]


@pytest.mark.skipif(not on_postgres(), reason="row locks: PostgreSQL")
def test_two_friends_claiming_each_others_share_links_at_once_without_a_deadlock(app, make_user, make_campaign):
    # given: two share campaigns rewarding the sharer; amy shares the first, ben the second
    first, second = (
        make_campaign(
            CONSUMER_5,
            budget_limit_fen=1_000_00,
            packet_amount_fen=1_00,
            trigger={"kind": "share", "sharer_reward_fen": 50},
            claim_limits={"per_ip_per_day": None},
        )
        for _ in range(2)
    )
    amy, ben = make_user(), make_user()
    amys, bens = create_share_link(first, amy, utcnow()).token, create_share_link(second, ben, utcnow()).token
    db.session.commit()
    amy, ben = amy.id, ben.id

    def claim(token: str, uid: int, ip: str):
        def run():
            user = db.session.get(User, uid)
            return claim_share_link(token, user, utcnow(), claimant=Claimant(uid, ip), limits=LIMITS).sharer_rewarded

        return run

    # when: ben claims amy's link while amy claims ben's, each from their own network
    results = _interleaved(
        app,
        claim(amys, ben, "198.51.100.1"),
        claim(bens, amy, "198.51.100.2"),
        second_marker="INSERT INTO LIMIT_COUNTERS",
    )

    # then: both claims and both rewards
    assert results == [True, True]
