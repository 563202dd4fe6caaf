"""A self-serve campaign read once per process, then checked by its digest (rebate/packets.py, issue 11).

On PostgreSQL a claim's first SELECT returns, once the process holds a copy of the campaign, the md5 of every column
but its counters in place of the row; the copy is used only while the digest is the copy's. These tests hold the
promise that matters: **an edit is seen by the very next claim**, whichever way the row was changed (the ORM, a Core
UPDATE as the deposit's pause does, a new rules version), while the counters a claim moves never make the campaign
read again. On SQLite nothing is kept: the same answers, the row read every time.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import inspect, update

from models import Campaign, CampaignRules, RedPacket, db, utcnow
from rebate.packets import _snapshots
from tests.test_claim_sql import RESERVATION, RULES, claim_campaign, deposit_claim_campaign, statements

CAMPAIGN_COLUMNS = "campaign_rules.rules"  # in the SELECT when the campaign's row (and its rules) is read
ONE_EACH = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": 1, "per_person_per_day": None}


def hot(make_campaign, **fields) -> Campaign:
    """A self-serve campaign one person claims once (the test client's one address is not limited)."""
    return claim_campaign(make_campaign, claim_limits=ONE_EACH, **fields)


@pytest.fixture
def claim(client, make_user, user_headers):
    """A new person's claim over HTTP: the answer and the statements it sent (SQLite's BEGIN left out)."""

    def do(campaign_id: int):
        headers = user_headers(make_user())
        db.session.commit()
        with statements() as sent:
            resp = client.post(f"/api/v1/campaigns/{campaign_id}/claim", headers=headers)
        db.session.rollback()
        return resp, [s for s in sent if not s.startswith("BEGIN")]

    return do


def postgres() -> bool:
    return db.engine.dialect.name == "postgresql"


def test_the_campaign_is_read_once_and_its_counters_moving_do_not_read_it_again(app, make_campaign, claim):
    # given: a self-serve campaign
    campaign_id = hot(make_campaign).id
    # when: three people claim, one after another
    answers = [claim(campaign_id) for _ in range(3)]
    # then: three packets, reserved as the campaign says, counted
    assert [resp.status_code for resp, _ in answers] == [201, 201, 201]
    packets = [db.session.get(RedPacket, resp.get_json()["id"]) for resp, _ in answers]
    assert [(p.amount_fen, p.reserved_fen) for p in packets] == [(10_00, RESERVATION)] * 3
    assert db.session.get(Campaign, campaign_id).packets_issued == 3
    if postgres():
        # and the first claim read the row; the others its digest only, in their one statement
        # (rebate/claim_at_once.py: tests/test_claim_at_once.py)
        assert CAMPAIGN_COLUMNS in answers[0][1][0]
        for _, sent in answers[1:]:
            assert len(sent) == 1, sent
            assert CAMPAIGN_COLUMNS not in sent[0] and "md5" in sent[0], sent[0]
        # and the copy is in no session: nothing a request does can write it
        kept = _snapshots()[campaign_id].campaign
        assert inspect(kept).transient and kept.packets_issued is None  # its counters are never read
    else:
        assert _snapshots() == {}


def pause_as_the_deposit_does(campaign_id: int) -> None:
    db.session.execute(update(Campaign).where(Campaign.id == campaign_id).values(status="paused"))


def end_it(campaign_id: int) -> None:
    db.session.get(Campaign, campaign_id).ends_at = utcnow() - timedelta(minutes=1)


def new_face_value(campaign_id: int) -> None:
    db.session.get(Campaign, campaign_id).packet_amount_fen = 12_00


def new_rules_version(campaign_id: int) -> None:
    rules = {"roles": [{**RULES["roles"][0], "cap_fen": 5_00}]}
    db.session.add(CampaignRules(campaign_id=campaign_id, version=2, rules=rules))
    db.session.flush()
    db.session.get(Campaign, campaign_id).rules_version = 2


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (pause_as_the_deposit_does, (409, "campaign_not_running")),
        (end_it, (409, "campaign_not_running")),
        (new_face_value, (201, (12_00, 12_00 + 3_00))),
        (new_rules_version, (201, (10_00, 10_00 + 5_00))),
    ],
    ids=["paused-by-a-core-update", "ended", "new-face-value", "new-rules-version"],
)
def test_an_edit_is_seen_by_the_very_next_claim(app, make_campaign, claim, edit, expected):
    # given: a self-serve campaign this process has read (its copy kept on PostgreSQL)
    campaign_id = hot(make_campaign).id
    assert claim(campaign_id)[0].status_code == 201
    # when: it is edited and committed, then someone claims
    edit(campaign_id)
    db.session.commit()
    resp, sent = claim(campaign_id)
    # then: the claim answers as the edited campaign says
    status, outcome = expected
    assert resp.status_code == status, resp.get_json()
    if status == 201:
        packet = db.session.get(RedPacket, resp.get_json()["id"])
        assert (packet.amount_fen, packet.reserved_fen) == outcome
        if postgres():  # the digest differed: the one statement wrote nothing, the transaction read the row again
            assert len(sent) == 4 and CAMPAIGN_COLUMNS in sent[2], sent
            resp, sent = claim(campaign_id)  # then kept: one statement again
            assert resp.status_code == 201 and len(sent) == 1 and CAMPAIGN_COLUMNS not in sent[0], sent
    else:
        assert resp.get_json()["error"] == outcome


def test_a_campaign_that_goes_away_is_not_found(app, make_campaign, claim):
    # given: a self-serve campaign this process has read, then made a draft again
    campaign_id = hot(make_campaign).id
    assert claim(campaign_id)[0].status_code == 201
    db.session.execute(update(Campaign).where(Campaign.id == campaign_id).values(status="draft"))
    db.session.commit()
    # when / then: a draft is not found, as for any claim
    resp, _ = claim(campaign_id)
    assert resp.status_code == 404, resp.get_json()


def test_a_campaign_a_merchant_deposit_funds_is_never_kept(app, make_campaign, make_merchant, claim):
    # given: a self-serve campaign funded by a merchant's deposit (its claims may pause it through the object)
    campaign_id = deposit_claim_campaign(make_campaign, make_merchant(), claim_limits=ONE_EACH).id
    # when: two people claim
    answers = [claim(campaign_id) for _ in range(2)]
    # then: both get a packet, and the row was read by both: no copy is kept of it
    assert [resp.status_code for resp, _ in answers] == [201, 201]
    assert campaign_id not in _snapshots()
    assert all(CAMPAIGN_COLUMNS in sent[0] for _, sent in answers)
