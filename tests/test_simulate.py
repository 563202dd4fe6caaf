"""What-if simulation: exact figures on hand-computed orders, refusals, scoping, and nothing written."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import event, func, inspect, select

from insights.simulate import ReplayRow, percent_change, project
from models import Rebate, db, utcnow
from rebate import create_order, issue_packet
from rebate.orders import LineRequest
from rebate.rules import parse_rules

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
# Paid 80, 100 and 40 yuan (each after a 20-yuan packet). The second is paid at 01:30 on 7 March in
# Beijing, still 6 March in UTC; the first of the four is outside a 7-day window.
PAID_AT = [
    datetime(2025, 2, 20, 9, 0, tzinfo=UTC),
    datetime(2025, 3, 5, 10, 0, tzinfo=UTC),
    datetime(2025, 3, 6, 17, 30, tzinfo=UTC),
    datetime(2025, 3, 8, 3, 0, tzinfo=UTC),
]
PRICES = [500_00, 100_00, 120_00, 60_00]

CURRENT = {
    "roles": [
        {"role": "issuer", "rate_bps": 1000, "form": "merchant_credit", "cap_fen": 100_00},
        {"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 50_00},
    ]
}
DRAFT = {
    "roles": [
        {"role": "issuer", "rate_bps": 1000, "form": "merchant_credit", "cap_fen": 100_00},
        {"role": "consumer", "rate_bps": 800, "form": "points", "cap_fen": 7_00},
    ]
}


@contextmanager
def at(moment: datetime):
    with time_machine.travel(moment, tick=False):
        yield


@pytest.fixture
def shop(make_merchant):
    return make_merchant("tea shop")


@pytest.fixture
def packet_campaign(shop, make_campaign):
    return make_campaign(
        CURRENT,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        budget_limit_fen=2_000_00,
        packet_amount_fen=20_00,
        packet_merchant_id=shop.id,
    )


@pytest.fixture
def history(shop, packet_campaign, make_user, make_product, pay):
    """Four packet orders paid in the past, one paid order without a packet, one unpaid packet order."""
    orders = []
    for i, (paid_at, price) in enumerate(zip(PAID_AT, PRICES, strict=True)):
        with at(paid_at):
            buyer = make_user()
            packet = issue_packet(packet_campaign, buyer, source="test", source_ref=str(i), now=utcnow())
            db.session.commit()
            order = create_order(buyer, [LineRequest(make_product(shop, price_fen=price).id, 1)], packet.id, utcnow())
            db.session.commit()
            pay(order, at=utcnow())
            orders.append(order)
    with at(PAID_AT[2]):
        plain = create_order(make_user(), [LineRequest(make_product(shop, price_fen=90_00).id, 1)], None, utcnow())
        db.session.commit()
        pay(plain, at=utcnow())
        unpaid_buyer = make_user()
        packet = issue_packet(packet_campaign, unpaid_buyer, source="test", source_ref="unpaid", now=utcnow())
        db.session.commit()
        create_order(unpaid_buyer, [LineRequest(make_product(shop, price_fen=70_00).id, 1)], packet.id, utcnow())
        db.session.commit()
    return orders


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")[1]


def simulate(client, campaign_id, headers, **body):
    with at(NOW):
        return client.post(f"/admin/api/campaigns/{campaign_id}/simulate", json=body, headers=headers)


# --- the pure projection ----------------------------------------------------------------------------


def row(order_id, paid_at, total, paid, packet=0, issuer="merchant", invited=None) -> ReplayRow:
    return ReplayRow(order_id, paid_at, total, paid, packet, issuer, invited)


def test_project_is_exact_and_pure():
    # given: 3 orders paid 80, 100 and 40 yuan after 20-yuan packets
    rows = [row(1, PAID_AT[1], 100_00, 80_00, 20_00), row(2, PAID_AT[2], 120_00, 100_00, 20_00)]
    rows.append(row(3, PAID_AT[3], 60_00, 40_00, 20_00))

    # when: 5 % vs 8 % capped at 7 yuan, with a 70-yuan budget
    current = project(rows, parse_rules(CURRENT, budgeted=True), budget_limit_fen=70_00)
    draft = project(rows, parse_rules(DRAFT, budgeted=True), budget_limit_fen=70_00)

    # then: issuer 8 + 10 + 4; consumer 4 + 5 + 2 now, 6.40 + 7.00 (cap) + 3.20 drafted
    assert current["by_role"]["issuer"]["amount_fen"] == draft["by_role"]["issuer"]["amount_fen"] == 22_00
    assert current["by_role"]["consumer"]["amount_fen"] == 11_00
    assert draft["by_role"]["consumer"] == {
        "amount_fen": 16_60,
        "amount_yuan": "16.60",
        "orders_awarded": 3,
        "outcomes": {"awarded": 2, "cap_reached": 1},
    }
    assert draft["by_form"] == {
        "merchant_credit": {"amount_fen": 22_00, "amount_yuan": "22.00"},
        "points": {"amount_fen": 16_60, "amount_yuan": "16.60"},
    }
    assert (draft["rebates_fen"], draft["packet_value_fen"], draft["total_cost_fen"]) == (38_60, 60_00, 98_60)
    # and: cumulative cost 34.40, 71.40 > 70 on the second order: 7 March in Beijing (6 March in UTC)
    assert draft["budget"]["runs_out_on"] == "2025-03-07"
    assert draft["budget"]["shortfall_fen"] == 28_60
    # and: the current rules cost 32, 67, 93: out on the third order
    assert (current["total_cost_fen"], current["budget"]["runs_out_on"]) == (93_00, "2025-03-08")


def test_project_platform_packet_pays_no_issuer_and_a_budget_that_lasts_has_no_day():
    rules = parse_rules(CURRENT, budgeted=True)
    got = project([row(1, PAID_AT[1], 100_00, 80_00, 20_00, issuer="platform")], rules, budget_limit_fen=100_00)
    assert got["by_role"]["issuer"]["outcomes"] == {"no_beneficiary": 1}
    assert (got["rebates_fen"], got["total_cost_fen"]) == (4_00, 24_00)
    assert got["budget"] == {
        "limit_fen": 100_00,
        "limit_yuan": "100.00",
        "runs_out": False,
        "runs_out_on": None,
        "runs_out_at_order_id": None,
        "shortfall_fen": 0,
        "shortfall_yuan": "0.00",
    }


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [(11_00, 16_60, "+50.90"), (33_00, 38_60, "+16.96"), (100, 50, "-50.00"), (5, 5, "+0.00"), (0, 10, None)],
)
def test_percent_change_is_exact_and_truncated(before, after, expected):
    assert percent_change(before, after) == expected


# --- the endpoint ---------------------------------------------------------------------------------


def test_simulation_replays_draft_and_current_over_the_window(client, admin, packet_campaign, history):
    # when: the draft is replayed over the past 7 days with a 70-yuan budget
    response = simulate(client, packet_campaign.id, admin, rules=DRAFT, days=7, budget_limit_fen=70_00)

    # then: the three packet orders inside the window (not the older one, the packet-less or the unpaid one)
    assert response.status_code == 200, response.json
    body = response.json
    assert (body["draft"]["orders"], body["current"]["orders"]) == (3, 3)
    assert body["window"]["days"] == 7
    assert body["draft"]["by_role"]["consumer"]["amount_fen"] == 16_60
    assert body["draft"]["by_form"]["points"]["amount_fen"] == 16_60
    assert body["current"]["by_form"] == {
        "balance": {"amount_fen": 11_00, "amount_yuan": "11.00"},
        "merchant_credit": {"amount_fen": 22_00, "amount_yuan": "22.00"},
    }
    assert (body["draft"]["total_cost_fen"], body["current"]["total_cost_fen"]) == (98_60, 93_00)
    assert (body["draft"]["budget"]["runs_out_on"], body["current"]["budget"]["runs_out_on"]) == (
        "2025-03-07",
        "2025-03-08",
    )
    assert body["change"]["by_role"]["consumer"] == {
        "current_fen": 11_00,
        "current_yuan": "11.00",
        "draft_fen": 16_60,
        "draft_yuan": "16.60",
        "change_fen": 5_60,
        "change_yuan": "5.60",
        "change_percent": "+50.90",
    }
    assert body["change"]["by_role"]["issuer"]["change_fen"] == 0
    assert (body["change"]["rebates"]["change_fen"], body["change"]["rebates"]["change_percent"]) == (5_60, "+16.96")
    assert body["change"]["total_cost"]["change_fen"] == 5_60


def test_current_replay_matches_what_the_engine_really_awarded(client, admin, packet_campaign, history):
    response = simulate(client, packet_campaign.id, admin, rules=CURRENT, days=30)
    awarded = db.session.execute(
        select(Rebate.role, func.sum(Rebate.original_fen))
        .where(Rebate.campaign_id == packet_campaign.id)
        .group_by(Rebate.role)
    ).all()
    assert response.json["current"]["orders"] == 4
    assert {role: row["amount_fen"] for role, row in response.json["current"]["by_role"].items()} == dict(awarded)
    assert response.json["change"]["rebates"]["change_fen"] == 0
    # the campaign's own budget applies when none is given
    assert response.json["current"]["budget"]["limit_fen"] == 2_000_00


def test_cap_change_alone(client, admin, packet_campaign, history):
    capped = {"roles": [{**CURRENT["roles"][0], "cap_fen": 9_00}, CURRENT["roles"][1]]}
    body = simulate(client, packet_campaign.id, admin, rules=capped, days=7).json
    # issuer 8, 10 → 9 (capped), 4
    assert body["draft"]["by_role"]["issuer"]["amount_fen"] == 21_00
    assert body["draft"]["by_role"]["issuer"]["outcomes"] == {"awarded": 2, "cap_reached": 1}
    assert body["change"]["by_role"]["issuer"]["change_fen"] == -1_00
    assert body["change"]["by_role"]["issuer"]["change_percent"] == "-4.54"


def test_referral_replay_uses_orders_of_invited_people_and_the_drafts_referral_days(
    client, admin, make_campaign, make_user, make_product, pay
):
    # given: inviters earn 10 %; an invitee pays 30 yuan on the day of binding and again 3 days later;
    # someone with no inviter pays too
    campaign = make_campaign(
        {"applies_to": "referral", "roles": [{"role": "inviter", "rate_bps": 1000, "form": "wechat_change"}]}
    )
    game = make_product(price_fen=30_00)
    with at(NOW - timedelta(days=5)):
        invitee = make_user(inviter=make_user())
        loner = make_user()
    for days_ago in (5, 2):
        with at(NOW - timedelta(days=days_ago)):
            for buyer in (invitee, loner):
                order = create_order(buyer, [LineRequest(game.id, 1)], None, utcnow())
                db.session.commit()
                pay(order, at=utcnow())

    # when: the draft doubles the rate but limits referrals to 2 days after binding
    draft = {
        "applies_to": "referral",
        "referral_days": 2,
        "roles": [{"role": "inviter", "rate_bps": 2000, "form": "wechat_change"}],
    }
    body = simulate(client, campaign.id, admin, rules=draft, days=30).json

    # then: the two invitee orders are replayed: 3 + 3 now; 6 + nothing (past the 2 days) drafted
    assert body["current"]["orders"] == body["draft"]["orders"] == 2
    assert body["current"]["rebates_fen"] == 6_00
    assert body["draft"]["by_role"]["inviter"]["outcomes"] == {"awarded": 1, "no_beneficiary": 1}
    assert body["draft"]["rebates_fen"] == 6_00
    assert body["draft"]["budget"] is None
    assert body["change"]["rebates"]["change_percent"] == "+0.00"


# --- nothing is written -----------------------------------------------------------------------------


def row_counts() -> dict[str, int]:
    existing = set(inspect(db.session.connection()).get_table_names())
    tables = [t for t in db.metadata.sorted_tables if t.name in existing]
    return {t.name: db.session.execute(select(func.count()).select_from(t)).scalar_one() for t in tables}


def test_simulation_writes_nothing(client, admin, packet_campaign, history):
    db.session.commit()
    before = row_counts()
    statements, pending = [], []

    def on_execute(conn, cursor, statement, *args):
        statements.append(statement.lstrip().split(None, 1)[0].upper())

    def on_flush(session, context, instances):
        pending.append(len(session.new) + len(session.dirty) + len(session.deleted))

    def on_commit(session):
        pending.append(len(session.new) + len(session.dirty) + len(session.deleted))

    event.listen(db.engine, "before_cursor_execute", on_execute)
    event.listen(db.session, "before_flush", on_flush)
    event.listen(db.session, "before_commit", on_commit)
    try:
        response = simulate(client, packet_campaign.id, admin, rules=DRAFT, days=30, budget_limit_fen=70_00)
    finally:
        event.remove(db.engine, "before_cursor_execute", on_execute)
        event.remove(db.session, "before_flush", on_flush)
        event.remove(db.session, "before_commit", on_commit)
    assert response.status_code == 200
    assert statements and not {"INSERT", "UPDATE", "DELETE"} & set(statements), statements
    assert not any(pending), "the simulation left new, changed or deleted objects in the session"
    db.session.rollback()
    assert row_counts() == before


# --- refusals and scoping ---------------------------------------------------------------------------


def test_rules_that_could_overspend_are_refused_with_the_reason(client, admin, packet_campaign):
    uncapped = {"roles": [{"role": "consumer", "rate_bps": 800, "form": "balance"}]}
    response = simulate(client, packet_campaign.id, admin, rules=uncapped, days=7)
    assert response.status_code == 422
    assert response.json["error"] == "invalid_rules"
    assert "needs cap_fen" in response.json["message"]

    overpaying = {
        "roles": [
            {"role": "consumer", "rate_bps": 6000, "form": "balance", "cap_fen": 100},
            {"role": "issuer", "rate_bps": 5000, "form": "merchant_credit", "cap_fen": 100},
        ]
    }
    response = simulate(client, packet_campaign.id, admin, rules=overpaying, days=7)
    assert response.status_code == 422
    assert "more than the order itself" in response.json["message"]


def test_a_hypothetical_budget_needs_capped_rules_too(client, admin, make_campaign):
    campaign = make_campaign({"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]})
    uncapped = {"roles": [{"role": "consumer", "rate_bps": 800, "form": "balance"}]}
    assert simulate(client, campaign.id, admin, rules=uncapped, days=7).status_code == 200
    response = simulate(client, campaign.id, admin, rules=uncapped, days=7, budget_limit_fen=100_00)
    assert response.status_code == 422
    assert response.json["error"] == "invalid_rules"


def test_a_draft_cannot_change_which_orders_it_applies_to(client, admin, packet_campaign):
    referral = {
        "applies_to": "referral",
        "roles": [{"role": "inviter", "rate_bps": 100, "form": "balance", "cap_fen": 1}],
    }
    response = simulate(client, packet_campaign.id, admin, rules=referral, days=7)
    assert response.status_code == 422
    assert response.json["error"] == "applies_to_changed"


@pytest.mark.parametrize(
    "body",
    [
        {"rules": CURRENT, "days": 0},
        {"rules": CURRENT, "days": 366},
        {"rules": CURRENT, "days": "7"},
        {"rules": CURRENT},
        {"rules": CURRENT, "days": 7, "budget_limit_fen": 0},
        {"rules": {"roles": []}, "days": 7},
        {"rules": CURRENT, "days": 7, "extra": 1},
    ],
)
def test_bad_bodies_are_422(client, admin, packet_campaign, body):
    response = simulate(client, packet_campaign.id, admin, **body)
    assert response.status_code == 422
    assert response.json["error"] == "validation_error"


def test_unknown_campaign_is_404(client, admin):
    assert simulate(client, 999_999, admin, rules=CURRENT, days=7).status_code == 404


def test_merchant_staff_simulate_only_their_own_campaigns(client, make_operator, shop, packet_campaign, make_merchant):
    _, own = make_operator("merchant_staff", merchant=shop)
    _, other = make_operator("merchant_staff", merchant=make_merchant())
    assert simulate(client, packet_campaign.id, own, rules=DRAFT, days=7).status_code == 200
    response = simulate(client, packet_campaign.id, other, rules=DRAFT, days=7)
    assert response.status_code == 404
    assert response.json["error"] == "not_found"


@pytest.mark.parametrize("role", ["finance", "support"])
def test_other_roles_are_403_and_no_token_401(client, make_operator, packet_campaign, role):
    _, headers = make_operator(role)
    assert simulate(client, packet_campaign.id, headers, rules=DRAFT, days=7).status_code == 403
    assert simulate(client, packet_campaign.id, {}, rules=DRAFT, days=7).status_code == 401


def test_a_user_token_is_not_an_operator_token(client, make_user, user_headers, packet_campaign):
    response = simulate(client, packet_campaign.id, user_headers(make_user()), rules=DRAFT, days=7)
    assert response.status_code == 401
