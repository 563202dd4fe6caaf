"""A self-serve claim in one statement committed by itself (rebate/claim_at_once.py, issue 11).

Once a process keeps a copy of a self-serve campaign (PostgreSQL), a signed-in claim without an
``Idempotency-Key`` is ONE statement on a connection in autocommit: no BEGIN, no COMMIT. It either makes the
packet or writes nothing, and whatever it does not answer itself is answered by the claim's transaction, as
before. These tests hold that promise from the outside: the same answers as the transaction gives, nothing
written by a refusal (the limit counters, the campaign's counters, the packets), exactly the budget's packets
under concurrent claims. On SQLite nothing is kept: the same answers, by the transaction.
"""

from __future__ import annotations

import threading
from collections import Counter
from itertools import count as numbers

import pytest
from sqlalchemy import func, select, update

from models import Ban, Campaign, ClaimRefusal, RedPacket, User, UserStatus, db, utcnow
from models.base import beijing
from models.limits import LimitCounter
from rebate import claim_at_once
from rebate.packets import _snapshots
from risk import Claimant, PlatformLimits
from risk.limits import platform_slots
from tests.concurrency import post_together, wait_until_a_backend_waits_on_a_lock
from tests.test_claim_sql import DEFAULT_LIMITS, RESERVATION, claim_campaign, statements
from web.auth import issue_user_token

_addresses = numbers(1)


@pytest.fixture
def app_settings(app_settings):
    return {**app_settings, **DEFAULT_LIMITS}  # the platform-wide limits on: a claim takes their slots too


def postgres() -> bool:
    return db.engine.dialect.name == "postgresql"


@pytest.fixture
def claim(client, make_user, user_headers):
    """A claim over HTTP by ``user`` (a new person by default), each from its own address: the answer and the
    statements sent (SQLite's BEGIN left out)."""

    def do(campaign_id: int, user: User | None = None, *, address: str | None = None, **headers):
        headers = user_headers(user or make_user(), **headers)
        db.session.commit()
        environ = {"REMOTE_ADDR": address or f"203.0.113.{next(_addresses)}"}
        with statements() as sent:
            resp = client.post(f"/api/v1/campaigns/{campaign_id}/claim", headers=headers, environ_base=environ)
        db.session.rollback()
        return resp, [s for s in sent if not s.startswith("BEGIN")]

    return do


def kept_campaign(make_campaign, claim, first: User | None = None, **fields) -> int:
    """A self-serve campaign this process has claimed from once (by ``first``; its copy kept on PostgreSQL)."""
    campaign_id = claim_campaign(make_campaign, **fields).id
    resp, _ = claim(campaign_id, first)
    assert resp.status_code == 201, resp.get_json()
    assert (campaign_id in _snapshots()) == postgres()
    return campaign_id


def written(campaign_id: int) -> tuple:
    """Everything a claim writes: the campaign's counters, its packets, every limit counter, refusals kept."""
    db.session.rollback()
    campaign = db.session.get(Campaign, campaign_id)
    packets = db.session.execute(select(func.count()).select_from(RedPacket)).scalar_one()
    limits = db.session.execute(select(LimitCounter.key, LimitCounter.count).order_by(LimitCounter.key)).all()
    refusals = db.session.execute(select(ClaimRefusal.code).order_by(ClaimRefusal.id)).scalars().all()
    return (campaign.packets_issued, campaign.budget_reserved_fen), packets, limits, refusals


def test_a_kept_campaigns_claim_is_one_statement_and_commits_by_itself(app, make_campaign, claim):
    # given: a self-serve campaign this process has read
    campaign_id = kept_campaign(make_campaign, claim)
    # when: two more people claim
    answers = [claim(campaign_id) for _ in range(2)]
    # then: two packets, reserved as the campaign says, counted, and their limit slots taken
    assert [resp.status_code for resp, _ in answers] == [201, 201]
    (issued, reserved), packets, limits, _ = written(campaign_id)
    assert (issued, reserved, packets) == (3, 3 * RESERVATION, 3)
    assert sum(n for _, n in limits) == 3 * (3 + 4)  # per claim: the campaign's 3 + platform IP and person
    for resp, sent in answers:
        packet = db.session.get(RedPacket, resp.get_json()["id"])
        assert (packet.amount_fen, packet.reserved_fen, packet.status) == (10_00, RESERVATION, "issued")
        if postgres():  # one statement: the checks, the slots, the budget and the packet; no transaction around
            assert len(sent) == 1 and "INSERT INTO red_packets" in sent[0] and "md5" in sent[0], sent


@pytest.mark.parametrize("which", ["banned", "unknown"])
def test_a_banned_or_unknown_claimant_is_refused_as_before_and_nothing_is_written(
    app, make_campaign, make_user, claim, which
):
    # given: a kept campaign; a person banned since signing in, or a token for a person who does not exist
    campaign_id = kept_campaign(make_campaign, claim)
    person = make_user()
    if which == "banned":
        person.status = UserStatus.BANNED
    else:
        db.session.delete(person.identities[0])
        db.session.delete(person)
    db.session.commit()
    before = written(campaign_id)
    # when: they claim
    resp, _ = claim(campaign_id, person)
    # then: 403 / 401 as ever, and nothing written
    assert (resp.status_code, resp.get_json()["error"]) == (
        (403, "user_banned") if which == "banned" else (401, "invalid_token")
    )
    assert written(campaign_id) == before


def test_a_banned_address_is_refused_and_kept_for_the_trace_only(app, make_campaign, claim):
    # given: a kept campaign; a ban on one network address
    campaign_id = kept_campaign(make_campaign, claim)
    db.session.add(Ban(subject="net", value="198.51.100.77", reason="click farm"))
    db.session.commit()
    (counted, packets, limits, refusals) = written(campaign_id)
    # when: someone claims from it
    resp, _ = claim(campaign_id, address="198.51.100.77")
    # then: 403 banned; the refusal kept, nothing else written
    assert (resp.status_code, resp.get_json()["error"]) == (403, "banned")
    assert written(campaign_id) == (counted, packets, limits, [*refusals, "banned"])


@pytest.mark.parametrize("sold_out", [False, True], ids=["budget-left", "sold-out"])
def test_a_second_claim_of_one_person_is_refused_by_the_transaction_and_its_other_slots_are_not_taken(
    app, make_campaign, make_user, claim, sold_out
):
    # given: a kept campaign (one packet per person); dan has his (the last of a count budget of two: sold out)
    campaign_id = kept_campaign(make_campaign, claim, **({"max_packets": 2} if sold_out else {}))
    dan = make_user()
    assert claim(campaign_id, dan)[0].status_code == 201
    (counted, packets, limits, refusals) = written(campaign_id)
    # when: he claims again from another address (that address's slots are free; his person slot is not)
    resp, sent = claim(campaign_id, dan)
    # then: 429 person_limit, kept for the trace, ranked before a sold-out 409 as the transaction ranks it; the
    # free slots the one statement took (budget left) were undone with it
    assert (resp.status_code, resp.get_json()["error"]) == (429, "person_limit")
    assert written(campaign_id) == (counted, packets, limits, [*refusals, "person_limit"])
    if postgres():  # the one statement wrote nothing (failed as a whole, or found his limit refusing), then
        assert "INSERT INTO red_packets" in sent[0] and len(sent) > 1, sent  # the transaction answered


def test_a_person_outside_the_campaigns_regions_is_refused_and_one_inside_is_not(app, make_campaign, make_user, claim):
    # given: a kept campaign for Shanghai only
    campaign_id = kept_campaign(make_campaign, claim, make_user(region="310000"), regions=["310000"])
    before = written(campaign_id)
    # when: a Beijing person claims, then a Shanghai one
    outside, _ = claim(campaign_id, make_user(region="110000"))
    assert written(campaign_id) == before
    inside, sent = claim(campaign_id, make_user(region="310000"))
    # then: 422 outside_region, nothing written; 201 for the Shanghai person, in one statement
    assert (outside.status_code, outside.get_json()["error"]) == (422, "outside_region")
    assert inside.status_code == 201, inside.get_json()
    if postgres():
        assert len(sent) == 1, sent


@pytest.mark.parametrize("own_limits", [False, True], ids=["no-limits-of-its-own", "limits-of-its-own"])
@pytest.mark.parametrize("spent", ["count", "money"])
def test_a_sold_out_campaign_refuses_as_before_and_writes_nothing(app, make_campaign, claim, own_limits, spent):
    # given: a kept campaign whose count (or money) budget held two packets, both taken
    budget = {"max_packets": 2} if spent == "count" else {"budget_limit_fen": 2 * RESERVATION}
    none = dict.fromkeys(("per_ip_per_day", "min_interval_seconds", "per_person", "per_person_per_day"))
    limits = {} if own_limits else {"claim_limits": none}  # the default: 1 per person, 5 per address, 600 s
    campaign_id = kept_campaign(make_campaign, claim, **budget, **limits)
    assert claim(campaign_id)[0].status_code == 201
    before = written(campaign_id)
    # when: a third person claims
    resp, sent = claim(campaign_id)
    # then: 409 as the transaction answers it, nothing written
    code = "packets_exhausted" if spent == "count" else "budget_exhausted"
    assert (resp.status_code, resp.get_json()["error"]) == (409, code)
    assert written(campaign_id) == before
    if postgres():  # the one statement told it: none of the campaign's own limits refuses, to rank first
        assert len(sent) == 1, sent


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c.update({"status": "paused"}),
        lambda c: c.update({"channels": ["official_account"]}),
        lambda c: c.update({"usage_windows": {"weekdays": [beijing(utcnow()).isoweekday() % 7 + 1]}}),
    ],
    ids=["paused", "another-channel", "another-day"],
)
def test_an_edit_refuses_the_very_next_claim_as_the_transaction_does(app, make_campaign, claim, edit):
    # given: a kept campaign, then edited by a Core UPDATE (the copy does not know)
    campaign_id = kept_campaign(make_campaign, claim)
    values: dict = {}
    edit(values)
    db.session.execute(update(Campaign).where(Campaign.id == campaign_id).values(**values))
    db.session.commit()
    before = written(campaign_id)
    # when: someone claims
    resp, _ = claim(campaign_id)
    # then: refused as the edited campaign says, nothing written
    assert resp.status_code in (409, 422), resp.get_json()
    assert written(campaign_id) == before


def test_a_keyed_claim_is_made_in_the_transaction_with_its_key(app, make_campaign, claim):
    # given: a kept campaign
    campaign_id = kept_campaign(make_campaign, claim)
    # when: a claim with an Idempotency-Key
    resp, sent = claim(campaign_id, **{"Idempotency-Key": "k-at-once-1"})
    # then: made with its key in one transaction, not in the one statement
    assert resp.status_code == 201, resp.get_json()
    assert any("idempotency" in s for s in sent), sent
    if postgres():
        assert not any("md5" in s and "INSERT INTO red_packets" in s for s in sent), sent


def test_a_forged_device_token_is_refused_before_anything_is_written(app, make_campaign, claim):
    # given: a kept campaign
    campaign_id = kept_campaign(make_campaign, claim)
    before = written(campaign_id)
    # when: a claim whose device token we never issued
    resp, _ = claim(campaign_id, **{"X-Device-Token": "forged"})
    # then: refused, nothing written
    assert (resp.status_code, resp.get_json()["error"]) == (422, "invalid_device_token")
    assert written(campaign_id) == before


def test_30_people_at_once_on_a_kept_campaign_with_a_budget_for_8_get_exactly_8(
    app, make_campaign, make_user, user_headers, claim
):
    # given: a kept campaign whose budget holds 8 more packets; 30 people, each from their own address
    campaign_id = kept_campaign(make_campaign, claim, budget_limit_fen=9 * RESERVATION)
    path = f"/api/v1/campaigns/{campaign_id}/claim"
    requests = [(path, user_headers(make_user()), {"REMOTE_ADDR": f"192.0.2.{i}"}) for i in range(30)]
    # when: all claim at once
    results = post_together(app, requests, as_="environ_base")
    # then: exactly 8 packets, the budget full and never over, only the winners' slots taken, nothing lost
    assert Counter(results) == {(201, None): 8, (409, "budget_exhausted"): 22}, results
    (issued, reserved), packets, limits, _ = written(campaign_id)
    assert (issued, reserved, packets) == (9, 9 * RESERVATION, 9)
    assert sum(n for _, n in limits) == 9 * (3 + 4)


def test_the_one_statement_writes_nothing_when_a_slot_is_refused_after_others_were_taken(
    app, make_campaign, make_user, claim
):
    # given: a kept campaign; eve's person slot for today is full, her address's slots are free
    campaign_id = kept_campaign(make_campaign, claim)
    if not postgres():
        pytest.skip("the one statement is PostgreSQL's (SQLite keeps no copy)")
    eve = make_user()
    limits = PlatformLimits.from_config({**app.config, "CLAIM_PERSON_PER_DAY": 1})
    now = utcnow()
    claimant = Claimant(eve.id, "192.0.2.200")
    person_day = next(s for s in platform_slots(limits, claimant, now) if s.key.startswith("p:person-day:"))
    db.session.add(LimitCounter(key=person_day.key, window=person_day.window, count=1, last_at=now))
    db.session.commit()
    before = written(campaign_id)
    slots = platform_slots(limits, claimant, now)
    assert len(slots) > 1
    # when: the one statement is sent with those slots (by a session that has begun nothing, as a request's)
    copy, eve_id = _snapshots()[campaign_id], eve.id
    db.session.rollback()
    with statements() as sent:
        outcome = claim_at_once.claim(
            copy,
            eve_id,
            slots,
            {"ban_device": None, "ban_ip": "192.0.2.200", "ban_net": None, "ban_now": now},
            own=[],
            channel=None,
            source_ref="at-once-test",
            now=now,
        )
    # then: nothing made, nothing written (the statement failed as a whole): the transaction is to answer
    assert len(sent) == 1 and "INSERT INTO red_packets" in sent[0]
    assert outcome is None
    assert written(campaign_id) == before


def test_psycopg_converts_the_claims_statement_once(app, make_campaign, claim, monkeypatch):
    # given: a kept campaign (PostgreSQL through psycopg: app.py lets psycopg keep long statements' conversions)
    campaign_id = kept_campaign(make_campaign, claim)
    if db.engine.dialect.driver != "psycopg":
        pytest.skip("psycopg's statement conversion")
    from psycopg import _queries

    assert _queries.MAX_CACHED_STATEMENT_LENGTH >= 16384 and _queries.MAX_CACHED_STATEMENT_PARAMS >= 200
    parsed = []  # what psycopg converts without its cache (it calls this by name then)
    uncached = _queries._query2pg_nocache
    monkeypatch.setattr(_queries, "_query2pg_nocache", lambda *a: parsed.append(a[0]) or uncached(*a))
    # when: another claim, whose one statement is longer than psycopg's own 4,096 characters and 50 parameters
    resp, sent = claim(campaign_id)
    # then: its conversion came from psycopg's cache, not from parsing the statement again
    assert resp.status_code == 201 and len(sent) == 1 and len(sent[0]) > 4096
    assert parsed == []


def claimed_while_a_stop_waits(app, campaign_id: int, status: str, path: str, headers: dict, json=None):
    """PostgreSQL: an operator's change of the campaign to ``status`` holds its row, uncommitted; a claim (POST
    ``path``) is made in a thread, and once some backend waits on a lock (the claim, for that row) the change
    commits. The claim's answer."""
    stop = db.engine.connect()
    stop.begin()
    stop.execute(update(Campaign).where(Campaign.id == campaign_id).values(status=status))
    answers: list = []

    def claim_it():
        with app.app_context():
            answers.append(app.test_client().post(path, headers=headers, json=json))

    claimant = threading.Thread(target=claim_it)
    claimant.start()
    try:
        probe = db.engine.connect()
        wait_until_a_backend_waits_on_a_lock(probe)
        probe.close()
    finally:
        stop.commit()
        stop.close()
        claimant.join(timeout=20)
    (resp,) = answers
    return resp


def test_a_pause_committed_while_the_claim_waits_for_the_campaigns_row_is_seen(
    app, make_campaign, make_user, user_headers, claim
):
    # given: a kept campaign, and an operator's pause of it holding the campaign's row, not committed yet
    campaign_id = kept_campaign(make_campaign, claim)
    if not postgres():
        pytest.skip("row locks: PostgreSQL (SQLite serialises its transactions)")
    headers = user_headers(make_user())
    db.session.commit()
    before = written(campaign_id)
    db.session.rollback()
    # when: the claim's one statement waits for that row, and the pause commits
    resp = claimed_while_a_stop_waits(app, campaign_id, "paused", f"/api/v1/campaigns/{campaign_id}/claim", headers)
    # then: the claim answers as the paused campaign says, and nothing was written
    assert (resp.status_code, resp.get_json()["error"]) == (409, "campaign_not_running")
    assert written(campaign_id) == before


@pytest.mark.parametrize("new_status", ["paused", "ended"])
def test_a_keyed_claim_in_its_transaction_sees_a_stop_committed_while_it_waits_for_the_campaigns_row(
    app, make_campaign, make_user, user_headers, claim, new_status
):
    # given: a self-serve campaign, a claim that will be made in its transaction (its Idempotency-Key), and an
    # operator's pause (or end) of the campaign holding the campaign's row, not committed yet
    campaign_id = kept_campaign(make_campaign, claim)
    if not postgres():
        pytest.skip("row locks: PostgreSQL (SQLite serialises its transactions)")
    headers = user_headers(make_user(), **{"Idempotency-Key": f"k-waits-{new_status}"})
    db.session.commit()
    before = written(campaign_id)
    db.session.rollback()
    # when: the claim read the campaign (running), waits for its row at the budget, and the stop commits
    resp = claimed_while_a_stop_waits(app, campaign_id, new_status, f"/api/v1/campaigns/{campaign_id}/claim", headers)
    # then: no packet from a stopped campaign: the claim is refused as the campaign now stands, nothing written
    assert (resp.status_code, resp.get_json()["error"]) == (409, "campaign_not_running")
    assert written(campaign_id) == before


def test_a_code_claim_sees_a_pause_committed_while_it_waits_for_the_campaigns_row(
    app, make_campaign, make_user, user_headers
):
    # given: an unclaimed packet of a code campaign, and a pause of its campaign holding the row, not committed
    if not postgres():
        pytest.skip("row locks: PostgreSQL (SQLite serialises its transactions)")
    from rebate.packets import generate_batch

    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1_000}]},
        budget_limit_fen=100_000,
        packet_amount_fen=500,
    )
    (packet,) = generate_batch(campaign, 1, utcnow(), "batch-waits")
    code, campaign_id = packet.claim_code, campaign.id
    headers = user_headers(make_user())
    db.session.commit()
    before = written(campaign_id)
    db.session.rollback()
    # when: the claim waits for the campaign's row at the budget, and the pause commits
    resp = claimed_while_a_stop_waits(app, campaign_id, "paused", "/api/v1/red-packets/claim", headers, {"code": code})
    # then: refused as paused; the packet is still unclaimed and nothing moved
    assert (resp.status_code, resp.get_json()["error"]) == (409, "campaign_not_running")
    assert written(campaign_id) == before
    assert db.session.get(RedPacket, packet.id).owner_id is None


def test_a_token_from_before_signing_out_everywhere_claims_nothing(app, make_campaign, make_user, claim):
    # given: a kept campaign, and a person who signed out everywhere after this token was issued
    from sqlalchemy import update

    campaign_id = kept_campaign(make_campaign, claim)
    person = make_user()
    db.session.commit()
    stale = {"Authorization": f"Bearer {issue_user_token(person)}"}
    db.session.execute(update(User).where(User.id == person.id).values(token_generation=1))
    db.session.commit()
    before = written(campaign_id)
    # when: the old token claims (in one statement where this process keeps the campaign)
    resp, _ = claim(campaign_id, person, **stale)
    # then: 401 token_revoked, and nothing written
    assert (resp.status_code, resp.get_json()["error"]) == (401, "token_revoked")
    assert written(campaign_id) == before
