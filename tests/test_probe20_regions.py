"""A person's region, which campaigns limited to ``regions`` take (probe 20).

Nothing set ``users.region`` before: a campaign an operator limited to 杭州 was claimed by nobody, with no reason
given, and a registration campaign with regions never paid (a new person has no region when it fires). Now a person
says their region (``PUT /api/v1/me/region``, the same shape as a campaign's ``regions`` entries, changed at most once
every 30 days), a campaign whose trigger fires for a brand-new person cannot have regions, and a claim refused for
want of a region says to set it.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from models import AuditLog, Campaign, RedPacket, User, db, utcnow
from rebate.packets import _snapshots
from tests.test_claim_sql import statements

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]}
NO_LIMITS = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None}


def put_region(client, headers, region, **extra):
    return client.put("/api/v1/me/region", json={"region": region}, headers={**headers, **extra})


def row(user_id: int) -> tuple:
    db.session.rollback()
    found = db.session.execute(select(User.region, User.region_set_at).where(User.id == user_id)).one()
    return tuple(found)


def hangzhou_campaign(make_campaign, **fields):
    fields.setdefault("budget_limit_fen", 1_000_00)
    fields.setdefault("packet_amount_fen", 10_00)
    fields.setdefault("claim_limits", NO_LIMITS)
    fields.setdefault("trigger", {"kind": "claim"})
    return make_campaign(RULES, regions=["杭州"], **fields)


# -- the person's region ------------------------------------------------------------------------------------------


def test_a_person_sets_their_region_and_then_claims_a_campaign_for_it(client, make_user, user_headers, make_campaign):
    # given: an operator's campaign for 杭州 only, and a person with no region
    campaign = hangzhou_campaign(make_campaign)
    amy = make_user()
    headers = user_headers(amy)

    # when: she reads her region
    got = client.get("/api/v1/me/region", headers=headers)

    # then: none yet, changeable now, and the regions running campaigns name offered to pick from
    assert got.status_code == 200, got.get_json()
    assert got.get_json() | {"campaign_regions": None} == {
        "region": None,
        "set_at": None,
        "changeable_at": None,
        "change_every_days": 30,
        "campaign_regions": None,
    }
    assert "杭州" in got.get_json()["campaign_regions"]

    # when: she claims first, then says she is in 杭州 and claims again
    refused = client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=headers)
    put = put_region(client, headers, "杭州", **{"Idempotency-Key": "region-1"})
    claimed = client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=headers)

    # then: the first claim is refused, telling her to set her region; then her region is 杭州 and the claim pays
    assert refused.status_code == 422 and refused.get_json()["error"] == "outside_region"
    assert "set your region" in refused.get_json()["message"]
    assert put.status_code == 200, put.get_json()
    body = put.get_json()
    assert body["region"] == "杭州" and body["set_at"] is not None
    assert body["changeable_at"] is not None  # the 30 days' wait has begun
    assert claimed.status_code == 201, claimed.get_json()
    assert row(amy.id)[0] == "杭州"

    # and: the same key again replays the answer; GET shows the region
    again = put_region(client, headers, "杭州", **{"Idempotency-Key": "region-1"})
    assert again.status_code == 200 and again.get_json()["region"] == "杭州"
    assert client.get("/api/v1/me/region", headers=headers).get_json()["region"] == "杭州"


@pytest.mark.parametrize(
    "sent",
    [
        {"region": ""},
        {"region": "   "},
        {"region": "x" * 33},
        {"region": "杭州 西湖"},
        {"region": "杭州;drop"},
        {"region": "<b>杭州</b>"},
        {"region": None},
        {"region": 330100},
        {"region": ["杭州"]},
        {},
        {"region": "杭州", "city": "杭州"},
    ],
    ids=["empty", "blank", "too-long", "space", "semicolon", "markup", "null", "number", "list", "missing", "extra"],
)
def test_a_region_not_of_a_campaign_regions_shape_is_422_and_changes_nothing(client, make_user, user_headers, sent):
    # given: a person whose region is 上海
    ben = make_user(region="上海")
    before = row(ben.id)

    # when: they send a region no campaign's regions could hold
    resp = client.put("/api/v1/me/region", json=sent, headers=user_headers(ben))

    # then: 422 naming the field, nothing changed
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["error"] == "validation_error"
    assert row(ben.id) == before


def test_a_region_of_the_longest_campaign_shape_is_taken_stripped(client, make_user, user_headers):
    cat = make_user()
    longest = "a" * 30 + "-_"
    resp = put_region(client, user_headers(cat), f"  {longest}  ")
    assert resp.status_code == 200, resp.get_json()
    assert row(cat.id)[0] == longest


def test_unauthenticated_or_banned_callers_cannot_read_or_set_a_region(client, make_user, user_headers):
    # when: no token, a forged token
    assert client.get("/api/v1/me/region").status_code == 401
    assert client.put("/api/v1/me/region", json={"region": "杭州"}).status_code == 401
    forged = {"Authorization": "Bearer not-a-token"}
    assert client.put("/api/v1/me/region", json={"region": "杭州"}, headers=forged).status_code == 401

    # and: a banned person
    dan = make_user()
    headers = user_headers(dan)
    db.session.execute(update(User).where(User.id == dan.id).values(status="banned"))
    db.session.commit()
    assert put_region(client, headers, "杭州").status_code == 403
    assert row(dan.id) == (None, None)


def test_a_second_change_within_30_days_is_429_with_retry_after_and_changes_nothing(client, make_user, user_headers):
    # given: a person who set 杭州
    eve = make_user()
    headers = user_headers(eve)
    assert put_region(client, headers, "杭州").status_code == 200
    before = row(eve.id)

    # when: they move to 上海 at once (a key or none)
    soon = put_region(client, headers, "上海", **{"Idempotency-Key": "hop-1"})

    # then: 429 region_change_too_soon, Retry-After about 30 days, when it may change; nothing changed
    assert soon.status_code == 429, soon.get_json()
    assert soon.get_json()["error"] == "region_change_too_soon"
    assert 29 * 86400 < int(soon.headers["Retry-After"]) <= 30 * 86400
    assert soon.get_json()["details"]["changeable_at"] == (before[1] + timedelta(days=30)).isoformat()
    assert row(eve.id) == before

    # and: setting the region she has changes nothing and does not start the wait again
    same = put_region(client, headers, "杭州")
    assert same.status_code == 200 and row(eve.id) == before

    # when: 29 days have passed, then 30
    db.session.execute(
        update(User).where(User.id == eve.id).values(region_set_at=utcnow() - timedelta(days=29, hours=23))
    )
    db.session.commit()
    assert put_region(client, headers, "上海", **{"Idempotency-Key": "hop-1"}).status_code == 429
    db.session.execute(update(User).where(User.id == eve.id).values(region_set_at=utcnow() - timedelta(days=30)))
    db.session.commit()
    moved = put_region(client, headers, "上海", **{"Idempotency-Key": "hop-1"})

    # then: the change is taken (the 429 was not kept as the key's answer), and the wait begins again
    assert moved.status_code == 200, moved.get_json()
    region, set_at = row(eve.id)
    assert region == "上海" and utcnow() - set_at < timedelta(minutes=5)
    assert put_region(client, headers, "杭州").status_code == 429


def test_a_region_set_by_hand_before_may_be_changed_once(client, make_user, user_headers):
    # given: a person whose region was written before people could set it (no date)
    fay = make_user(region="310000")

    # when: they set their own, then change again
    first = put_region(client, user_headers(fay), "上海")
    second = put_region(client, user_headers(fay), "杭州")

    # then: the first is taken, the second waits
    assert first.status_code == 200 and second.status_code == 429
    assert row(fay.id)[0] == "上海"


def test_the_region_route_is_published(client):
    spec = client.get("/openapi.json").get_json()
    assert {"get", "put"} <= set(spec["paths"]["/api/v1/me/region"])


# -- a refused claim for want of a region says so, on both claim paths ---------------------------------------------


def test_a_claim_without_a_region_is_told_to_set_it_on_both_claim_paths(client, make_user, user_headers, make_campaign):
    # given: a self-serve campaign for 杭州 this process has claimed from once (on PostgreSQL: a copy kept, claims
    # then go as one statement)
    campaign = hangzhou_campaign(make_campaign)
    first = client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=user_headers(make_user(region="杭州")))
    assert first.status_code == 201, first.get_json()
    one_statement = db.engine.dialect.name == "postgresql"
    assert (campaign.id in _snapshots()) == one_statement
    campaign_id = campaign.id
    people = make_user(), make_user(region="上海"), make_user()
    nobody, elsewhere, gus = (u.id for u in people)
    headers = {u.id: user_headers(u) for u in people}
    del people, campaign
    db.session.commit()

    def claim(user_id):
        db.session.commit()
        db.session.expunge_all()  # as a server's session: no row of this test's held (a held one is read again)
        with statements() as sent:
            resp = client.post(f"/api/v1/campaigns/{campaign_id}/claim", headers=headers[user_id])
        db.session.rollback()
        return resp, [s for s in sent if not s.startswith("BEGIN")]

    # when: a person with no region and one in 上海 claim (the one statement admits neither: the transaction answers)
    unset, tried = claim(nobody)
    outside, _ = claim(elsewhere)
    if one_statement:  # the one statement ran first, admitted nobody and wrote nothing; the transaction answered
        assert tried[0].startswith("WITH context") and len(tried) > 1, [s[:80] for s in tried]

    # then: the same code; only the one without a region is told to set it
    assert (unset.status_code, unset.get_json()["error"]) == (422, "outside_region")
    assert (outside.status_code, outside.get_json()["error"]) == (422, "outside_region")
    assert "杭州" in unset.get_json()["message"] and "set your region" in unset.get_json()["message"]
    assert "set your region" not in outside.get_json()["message"]
    assert db.session.execute(select(RedPacket.id).where(RedPacket.owner_id.in_([nobody, elsewhere]))).all() == []

    # when: the person without a region sets 杭州 and claims
    assert put_region(client, headers[gus], "杭州").status_code == 200
    claimed, sent = claim(gus)

    # then: a packet, in one statement on PostgreSQL
    assert claimed.status_code == 201, claimed.get_json()
    if one_statement:
        assert len(sent) == 1, [s[:150] for s in sent]  # the claim itself


def test_the_code_claim_path_tells_a_person_without_a_region_too(client, make_user, user_headers, make_campaign):
    from rebate.packets import generate_batch

    campaign = hangzhou_campaign(make_campaign, trigger={}, claim_limits={"per_ip_per_day": 5})
    [packet] = generate_batch(campaign, 1, utcnow(), "b1")
    db.session.commit()
    resp = client.post("/api/v1/red-packets/claim", json={"code": packet.claim_code}, headers=user_headers(make_user()))
    assert (resp.status_code, resp.get_json()["error"]) == (422, "outside_region")
    assert "set your region" in resp.get_json()["message"]


# -- a campaign for brand-new people cannot have regions -----------------------------------------------------------


def campaign_body(trigger: dict, **fields) -> dict:
    return {
        "name": f"campaign {trigger.get('kind')}",
        "issuer_type": "platform",
        "funder_type": "platform_fund",
        "budget_limit_fen": 100_00,
        "packet_amount_fen": 5_00,
        "trigger": trigger,
        "rules": RULES,
        **fields,
    }


@pytest.mark.parametrize("kind", ["registration", "referral_bind"])
@pytest.mark.parametrize("route", ["/admin/api/campaigns", "/admin/api/campaigns/validate"])
def test_a_new_person_campaign_with_regions_is_refused_at_create_and_validate(client, make_operator, kind, route):
    # given: a platform admin
    _, admin = make_operator("admin")
    campaigns = db.session.execute(select(Campaign.id)).all()

    # when: they create (or check) a registration / referral-bind campaign for 杭州
    resp = client.post(route, json=campaign_body({"kind": kind}, regions=["杭州"]), headers=admin)

    # then: 422 saying a new person has no region when it fires; nothing created
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["error"] == "regions_on_new_person_trigger"
    assert "no region" in resp.get_json()["message"]
    assert resp.get_json()["details"] == {"trigger": kind, "regions": ["杭州"]}
    db.session.rollback()
    assert db.session.execute(select(Campaign.id)).all() == campaigns

    # and: without regions it is made; other triggers keep their regions
    assert client.post(route, json=campaign_body({"kind": kind}), headers=admin).status_code in (200, 201)
    for other in ({"kind": "claim"}, {"kind": "daily_sign_in"}, {"kind": "order_paid"}, {}):
        ok = client.post(route, json=campaign_body(other, regions=["杭州"], name=f"c {other}"), headers=admin)
        assert ok.status_code in (200, 201), ok.get_json()


@pytest.mark.parametrize("kind", ["registration", "referral_bind"])
def test_a_new_person_campaigns_regions_cannot_be_set_by_a_change_but_can_be_emptied(
    client, make_operator, make_campaign, kind
):
    # given: a running registration campaign, and one made with regions before this rule (issuing to nobody)
    _, admin = make_operator("admin")
    plain = make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=5_00, trigger={"kind": kind})
    stuck = make_campaign(
        RULES, budget_limit_fen=100_00, packet_amount_fen=5_00, trigger={"kind": kind}, regions=["杭州"]
    )

    # when: an operator limits the first to 杭州
    resp = client.patch(
        f"/admin/api/campaigns/{plain.id}", json={"regions": ["杭州"], "reason": "Hangzhou only"}, headers=admin
    )

    # then: 422, nothing changed, nothing audited
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["error"] == "regions_on_new_person_trigger"
    db.session.rollback()
    assert db.session.get(Campaign, plain.id).regions == []
    assert db.session.execute(select(AuditLog.id).where(AuditLog.action == "campaign.change")).all() == []

    # and: the old one's regions can be emptied, so it pays new people again
    emptied = client.patch(
        f"/admin/api/campaigns/{stuck.id}", json={"regions": [], "reason": "new people have no region"}, headers=admin
    )
    assert emptied.status_code == 200, emptied.get_json()
    db.session.rollback()
    assert db.session.get(Campaign, stuck.id).regions == []


def test_another_merchants_campaign_is_still_404_not_422(client, make_operator, make_campaign, make_merchant):
    # given: merchant staff, and a registration campaign funded by another merchant
    other = make_merchant()
    _, staff = make_operator("merchant_staff")
    campaign = make_campaign(
        RULES,
        budget_limit_fen=100_00,
        packet_amount_fen=5_00,
        trigger={"kind": "registration"},
        issuer_type="merchant",
        issuer_merchant_id=other.id,
        funder_type="merchant_deposit",
        funder_merchant_id=other.id,
    )
    resp = client.patch(
        f"/admin/api/campaigns/{campaign.id}", json={"regions": ["杭州"], "reason": "Hangzhou only"}, headers=staff
    )
    assert resp.status_code == 404, resp.get_json()


def test_a_region_limited_claim_campaign_changes_its_regions_as_before(client, make_operator, make_campaign):
    _, admin = make_operator("admin")
    campaign = hangzhou_campaign(make_campaign)
    resp = client.patch(
        f"/admin/api/campaigns/{campaign.id}",
        json={"regions": ["杭州", "上海"], "reason": "and Shanghai"},
        headers=admin,
    )
    assert resp.status_code == 200, resp.get_json()
    db.session.rollback()
    assert db.session.get(Campaign, campaign.id).regions == ["杭州", "上海"]
