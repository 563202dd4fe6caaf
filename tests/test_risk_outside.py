"""Risk tried from outside: a careless operator, a fraudster and an auditor (probe J).

Each test names what an outsider does and what must hold."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from jobs.risk import lift_expired_bans_job, run_spikes
from models import Alert, Ban, Campaign, Merchant, Order, RedPacket, ReviewCase, RiskRuleSet, User, db, utcnow
from rebate import ban_ops
from rebate.audiences import SOURCE as AUDIENCE_SOURCE
from rebate.claims import claim_from_campaign
from rebate.intake import PaymentOutcome
from risk import Banned, Claimant, PlatformLimits, spikes
from risk.limits import LimitHit
from risk.net import net_of
from risk.rules import forget_rules
from tests import test_spikes as spike_tests
from tests.test_risk_payment import cash, fresh_rules, rebates_of, shop  # noqa: F401 - fixtures


def _ban_user(client, admin, user_id: int) -> int:
    made = client.post(
        "/admin/api/bans",
        json={"subject": "user", "value": str(user_id), "reason": "cooling off", "days": 1},
        headers=admin,
    )
    assert made.status_code == 201, made.get_json()
    return made.get_json()["id"]


def test_one_ban_whose_lift_fails_does_not_keep_the_other_expired_bans_in_force(
    client, make_operator, make_user, monkeypatch
):
    # given: two timed bans, both past their end; undoing the first one's effects fails
    amy, ben = make_user(), make_user()
    _, admin = make_operator("admin")
    first, second = _ban_user(client, admin, amy.id), _ban_user(client, admin, ben.id)
    for ban in db.session.execute(select(Ban)).scalars():
        ban.ends_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    undo = ban_ops._undo

    def failing_undo(ban, owner, now):
        if ban.id == first:
            raise RuntimeError("the person's row cannot be written")
        return undo(ban, owner, now)

    monkeypatch.setattr(ban_ops, "_undo", failing_undo)

    # when: the job runs (twice: the failing ban is tried again, the operator told once)
    outcome = lift_expired_bans_job()
    again = lift_expired_bans_job()

    # then: the second ban is lifted and ben is active; the first is untouched (rolled back), amy still banned
    assert (outcome["lifted"], outcome["error"]) == (1, 1)
    assert (again["lifted"], again["error"]) == (0, 1)
    db.session.expire_all()
    assert db.session.get(Ban, second).lifted_at is not None
    assert db.session.get(User, ben.id).status == "active"
    assert db.session.get(Ban, first).lifted_at is None
    assert db.session.get(User, amy.id).status == "banned"
    alerts = db.session.execute(select(Alert.kind, Alert.subject)).all()
    assert alerts == [("ban_lift_failed", f"ban {first}")]

    # and: once the fault is gone, the next run lifts it
    monkeypatch.setattr(ban_ops, "_undo", undo)
    assert lift_expired_bans_job()["lifted"] == 1
    db.session.expire_all()
    assert db.session.get(User, amy.id).status == "active"


# --- rules an operator writes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["score", "account_age_hours", "gap_uniformity"])
def test_a_rule_comparing_with_a_number_beyond_any_float_is_refused_with_a_422(client, make_operator, field):
    # given: a careless (or hostile) admin pastes an integer of 400 digits into a condition
    _, admin = make_operator("admin")
    rules = [{"name": "huge", "action": "review", "when": [[field, ">", 10**400]]}]
    # when: saved as a draft, or backtested
    saved = client.post(
        "/admin/api/risk/rules", json={"scope": "platform", "rules": rules, "reason": "tighten"}, headers=admin
    )
    tried = client.post("/admin/api/risk/rules/backtest", json={"rules": rules}, headers=admin)
    # then: a clear 422 naming the condition (not a 500), and nothing stored
    for answer in (saved, tried):
        assert answer.status_code == 422, answer.get_json()
        assert answer.get_json()["error"] == "invalid_risk_rules"
        assert f"rules[0].when[0]: {field}" in answer.get_json()["message"]
    assert db.session.execute(select(RiskRuleSet)).scalars().all() == []


def test_active_rules_that_cannot_be_read_hold_the_payment_for_review_instead_of_failing_it(shop, pay):
    # given: the platform's active rules name a field the catalogue no longer has (renamed in a release after they
    # were activated), and the order itself is an honest one the defaults would allow
    order, people, campaign, referral = shop(browsing=True)
    stale = [{"name": "review_old", "action": "review", "when": [["seconds_to_pay", "<", 5]]}]
    db.session.add(RiskRuleSet(scope="platform", version=1, rules=stale, status="active"))
    db.session.commit()
    forget_rules()
    # when: WeChat tells us the order is paid
    outcome = pay(order)
    # then: the payment is applied (WeChat is not left retrying), and nothing those rules might hold is paid
    assert outcome == PaymentOutcome.APPLIED
    order = db.session.get(Order, order.id)
    assert order.status == "paid" and order.risk_decision == "review", order.risk
    got = rebates_of(order)
    assert {g.status for g in got.values()} == {"review"}
    assert cash(people["issuer"].id) == cash(people["consumer"].id) == cash(people["inviter"].id) == 0
    case = db.session.execute(select(ReviewCase)).scalar_one()
    assert any("active_rules_unreadable" in r for r in case.reasons), case.reasons
    # and: an operator is told, once
    alerts = db.session.execute(select(Alert.kind, Alert.subject).where(Alert.kind == "risk_rules_unreadable")).all()
    assert alerts == [("risk_rules_unreadable", "platform")]


# --- network addresses: an IPv6 subscriber's /64, an IPv4 client seen through a dual-stack socket ---------------

CLAIM_RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]}
NO_CAMPAIGN_LIMITS = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None}


@pytest.fixture
def claim_campaign(make_campaign):
    return make_campaign(
        CLAIM_RULES,
        budget_limit_fen=100_00,
        packet_amount_fen=1_00,
        trigger={"kind": "claim"},
        claim_limits=NO_CAMPAIGN_LIMITS,
    )


def _claim(campaign, user, ip: str, limits: PlatformLimits):
    try:
        packet = claim_from_campaign(campaign.id, user, utcnow(), claimant=Claimant(user.id, ip, None), limits=limits)
    except LimitHit as hit:
        db.session.rollback()
        return hit.code
    db.session.commit()
    return packet.owner_id


def test_a_sybil_farm_rotating_addresses_inside_one_ipv6_64_is_one_network_address_to_the_limits(
    make_user, claim_campaign
):
    # given: the platform's limit of one red packet a day per network address (persons and devices unlimited)
    one_a_day = PlatformLimits(
        ip_per_day=1,
        device_per_day=0,
        person_per_day=0,
        ip_interval_seconds=0,
        device_interval_seconds=0,
        person_interval_seconds=0,
    )
    farm = [make_user() for _ in range(3)]
    # when: three accounts claim from three addresses of one /64 (a phone picks any of its 2^64 at will)
    got = [_claim(claim_campaign, user, f"2001:db8:7:1::{n + 1}", one_a_day) for n, user in enumerate(farm)]
    # then: the first gets a packet, the others are refused as from the same network address
    assert got == [farm[0].id, "platform_ip_daily_limit", "platform_ip_daily_limit"]
    # and: another subscriber's /64 is another network address
    other = make_user()
    assert _claim(claim_campaign, other, "2001:db8:7:2::1", one_a_day) == other.id


def test_an_ipv4_client_seen_as_ipv4_mapped_ipv6_is_still_under_its_networks_ban(
    client, make_operator, make_user, claim_campaign
):
    # given: a ban on an IPv4 /24 and one on a single IPv4 address
    _, admin = make_operator("admin")
    for value in ("203.0.113.0/24", "198.51.100.7"):
        made = client.post("/admin/api/bans", json={"subject": "net", "value": value, "reason": "farm"}, headers=admin)
        assert made.status_code == 201, made.get_json()
    # when: clients of those addresses come through a dual-stack socket (::ffff:a.b.c.d)
    amy, ben = make_user(), make_user()
    for user, ip in ((amy, "::ffff:203.0.113.9"), (ben, "::ffff:198.51.100.7")):
        with pytest.raises(Banned):
            claim_from_campaign(
                claim_campaign.id, user, utcnow(), claimant=Claimant(user.id, ip, None), limits=PlatformLimits.off()
            )
        db.session.rollback()
    # then: the scoring's network is the IPv4 /24, not the whole IPv4 space as one IPv6 /48
    assert net_of("::ffff:203.0.113.9") == "203.0.113.0/24"


def test_a_backtest_runs_while_the_active_rules_cannot_be_read_and_compares_with_what_payments_do(
    client, make_operator
):
    # given: the platform's active rules name a field the catalogue no longer has
    _, admin = make_operator("admin")
    stale = [{"name": "review_old", "action": "review", "when": [["seconds_to_pay", "<", 5]]}]
    db.session.add(RiskRuleSet(scope="platform", version=1, rules=stale, status="active"))
    db.session.commit()
    # when: an admin backtests a good draft to replace them
    draft = [{"name": "review_high", "action": "review", "when": [["score", ">=", 60]]}]
    answer = client.post("/admin/api/risk/rules/backtest", json={"rules": draft}, headers=admin)
    # then: the draft is judged (not refused for the stored rules' fault)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["active"]["defaults"] is False


# --- spikes: a burst the platform itself makes is no attack ------------------------------------------------------


def test_an_audience_run_issuing_a_batch_does_not_auto_pause_its_campaign_as_a_claims_spike(app):
    # given: a campaign with spike auto-pause and 30 steady hours of people claiming
    merchant, user = Merchant(name="pushy"), User()
    db.session.add_all([merchant, user])
    db.session.commit()
    guarded = spike_tests.campaign(merchant, auto_pause=True)
    spike_tests.claims(guarded, user, spike_tests.steady(range(30)))
    # when: in hour 30 an operator's audience run issues 140 of its packets (source "audience"), and the job folds it
    spike_tests.claims(guarded, user, {30: 140})
    db.session.execute(
        update(RedPacket)
        .where(RedPacket.campaign_id == guarded.id, RedPacket.claimed_at >= spike_tests.T0 + 30 * spike_tests.HOUR)
        .values(source=AUDIENCE_SOURCE)
    )
    db.session.commit()
    summary = run_spikes(spike_tests.T0 + 31 * spike_tests.HOUR, spike_tests.SETTINGS)
    # then: no claims spike, the campaign keeps running
    assert summary["paused"] == 0, summary
    db.session.expire_all()
    assert db.session.get(Campaign, guarded.id).status == "active"
    assert AUDIENCE_SOURCE in getattr(spikes, "PUSHED_SOURCES", ())  # the two names of one source agree


def test_merchant_staff_do_not_learn_from_a_claim_refusal_that_a_device_or_network_is_banned(
    client, make_operator, make_user, user_headers, make_campaign, make_merchant
):
    merchant = make_merchant()
    campaign = make_campaign(
        CLAIM_RULES,
        budget_limit_fen=100_00,
        packet_amount_fen=1_00,
        trigger={"kind": "claim"},
        claim_limits=NO_CAMPAIGN_LIMITS,
        issuer_type="merchant",
        issuer_merchant_id=merchant.id,
        funder_type="merchant_deposit",
        funder_merchant_id=merchant.id,
    )
    from models import Product
    from rebate import create_order
    from rebate.orders import LineRequest

    amy = make_user()
    product = Product(merchant_id=merchant.id, name="p", category="general", price_fen=100_00)
    db.session.add(product)
    db.session.commit()
    create_order(amy, [LineRequest(product.id, 1)], None, utcnow())  # staff see the people who ordered from them
    db.session.commit()
    _, admin = make_operator("admin")
    body = {"subject": "net", "value": "198.51.100.0/24", "reason": "farm"}
    assert client.post("/admin/api/bans", json=body, headers=admin).status_code == 201
    path = f"/api/v1/campaigns/{campaign.id}/claim"
    refused = client.post(path, headers=user_headers(amy), environ_base={"REMOTE_ADDR": "198.51.100.9"})
    assert refused.status_code == 403
    _, staff = make_operator("merchant_staff", merchant=merchant)
    trace = client.get(f"/admin/api/trace/users/{amy.id}", headers=staff)
    assert trace.status_code == 200
    body = trace.get_json()
    (refusal,) = body["claim_refusals"]
    assert (refusal["code"], refusal["message"]) == ("not_eligible", "refused by the platform's checks")
    assert not [line for line in body["lines"] if "ban" in line.lower()], body["lines"]
    # the platform's own operators still read why
    (own,) = client.get(f"/admin/api/trace/users/{amy.id}", headers=admin).get_json()["claim_refusals"]
    assert own["code"] == "banned"
