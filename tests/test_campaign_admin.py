"""Campaign admin API: create, validate, version rules, transitions, batches; roles, scopes and refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from models import AuditLog, Campaign, CampaignRules, Rebate, RedPacket, db, utcnow
from rebate import claim_packet, create_order
from rebate.orders import LineRequest

CAMPAIGNS = "/admin/api/campaigns"
RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}]}


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def snapshot() -> tuple:
    db.session.rollback()
    statuses = db.session.execute(select(Campaign.id, Campaign.status, Campaign.rules_version)).all()
    return count(Campaign), count(CampaignRules), count(AuditLog), count(RedPacket), sorted(map(tuple, statuses))


def audit_actions() -> list[tuple]:
    db.session.rollback()
    return [
        (a.action, a.target_id, a.reason) for a in db.session.execute(select(AuditLog).order_by(AuditLog.id)).scalars()
    ]


def campaign_body(**overrides) -> dict:
    body = {
        "name": "Spring cashback",
        "issuer_type": "platform",
        "funder_type": "platform_fund",
        "budget_limit_fen": 1_000_00,
        "packet_amount_fen": 10_00,
        "packet_min_spend_fen": 50_00,
        "trigger": {"kind": "claim_code"},
        "rules": RULES,
        "reason": "spring promotion",
    }
    body.update(overrides)
    return body


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")


def create(client, headers, **overrides) -> dict:
    response = client.post(CAMPAIGNS, json=campaign_body(**overrides), headers=headers)
    assert response.status_code == 201, response.json
    return response.json


def act(client, headers, campaign_id, action, reason="operator decision"):
    return client.post(f"{CAMPAIGNS}/{campaign_id}/{action}", json={"reason": reason}, headers=headers)


# --- happy paths ---------------------------------------------------------------------------


def test_admin_creates_a_draft_campaign_with_rules_version_1_and_an_audit_row(client, admin):
    operator, headers = admin

    body = create(client, headers)

    assert (body["status"], body["rules_version"], body["budget_limit_fen"]) == ("draft", 1, 1_000_00)
    assert (body["budget_reserved_fen"], body["budget_committed_fen"]) == (0, 0)
    campaign = db.session.get(Campaign, body["id"])
    assert (campaign.trigger["kind"], campaign.trigger["min_order_fen"]) == ("claim_code", 0)
    stored = db.session.execute(select(CampaignRules).filter_by(campaign_id=campaign.id)).scalar_one()
    assert (stored.version, stored.created_by) == (1, operator.id)
    assert stored.rules["roles"][0]["cap_fen"] == 20_00
    [row] = db.session.execute(select(AuditLog)).scalars().all()
    assert (row.operator_id, row.action, row.target_id, row.reason) == (
        operator.id,
        "campaign.create",
        str(campaign.id),
        "spring promotion",
    )
    fetched = client.get(f"{CAMPAIGNS}/{campaign.id}", headers=headers).json
    assert fetched["rules"] == stored.rules


def test_merchant_staff_create_their_own_deposit_funded_campaign(client, make_operator):
    operator, headers = make_operator("merchant_staff")
    merchant_id = operator.merchant_id

    body = create(
        client,
        headers,
        issuer_type="merchant",
        issuer_merchant_id=merchant_id,
        funder_type="merchant_deposit",
        funder_merchant_id=merchant_id,
        packet_merchant_id=merchant_id,
    )

    assert (body["funder_merchant_id"], body["issuer_merchant_id"]) == (merchant_id, merchant_id)
    assert [c["id"] for c in client.get(CAMPAIGNS, headers=headers).json["items"]] == [body["id"]]


def test_validate_answers_the_most_one_order_can_cost_and_saves_nothing(client, admin):
    _, headers = admin
    rules = {
        "roles": [
            {"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00},
            {"role": "inviter", "rate_bps": 300, "form": "wechat_change", "cap_fen": 7_50},
        ]
    }
    before = snapshot()

    response = client.post(f"{CAMPAIGNS}/validate", json=campaign_body(rules=rules), headers=headers)

    assert response.status_code == 200, response.json
    assert response.json == {"valid": True, "max_rebate_per_order_fen": 27_50}
    assert snapshot() == before


def test_validate_refuses_what_create_refuses(client, admin):
    _, headers = admin
    uncapped = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]}

    response = client.post(f"{CAMPAIGNS}/validate", json=campaign_body(rules=uncapped), headers=headers)

    assert response.status_code == 422
    assert "cap" in response.json["message"]


def test_unbudgeted_uncapped_campaign_is_allowed_and_has_no_per_order_maximum(client, admin):
    _, headers = admin
    uncapped = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]}
    body = campaign_body(rules=uncapped)
    del body["budget_limit_fen"]

    response = client.post(f"{CAMPAIGNS}/validate", json=body, headers=headers)

    assert response.json == {"valid": True, "max_rebate_per_order_fen": None}


# --- refusals with reasons -----------------------------------------------------------------

NAIVE = "2030-01-01T10:00:00"
REFUSALS = {
    "budgeted with an uncapped rule": (
        {"rules": {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]}},
        "cap",
    ),
    "rates over 100 %": (
        {
            "rules": {
                "roles": [
                    {"role": "consumer", "rate_bps": 6000, "form": "balance", "cap_fen": 1},
                    {"role": "inviter", "rate_bps": 4500, "form": "points", "cap_fen": 1},
                ]
            }
        },
        "more than the order",
    ),
    "double window pushing past 100 %": (
        {
            "rules": {
                "roles": [
                    {
                        "role": "consumer",
                        "rate_bps": 6000,
                        "form": "balance",
                        "cap_fen": 1,
                        "windows": [
                            {
                                "starts_at": "2030-01-01T00:00:00+08:00",
                                "ends_at": "2030-01-02T00:00:00+08:00",
                                "factor_bps": 20_000,
                            }
                        ],
                    }
                ]
            }
        },
        "more than the order",
    ),
    "rate over 10000 bps": (
        {"rules": {"roles": [{"role": "consumer", "rate_bps": 10_001, "form": "balance", "cap_fen": 1}]}},
        "rate_bps",
    ),
    "ends before it starts": (
        {"starts_at": "2030-01-02T00:00:00+08:00", "ends_at": "2030-01-01T00:00:00+08:00"},
        "ends_at must be after starts_at",
    ),
    "naive starts_at": ({"starts_at": NAIVE}, "timezone"),
    "naive window": (
        {
            "rules": {
                "roles": [
                    {
                        "role": "consumer",
                        "rate_bps": 500,
                        "form": "balance",
                        "cap_fen": 1,
                        "windows": [{"starts_at": NAIVE, "ends_at": "2030-01-02T00:00:00+08:00"}],
                    }
                ]
            }
        },
        "timezone",
    ),
    "window ending before it starts": (
        {
            "rules": {
                "roles": [
                    {
                        "role": "consumer",
                        "rate_bps": 500,
                        "form": "balance",
                        "cap_fen": 1,
                        "windows": [{"starts_at": "2030-01-02T00:00:00+08:00", "ends_at": "2030-01-01T00:00:00+08:00"}],
                    }
                ]
            }
        },
        "before ends_at",
    ),
    "duplicate role": (
        {
            "rules": {
                "roles": [
                    {"role": "consumer", "rate_bps": 100, "form": "balance", "cap_fen": 1},
                    {"role": "consumer", "rate_bps": 100, "form": "points", "cap_fen": 1},
                ]
            }
        },
        "once",
    ),
    "merchant credit to the consumer": (
        {"rules": {"roles": [{"role": "consumer", "rate_bps": 100, "form": "merchant_credit", "cap_fen": 1}]}},
        "merchant_credit",
    ),
    "unknown form": ({"rules": {"roles": [{"role": "consumer", "rate_bps": 1, "form": "gold", "cap_fen": 1}]}}, ""),
    "rate as a string": (
        {"rules": {"roles": [{"role": "consumer", "rate_bps": "500", "form": "balance", "cap_fen": 1}]}},
        "",
    ),
    "negative budget": ({"budget_limit_fen": -1}, ""),
    "budget as a float": ({"budget_limit_fen": 100.5}, ""),
    "merchant issuer without a merchant": ({"issuer_type": "merchant"}, "issuer_merchant_id"),
    "deposit funder without a merchant": ({"funder_type": "merchant_deposit"}, "funder_merchant_id"),
    "user-issued by an operator": ({"issuer_type": "user"}, "users"),
    "unknown field": ({"owner": "me"}, ""),
    "unknown merchant": (
        {"funder_type": "merchant_deposit", "funder_merchant_id": 999_999, "issuer_type": "platform"},
        "not found",
    ),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_unsafe_campaigns_are_refused_with_the_reason_and_nothing_is_saved(client, admin, case):
    _, headers = admin
    overrides, words = REFUSALS[case]
    before = snapshot()

    response = client.post(CAMPAIGNS, json=campaign_body(**overrides), headers=headers)

    assert response.status_code in (404, 422), response.json
    text = response.json["message"] + str(response.json.get("details", ""))
    assert words in text
    assert snapshot() == before


def test_merchant_staff_cannot_create_a_campaign_funded_by_another_merchant(client, make_operator, make_merchant):
    operator, headers = make_operator("merchant_staff")
    other = make_merchant()
    before = snapshot()

    response = client.post(
        CAMPAIGNS,
        json=campaign_body(
            issuer_type="merchant",
            issuer_merchant_id=operator.merchant_id,
            funder_type="merchant_deposit",
            funder_merchant_id=other.id,
        ),
        headers=headers,
    )

    assert response.status_code in (404, 422)
    assert snapshot() == before


def test_merchant_staff_cannot_run_a_platform_funded_campaign(client, make_operator):
    operator, headers = make_operator("merchant_staff")
    before = snapshot()

    response = client.post(
        CAMPAIGNS,
        json=campaign_body(issuer_type="merchant", issuer_merchant_id=operator.merchant_id),
        headers=headers,
    )

    assert (response.status_code, response.json["error"]) == (422, "funder")
    assert snapshot() == before


def test_merchant_staff_cannot_see_or_touch_other_merchants_campaigns(client, admin, make_operator):
    _, admin_headers = admin
    theirs = create(client, admin_headers)
    _, staff = make_operator("merchant_staff")
    before = snapshot()

    for response in (
        client.get(f"{CAMPAIGNS}/{theirs['id']}", headers=staff),
        client.get(f"{CAMPAIGNS}/{theirs['id']}/packets", headers=staff),
        act(client, staff, theirs["id"], "activate"),
        client.put(f"{CAMPAIGNS}/{theirs['id']}/rules", json={"rules": RULES, "reason": "mine now"}, headers=staff),
        client.post(f"{CAMPAIGNS}/{theirs['id']}/packets/batch", json={"count": 1, "reason": "x" * 3}, headers=staff),
    ):
        assert response.status_code == 404, response.json
    assert client.get(CAMPAIGNS, headers=staff).json == {"items": []}
    assert snapshot() == before


@pytest.mark.parametrize("role", ["support", "finance"])
def test_support_and_finance_cannot_create_or_change_campaigns(client, admin, make_operator, role):
    _, admin_headers = admin
    existing = create(client, admin_headers)
    _, headers = make_operator(role)
    before = snapshot()

    assert client.post(CAMPAIGNS, json=campaign_body(), headers=headers).status_code == 403
    assert act(client, headers, existing["id"], "activate").status_code == 403
    assert (
        client.put(f"{CAMPAIGNS}/{existing['id']}/rules", json={"rules": RULES, "reason": "nope"}, headers=headers)
    ).status_code == 403
    # reading is allowed
    assert client.get(f"{CAMPAIGNS}/{existing['id']}", headers=headers).status_code == 200
    assert snapshot() == before


def test_no_token_and_user_tokens_are_refused(client, make_user, user_headers):
    before = snapshot()
    assert client.post(CAMPAIGNS, json=campaign_body()).status_code == 401
    assert client.post(CAMPAIGNS, json=campaign_body(), headers=user_headers(make_user())).status_code == 401
    assert snapshot() == before


# --- rules versions ------------------------------------------------------------------------


def test_new_rules_make_version_2_and_an_earlier_packet_keeps_version_1_at_payment(
    client, admin, make_user, make_product, pay
):
    # given: an active campaign paying 5 % (cap 20); alice claims a packet under version 1
    _, headers = admin
    body = create(client, headers)
    assert act(client, headers, body["id"], "activate").status_code == 200
    [code] = client.post(
        f"{CAMPAIGNS}/{body['id']}/packets/batch", json={"count": 1, "reason": "first wave"}, headers=headers
    ).json["codes"]
    alice = make_user()
    packet = claim_packet(code, alice, utcnow())
    db.session.commit()
    assert (packet.rules_version, packet.reserved_fen) == (1, 30_00)

    # when: the rules change to 10 % (cap 20)
    new_rules = {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "balance", "cap_fen": 20_00}]}
    response = client.put(
        f"{CAMPAIGNS}/{body['id']}/rules", json={"rules": new_rules, "reason": "double it"}, headers=headers
    )

    # then: version 2 exists; alice's packet still says 1 and pays 5 % of 90 = 4.50 at payment
    assert (response.status_code, response.json["rules_version"]) == (200, 2)
    versions = db.session.execute(
        select(CampaignRules.version, CampaignRules.rules).filter_by(campaign_id=body["id"]).order_by("version")
    ).all()
    assert [(v, r["roles"][0]["rate_bps"]) for v, r in versions] == [(1, 500), (2, 1000)]
    db.session.refresh(packet)
    assert packet.rules_version == 1
    order = create_order(alice, [LineRequest(make_product(price_fen=100_00).id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(order)
    rebate = db.session.execute(select(Rebate).filter_by(order_id=order.id)).scalar_one()
    assert (rebate.rules_version, rebate.amount_fen) == (1, 4_50)
    # and a packet claimed now runs under version 2: 10 % of 90 = 9
    bob = make_user()
    [code2] = client.post(
        f"{CAMPAIGNS}/{body['id']}/packets/batch", json={"count": 1, "reason": "second wave"}, headers=headers
    ).json["codes"]
    later = claim_packet(code2, bob, utcnow())
    db.session.commit()
    order2 = create_order(bob, [LineRequest(make_product(price_fen=100_00).id, 1)], later.id, utcnow())
    db.session.commit()
    pay(order2)
    rebate2 = db.session.execute(select(Rebate).filter_by(order_id=order2.id)).scalar_one()
    assert (rebate2.rules_version, rebate2.amount_fen) == (2, 9_00)
    assert [a[0] for a in audit_actions()] == [
        "campaign.create",
        "campaign.activate",
        "campaign.batch",
        "campaign.rules",
        "campaign.batch",
    ]


def test_unsafe_new_rules_are_refused_and_keep_the_version(client, admin):
    _, headers = admin
    body = create(client, headers)
    before = snapshot()

    response = client.put(
        f"{CAMPAIGNS}/{body['id']}/rules",
        json={"rules": {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]}, "reason": "oops"},
        headers=headers,
    )

    assert response.status_code == 422
    assert "cap" in response.json["message"]
    assert snapshot() == before


def test_an_ended_campaigns_rules_cannot_change(client, admin):
    _, headers = admin
    body = create(client, headers)
    assert act(client, headers, body["id"], "end").status_code == 200
    before = snapshot()

    response = client.put(f"{CAMPAIGNS}/{body['id']}/rules", json={"rules": RULES, "reason": "late"}, headers=headers)

    assert (response.status_code, response.json["error"]) == (409, "campaign_ended")
    assert snapshot() == before


# --- transitions ---------------------------------------------------------------------------


def test_activate_pause_activate_end_each_audited(client, admin):
    _, headers = admin
    body = create(client, headers)

    statuses = []
    for action in ("activate", "pause", "activate", "end"):
        response = act(client, headers, body["id"], action, reason=f"{action} it")
        assert response.status_code == 200, response.json
        statuses.append(response.json["status"])

    assert statuses == ["active", "paused", "active", "ended"]
    assert audit_actions() == [
        ("campaign.create", str(body["id"]), "spring promotion"),
        ("campaign.activate", str(body["id"]), "activate it"),
        ("campaign.pause", str(body["id"]), "pause it"),
        ("campaign.activate", str(body["id"]), "activate it"),
        ("campaign.end", str(body["id"]), "end it"),
    ]


@pytest.mark.parametrize(
    ("path", "action"),
    [
        ([], "pause"),  # draft cannot pause
        (["activate"], "activate"),  # already active
        (["activate", "pause"], "pause"),
        (["end"], "activate"),  # ended is final
        (["end"], "pause"),
        (["end"], "end"),
    ],
)
def test_illegal_transitions_are_conflicts_and_change_nothing(client, admin, path, action):
    _, headers = admin
    body = create(client, headers)
    for step in path:
        assert act(client, headers, body["id"], step).status_code == 200
    before = snapshot()

    response = act(client, headers, body["id"], action)

    assert (response.status_code, response.json["error"]) == (409, "campaign_state")
    assert snapshot() == before


@pytest.mark.parametrize("reason", [None, "", "ab"])
def test_transition_needs_a_reason(client, admin, reason):
    _, headers = admin
    body = create(client, headers)
    before = snapshot()

    payload = {} if reason is None else {"reason": reason}
    response = client.post(f"{CAMPAIGNS}/{body['id']}/activate", json=payload, headers=headers)

    assert response.status_code == 422
    assert snapshot() == before


def test_unknown_campaign_is_not_found(client, admin):
    _, headers = admin
    assert client.get(f"{CAMPAIGNS}/999", headers=headers).status_code == 404
    assert act(client, headers, 999, "activate").status_code == 404


# --- batches -------------------------------------------------------------------------------


def test_batch_generation_returns_unique_16_character_codes(client, admin):
    _, headers = admin
    body = create(client, headers)
    act(client, headers, body["id"], "activate")

    response = client.post(
        f"{CAMPAIGNS}/{body['id']}/packets/batch", json={"count": 50, "reason": "wave"}, headers=headers
    )

    assert response.status_code == 201, response.json
    codes = response.json["codes"]
    assert response.json["count"] == len(codes) == len(set(codes)) == 50
    assert all(len(c) == 16 and c.isalnum() and c.isupper() for c in codes)
    assert not set("01IO") & set("".join(codes))
    db.session.rollback()
    rows = db.session.execute(select(RedPacket.status, RedPacket.reserved_fen, RedPacket.owner_id)).all()
    assert set(rows) == {("unclaimed", 0, None)}
    campaign = db.session.get(Campaign, body["id"])
    assert (campaign.budget_reserved_fen, campaign.budget_committed_fen) == (0, 0)
    assert audit_actions()[-1] == ("campaign.batch", str(body["id"]), "wave")
    listed = client.get(f"{CAMPAIGNS}/{body['id']}/packets", headers=headers).json["items"]
    assert len(listed) == 50
    assert all("code" not in p and "claim_code" not in p for p in listed)


@pytest.mark.parametrize("count_", [0, -1, 10_001, "5", 2.0, True])
def test_bad_batch_sizes_are_refused(client, admin, count_):
    _, headers = admin
    body = create(client, headers)
    act(client, headers, body["id"], "activate")
    before = snapshot()

    response = client.post(
        f"{CAMPAIGNS}/{body['id']}/packets/batch", json={"count": count_, "reason": "wave"}, headers=headers
    )

    assert response.status_code == 422
    assert snapshot() == before


def test_batch_from_a_draft_campaign_is_refused(client, admin):
    _, headers = admin
    body = create(client, headers)
    before = snapshot()

    response = client.post(
        f"{CAMPAIGNS}/{body['id']}/packets/batch", json={"count": 5, "reason": "wave"}, headers=headers
    )

    assert (response.status_code, response.json["error"]) == (409, "campaign_not_running")
    assert snapshot() == before


def test_campaign_window_in_the_past_is_allowed_but_issues_nothing(client, admin):
    _, headers = admin
    start = datetime(2020, 1, 1, tzinfo=UTC)
    body = create(client, headers, starts_at=start.isoformat(), ends_at=(start + timedelta(days=1)).isoformat())
    act(client, headers, body["id"], "activate")

    response = client.post(
        f"{CAMPAIGNS}/{body['id']}/packets/batch", json={"count": 1, "reason": "wave"}, headers=headers
    )

    assert (response.status_code, response.json["error"]) == (409, "campaign_not_running")


def _selection_columns(campaign_id: int) -> tuple:
    db.session.expire_all()
    c = db.session.get(Campaign, campaign_id)
    return c.serves_merchant_id, c.trigger_kind, c.trigger_min_order_fen, c.applies_to


def test_new_rules_move_the_selection_columns_and_a_payment_sees_the_referral(
    client, make_operator, make_user, make_product, pay
):
    # given: a packet campaign made a referral campaign by a new rules version, then activated
    _, headers = make_operator("admin")
    body = create(client, headers)
    assert _selection_columns(body["id"])[3] == "packet"
    referral = {
        "applies_to": "referral",
        "roles": [{"role": "inviter", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}],
    }
    r = client.put(f"{CAMPAIGNS}/{body['id']}/rules", json={"rules": referral, "reason": "referral"}, headers=headers)
    assert r.status_code == 200, r.json
    assert act(client, headers, body["id"], "activate").status_code == 200
    assert _selection_columns(body["id"])[3] == "referral"

    # when: an invited buyer pays an order
    buyer = make_user(inviter=make_user())
    order = create_order(buyer, [LineRequest(make_product(price_fen=100_00).id, 1)], None, utcnow())
    db.session.commit()
    outcome = pay(order)

    # then: the payment found the campaign by its denormalised columns and paid the inviter; rules back to a
    # packet campaign move them back
    assert outcome == "applied"
    got = db.session.execute(select(Rebate).filter_by(order_id=order.id, role="inviter")).scalar_one_or_none()
    assert got is not None and got.amount_fen == 5_00
    packet = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}]}
    r = client.put(f"{CAMPAIGNS}/{body['id']}/rules", json={"rules": packet, "reason": "packet"}, headers=headers)
    assert r.status_code == 200, r.json
    assert _selection_columns(body["id"])[3] == "packet"
