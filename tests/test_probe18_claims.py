"""Probe 18: claims and campaigns — a campaign's end moved while claims wait, and packets a budget can never hold.

1. An operator ends a flash sale by moving its ``ends_at`` to the past (``PATCH``: the console's end date), while
   claims that read the campaign as running wait for its row (the hot row of the sale). A pause committed then is
   seen by the budget's UPDATE (it re-reads the status on the row it waited for); the end date was not: every
   waiting claim got its packet from a campaign whose end was already past when it was asked for.
2. A budget that cannot hold one packet's reservation is refused (422 ``budget_below_one_packet``): no packet could
   ever be issued. A sign-in campaign's streak bonus and a share campaign's sharer reward are packets too: one the
   budget cannot hold was accepted, and every 7th day's bonus (every sharer's reward) was refused as "budget
   exhausted", with an alert saying so, while the budget stood untouched.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from models import Alert, Campaign, RedPacket, db, utcnow
from models.limits import LimitCounter
from rebate.packets import generate_batch
from rebate.triggers import sign_in
from risk import PlatformLimits
from tests.concurrency import wait_until_a_backend_waits_on_a_lock

CAPPED = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1_00}]}
NO_LIMITS = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None}


def postgres() -> bool:
    return db.engine.dialect.name == "postgresql"


def written(campaign_id: int) -> tuple:
    """What a claim writes: the campaign's counters, its packets' owners, the limit counters."""
    db.session.rollback()
    campaign = db.session.get(Campaign, campaign_id)
    owned = db.session.execute(
        select(func.count()).select_from(RedPacket).where(RedPacket.owner_id.is_not(None))
    ).scalar_one()
    limits = db.session.execute(select(LimitCounter.key, LimitCounter.count).order_by(LimitCounter.key)).all()
    return (campaign.packets_issued, campaign.budget_reserved_fen), owned, limits


def claimed_while_an_edit_waits(app, campaign_id: int, values: dict, path: str, headers: dict, json=None):
    """PostgreSQL: an operator's edit of the campaign (``values``) holds its row, uncommitted; a claim (POST ``path``)
    is made in a thread, and once some backend waits on a lock (the claim, for that row) the edit commits."""
    edit = db.engine.connect()
    edit.begin()
    edit.execute(update(Campaign).where(Campaign.id == campaign_id).values(**values))
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
        edit.commit()
        edit.close()
        claimant.join(timeout=20)
    (resp,) = answers
    return resp


def test_a_self_serve_claim_waiting_for_the_row_sees_the_end_date_moved_to_the_past(
    app, make_campaign, make_user, user_headers
):
    # given: a running self-serve campaign, and a claim made in its transaction (its Idempotency-Key)
    if not postgres():
        pytest.skip("row locks: PostgreSQL (SQLite serialises its transactions)")
    campaign = make_campaign(
        CAPPED, packet_amount_fen=10_00, budget_limit_fen=1_000_00, trigger={"kind": "claim"}, claim_limits=NO_LIMITS
    )
    campaign_id = campaign.id
    headers = user_headers(make_user(), **{"Idempotency-Key": "k-ends-while-waiting"})
    db.session.commit()
    before = written(campaign_id)
    db.session.rollback()

    # when: the claim read the campaign as running and waits for its row, and the operator's end date (an hour
    # ago: the sale is over) commits
    resp = claimed_while_an_edit_waits(
        app, campaign_id, {"ends_at": utcnow() - timedelta(hours=1)}, f"/api/v1/campaigns/{campaign_id}/claim", headers
    )

    # then: no packet from a campaign that had ended when it was asked for; nothing written
    assert (resp.status_code, resp.get_json()["error"]) == (409, "campaign_not_running")
    assert written(campaign_id) == before


def test_a_code_claim_waiting_for_the_row_sees_the_end_date_moved_to_the_past(
    app, make_campaign, make_user, user_headers
):
    # given: an unclaimed code of a running campaign
    if not postgres():
        pytest.skip("row locks: PostgreSQL (SQLite serialises its transactions)")
    campaign = make_campaign(CAPPED, packet_amount_fen=10_00, budget_limit_fen=1_000_00, claim_limits=NO_LIMITS)
    (packet,) = generate_batch(campaign, 1, utcnow(), "probe18-ends")
    code, campaign_id, packet_id = packet.claim_code, campaign.id, packet.id
    headers = user_headers(make_user())
    db.session.commit()
    before = written(campaign_id)
    db.session.rollback()

    # when: the claim waits for the campaign's row at the budget, and the end date moved to the past commits
    ended = {"ends_at": utcnow() - timedelta(hours=1)}
    resp = claimed_while_an_edit_waits(app, campaign_id, ended, "/api/v1/red-packets/claim", headers, {"code": code})

    # then: refused as ended; the code is still unclaimed and nothing moved
    assert (resp.status_code, resp.get_json()["error"]) == (409, "campaign_not_running")
    assert written(campaign_id) == before
    assert db.session.get(RedPacket, packet_id).owner_id is None


def test_a_claim_before_the_end_date_still_gets_its_packet(app, make_campaign, make_user, user_headers, client):
    # given: a self-serve campaign ending in an hour
    campaign = make_campaign(
        CAPPED,
        packet_amount_fen=10_00,
        budget_limit_fen=1_000_00,
        trigger={"kind": "claim"},
        claim_limits=NO_LIMITS,
        ends_at=utcnow() + timedelta(hours=1),
    )
    # when / then: a claim (in its transaction, and in one statement) gets its packet
    for key in ("k-before-the-end", None):
        headers = user_headers(make_user(), **({"Idempotency-Key": key} if key else {}))
        db.session.commit()
        resp = client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=headers)
        assert resp.status_code == 201, resp.get_json()


SIGN_IN_BONUS = {"kind": "daily_sign_in", "streak_bonus": [{"days": 7, "amount_fen": 100_00}]}
SHARER_REWARD = {"kind": "share", "sharer_reward_fen": 100_00}


def _campaign(**fields) -> dict:
    return {
        "name": "growth",
        "issuer_type": "platform",
        "funder_type": "platform_fund",
        "budget_limit_fen": 50_00,
        "packet_amount_fen": 1_00,
        "rules": CAPPED,
        **fields,
    }


@pytest.mark.parametrize(
    ("trigger", "field"),
    [(SIGN_IN_BONUS, "trigger.streak_bonus[0].amount_fen"), (SHARER_REWARD, "trigger.sharer_reward_fen")],
)
@pytest.mark.parametrize("path", ["/admin/api/campaigns", "/admin/api/campaigns/validate"])
def test_a_bonus_packet_the_budget_can_never_hold_is_refused_at_create(client, make_operator, trigger, field, path):
    # given: a 50-yuan budget whose plain packets (1 yuan + a 1-yuan cap) fit, and a bonus packet of 100 yuan
    _, admin = make_operator("admin")

    # when: the campaign is created (or validated)
    answer = client.post(path, json=_campaign(trigger=trigger), headers=admin)

    # then: 422 naming the bonus (its reservation of 101 yuan could never be taken), nothing stored
    assert (answer.status_code, answer.get_json()["error"]) == (422, "budget_below_one_packet"), answer.get_json()
    assert field in answer.get_json()["message"]
    db.session.rollback()
    assert db.session.execute(select(func.count()).select_from(Campaign)).scalar_one() == 0
    # a bonus the budget holds (49 yuan + the 1-yuan cap) is fine
    fits = {**trigger, **({"sharer_reward_fen": 49_00} if "sharer_reward_fen" in trigger else {})}
    if "streak_bonus" in trigger:
        fits["streak_bonus"] = [{"days": 7, "amount_fen": 49_00}]
    assert client.post(path, json=_campaign(trigger=fits), headers=admin).status_code in (200, 201)


def test_a_bonus_of_another_kind_of_trigger_is_not_counted(client, make_operator):
    # a streak bonus means nothing to a self-serve campaign (only sign-in campaigns pay it): not refused for it
    _, admin = make_operator("admin")
    body = _campaign(trigger={"kind": "claim", "streak_bonus": [{"days": 7, "amount_fen": 100_00}]})
    answer = client.post("/admin/api/campaigns/validate", json=body, headers=admin)
    assert answer.status_code == 200, answer.get_json()


@pytest.mark.parametrize("trigger", [SIGN_IN_BONUS, SHARER_REWARD])
def test_a_budget_cut_or_new_caps_below_the_bonus_are_refused_too(client, make_operator, make_campaign, trigger):
    # given: a running sign-in (share) campaign whose 100-yuan bonus fits its 200-yuan budget
    _, admin = make_operator("admin")
    campaign = make_campaign(CAPPED, packet_amount_fen=1_00, budget_limit_fen=200_00, trigger=trigger)
    url = f"/admin/api/campaigns/{campaign.id}"

    # when: the budget is cut to 50 yuan, or a rules version caps the rebate at 150 yuan
    cut = client.patch(url, json={"budget_limit_fen": 50_00, "reason": "cut"}, headers=admin)
    big_cap = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 150_00}]}
    rules = client.put(f"{url}/rules", json={"rules": big_cap, "reason": "bigger caps"}, headers=admin)

    # then: both 422 budget_below_one_packet, the campaign as it was
    assert (cut.status_code, cut.get_json()["error"]) == (422, "budget_below_one_packet"), cut.get_json()
    assert (rules.status_code, rules.get_json()["error"]) == (422, "budget_below_one_packet"), rules.get_json()
    db.session.rollback()
    stored = db.session.get(Campaign, campaign.id)
    assert (stored.budget_limit_fen, stored.rules_version) == (200_00, 1)


def test_a_streak_bonus_the_budget_holds_is_issued_and_alerts_nothing(client, make_operator, make_user):
    # given: a sign-in campaign created over the API, whose 2-day bonus its budget holds
    _, admin = make_operator("admin")
    bonus = {"kind": "daily_sign_in", "streak_bonus": [{"days": 2, "amount_fen": 10_00}]}
    created = client.post("/admin/api/campaigns", json=_campaign(trigger=bonus), headers=admin)
    assert created.status_code == 201, created.get_json()
    campaign_id = created.get_json()["id"]
    activated = client.post(f"/admin/api/campaigns/{campaign_id}/activate", json={"reason": "go live"}, headers=admin)
    assert activated.status_code == 200, activated.get_json()
    person = make_user()

    # when: the person signs in two days running (the second earns the bonus)
    first_day = utcnow().replace(hour=4)  # noon Beijing
    sign_in(person, first_day, limits=PlatformLimits.off())
    _, packets = sign_in(person, first_day + timedelta(days=1), limits=PlatformLimits.off())
    db.session.commit()

    # then: the bonus packet, and no "budget exhausted" alert
    assert [p.amount_fen for p in packets] == [10_00]
    assert db.session.execute(select(func.count()).select_from(Alert)).scalar_one() == 0
