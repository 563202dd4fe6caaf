"""The channel comes from the login when the token names it; device tokens are rationed per address."""

from __future__ import annotations

from models import RedPacket, db
from web.auth import issue_user_token

CASHBACK = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 10_00}]}


def test_a_token_issued_for_the_official_account_ignores_a_forged_x_channel(client, make_campaign, make_user):
    # given: a mini-program-only campaign and a person signed in through the official account
    campaign = make_campaign(
        CASHBACK,
        budget_limit_fen=100_00,
        packet_amount_fen=5_00,
        channels=["mini_program"],
        trigger={"kind": "claim"},
        claim_limits={},
    )
    user = make_user()
    headers = {"Authorization": f"Bearer {issue_user_token(user, 'official_account')}", "X-Channel": "mini_program"}
    # when
    answer = client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=headers)
    # then
    assert answer.status_code == 422
    assert answer.json["error"] == "wrong_channel"
    assert db.session.query(RedPacket).count() == 0


def test_a_mini_program_token_claims_whatever_header_it_sends(client, make_campaign, make_user):
    campaign = make_campaign(
        CASHBACK,
        budget_limit_fen=100_00,
        packet_amount_fen=5_00,
        channels=["mini_program"],
        trigger={"kind": "claim"},
        claim_limits={},
    )
    user = make_user()
    headers = {"Authorization": f"Bearer {issue_user_token(user, 'mini_program')}", "X-Channel": "h5"}
    assert client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=headers).status_code == 201


def test_device_tokens_are_rationed_per_network_address(client, make_user, user_headers):
    user = make_user()
    for _ in range(20):
        assert client.post("/api/v1/devices", headers=user_headers(user)).status_code == 201
    refused = client.post("/api/v1/devices", headers=user_headers(user))
    assert refused.status_code == 429
    assert refused.json["error"] == "device_tokens"
    assert int(refused.headers["Retry-After"]) >= 1
    other = client.post("/api/v1/devices", headers=user_headers(user), environ_base={"REMOTE_ADDR": "10.9.8.7"})
    assert other.status_code == 201


def test_a_claim_refused_by_a_limit_is_kept_for_the_trace(
    client, make_campaign, make_user, user_headers, make_operator
):
    from models import ClaimRefusal

    campaign = make_campaign(
        CASHBACK,
        budget_limit_fen=100_00,
        packet_amount_fen=5_00,
        trigger={"kind": "claim"},
        claim_limits={"per_person": 1, "per_ip_per_day": None, "min_interval_seconds": None},
    )
    user = make_user()
    assert client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=user_headers(user)).status_code == 201
    refused = client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=user_headers(user))
    assert refused.status_code == 429
    assert db.session.query(ClaimRefusal).filter_by(user_id=user.id, code="person_limit").count() == 1
    assert db.session.query(RedPacket).count() == 1
    _, support = make_operator("support")
    trace = client.get(f"/admin/api/trace/users/{user.id}", headers=support).json
    assert trace["claim_refusals"][0]["code"] == "person_limit"
    assert any("limit hit" in line for line in trace["lines"])


def test_a_referral_starter_packet_of_a_mini_program_campaign_is_not_issued_through_the_official_account(
    client, make_campaign, make_user, user_headers
):
    # given: a starter-packet campaign for the mini-program only, and two new people invited by one inviter
    make_campaign(
        CASHBACK,
        issuer_type="user",
        budget_limit_fen=100_00,
        packet_amount_fen=10_00,
        channels=["mini_program"],
        trigger={"kind": "referral_bind"},
    )
    inviter, via_oa, via_mp = make_user(), make_user(), make_user()
    code = client.get("/api/v1/me/invite", headers=user_headers(inviter)).json["invite_code"]

    def bind(person, channel):
        headers = {"Authorization": f"Bearer {issue_user_token(person, channel)}"}
        return client.post("/api/v1/referrals/bind", json={"code": code}, headers=headers)

    # when: one binds through the official account
    answer = bind(via_oa, "official_account")
    # then: bound, and no packet (one had been issued and its budget reserved, for a packet the person's channel
    # could never spend)
    assert (answer.status_code, answer.json["packets"]) == (201, [])
    assert db.session.query(RedPacket).filter_by(owner_id=via_oa.id).count() == 0
    # and: the one binding through the mini-program gets it
    answer = bind(via_mp, "mini_program")
    assert answer.status_code == 201 and len(answer.json["packets"]) == 1
