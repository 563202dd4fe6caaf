"""Inputs from outside at the edges: amounts past what the ledger posts, instants and days at the calendar's ends,
nulls where a value is needed, a number where a switch is. Each is refused with a clear 4xx and changes nothing;
a far end stored before the API bounded it (old data) breaks no page."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select

from models import AuditLog, Ban, Campaign, Challenge, Order, RailControl, db, utcnow
from models.base import BEIJING, beijing
from models.payouts import Rail
from money import MAX_FEN
from risk import trail
from tests.challenge_helpers import cash, fund
from tests.console_helpers import sign_in
from web.guards import EARLIEST, LATEST, day_in_range, instant_in_range

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}]}
FAR = ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "1999-12-31T23:59:59Z")
FAR += ("2100-01-01T00:00:00Z",)


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")[1]


def refused(answer, status: int = 422) -> dict:
    assert answer.status_code == status, answer.get_data(as_text=True)
    return answer.json


def words(body: dict) -> str:
    """The refusal's message and each field's problem, as the caller reads them."""
    return " | ".join([body["message"], *(d["problem"] for d in body.get("details", []))])


# --- orders: a total the ledger could never post ------------------------------------------------------------------


def test_an_order_above_the_ledgers_bound_is_refused_before_wechat_takes_the_money(
    client, make_user, make_product, user_headers
):
    # given: a product at the largest price the API takes, and a buyer
    gold = make_product(price_fen=MAX_FEN)
    buyer = make_user()
    headers = user_headers(buyer)
    # when: two of it (or 50 lines of 999) are ordered
    for lines in ([{"product_id": gold.id, "quantity": 2}], [{"product_id": gold.id, "quantity": 999}] * 50):
        body = refused(client.post("/api/v1/orders", json={"lines": lines}, headers=headers))
        # then: 422 naming the bound, and no order (nothing to pay at WeChat)
        assert body["error"] == "order_too_large" and str(MAX_FEN) in words(body)
    assert count(Order) == 0
    # and: one of it is within the ledger's bound but more than WeChat takes in one payment (its amount.total is a
    # 32-bit integer): refused too, naming WeChat's bound (it had been an order holding its packets half an hour for a
    # prepay WeChat could only refuse)
    body = refused(
        client.post("/api/v1/orders", json={"lines": [{"product_id": gold.id, "quantity": 1}]}, headers=headers)
    )
    assert body["error"] == "order_too_large" and str(2**31 - 1) in words(body)
    assert count(Order) == 0
    # and: exactly WeChat's bound is an order like any other
    top = make_product(price_fen=2**31 - 1)
    made = client.post("/api/v1/orders", json={"lines": [{"product_id": top.id, "quantity": 1}]}, headers=headers)
    assert made.status_code == 201, made.json
    assert made.json["total_fen"] == 2**31 - 1


# --- challenges: a first day years away would hold the stake for years -------------------------------------------


def test_a_challenge_starts_within_the_lead_days_and_a_far_start_holds_no_stake(app, client, make_user, user_headers):
    # given: a person with 5 yuan on their balance
    person = make_user()
    fund(person.id, 5_00)
    db.session.commit()
    headers = user_headers(person)
    today = utcnow().astimezone(BEIJING).date()
    lead = app.config["CHALLENGE_MAX_LEAD_DAYS"]

    def create(start_day: str, key: str, **extra):
        body = {"kind": "steps", "days": 1, "stake": 1_00, "start_day": start_day, **extra}
        return client.post("/api/v1/challenges", json=body, headers={**headers, "Idempotency-Key": key})

    # when: the first day is past the lead, at the calendar's end, or the sponsor's id past an INTEGER
    for n, start in enumerate([today + timedelta(days=lead + 1), date(9999, 12, 31), date(9000, 1, 1)]):
        body = refused(create(start.isoformat(), f"far-{n}"))
        # then: refused in words, the stake still on the balance, no challenge
        assert body["error"] == "challenge_invalid", body
    sponsor = {"stake": 0, "stake_source": "sponsor", "sponsor_campaign_id": 2**63, "prize_fen": 1_00}
    refused(create((today + timedelta(days=1)).isoformat(), "sponsor", **sponsor))
    assert cash(person.id) == 5_00 and count(Challenge) == 0
    # and: the last day of the lead is a challenge like any other
    answer = create((today + timedelta(days=lead)).isoformat(), "in-lead")
    assert answer.status_code == 201, answer.json
    assert cash(person.id) == 4_00


# --- a rail switch is true or false ------------------------------------------------------------------------------


def test_a_rail_switch_takes_true_or_false_not_a_number(client, admin):
    for value in (0, 1, "false", None):
        body = refused(
            client.put(
                f"/admin/api/rails/{Rail.WECHAT_CHANGE}", json={"enabled": value, "reason": "a test"}, headers=admin
            )
        )
        assert body["error"] == "validation_error", body
    assert count(RailControl) == 0  # the rail stays as it was (on)
    done = client.put(
        f"/admin/api/rails/{Rail.WECHAT_CHANGE}", json={"enabled": False, "reason": "a test"}, headers=admin
    )
    assert done.status_code == 200 and done.json["enabled"] is False


# --- instants at the calendar's ends -----------------------------------------------------------------------------


def test_the_bounds_themselves():
    assert instant_in_range(EARLIEST) == EARLIEST
    assert instant_in_range(LATEST - timedelta(microseconds=1))
    for moment in (LATEST, EARLIEST - timedelta(microseconds=1), datetime.fromisoformat(FAR[2])):
        with pytest.raises(ValueError, match="2000-01-01 to 2099-12-31"):
            instant_in_range(moment)
    assert day_in_range(date(2099, 12, 31)) and day_in_range(date(2000, 1, 1))
    for day in (date(1999, 12, 31), date(2100, 1, 1), date(9999, 12, 31), date(1, 1, 1)):
        with pytest.raises(ValueError):
            day_in_range(day)


def test_a_campaigns_end_at_the_calendars_edge_is_refused_and_changes_nothing(client, admin, make_campaign):
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00)
    audits = count(AuditLog)
    for value in FAR:
        answer = client.patch(
            f"/admin/api/campaigns/{campaign.id}", json={"reason": "far end", "ends_at": value}, headers=admin
        )
        body = refused(answer)
        assert "2000-01-01 to 2099-12-31" in words(body), body
    assert db.session.get(Campaign, campaign.id).ends_at is None and count(AuditLog) == audits
    # the campaign's pages still answer
    assert client.get(f"/api/v1/campaigns/{campaign.id}/rules").status_code == 200


@pytest.mark.parametrize(
    "change",
    [
        {"budget_limit_fen": None},
        {"name": None},
        {"packet_valid_days": None},
        {"max_packets_per_order": None},
        {"regions": None},
        {"channels": None},
        {"usage_windows": None},
    ],
)
def test_a_null_where_a_campaign_needs_a_value_is_refused_in_words(client, admin, make_campaign, change):
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, regions=["sh"])
    audits = count(AuditLog)
    body = refused(
        client.patch(f"/admin/api/campaigns/{campaign.id}", json={"reason": "a test", **change}, headers=admin)
    )
    (name,) = change
    assert f"{name} cannot be null" in words(body), body
    kept = db.session.get(Campaign, campaign.id)
    assert (kept.budget_limit_fen, kept.regions, kept.packet_valid_days) == (1_000_00, ["sh"], 30)
    assert count(AuditLog) == audits


def test_null_still_means_none_where_the_api_says_so(client, admin, make_campaign):
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, max_packets=10, ends_at=utcnow() + timedelta(days=3))
    answer = client.patch(
        f"/admin/api/campaigns/{campaign.id}",
        json={"reason": "open ended", "ends_at": None, "max_packets": None, "claim_limits": None},
        headers=admin,
    )
    assert answer.status_code == 200, answer.json
    kept = db.session.get(Campaign, campaign.id)
    assert (kept.ends_at, kept.max_packets, kept.budget_limit_fen) == (None, None, 1_000_00)


def test_a_ban_ending_at_the_calendars_edge_is_refused(client, admin):
    for value in FAR:
        body = {"subject": "net", "value": "10.9.7.0/24", "reason": "a test ban", "ends_at": value}
        refused(client.post("/admin/api/bans", json=body, headers={**admin, "Idempotency-Key": f"ban-{value}"}))
    assert count(Ban) == 0


@pytest.mark.parametrize(
    "path", ["/admin/api/audit-log", "/admin/api/notices", "/admin/api/messages", "/admin/api/challenges"]
)
def test_a_since_at_the_calendars_edge_is_refused_not_a_500(client, admin, path):
    for name in ("since", "until") if path.endswith("audit-log") else ("since",):
        for value in FAR:
            refused(client.get(path, query_string={name: value}, headers=admin))
    assert client.get(path, query_string={"since": "2026-01-01T00:00:00+08:00"}, headers=admin).status_code == 200


def test_reports_and_statements_take_days_and_months_of_2000_to_2099(client, admin, make_campaign, make_merchant):
    campaign = make_campaign(RULES)
    merchant = make_merchant()
    for day in ("9999-12-31", "0001-01-01", "1999-12-31", "2100-01-01"):
        window = {"from": day, "to": day}
        refused(client.get("/admin/api/reports/overview", query_string=window, headers=admin))
        refused(client.get(f"/admin/api/reports/campaigns/{campaign.id}", query_string=window, headers=admin))
    for month in ("9999-12", "0000-01", "1999-12", "2100-01"):
        path = f"/admin/api/merchants/{merchant.id}/statement"
        refused(client.get(path, query_string={"month": month}, headers=admin))
    ok = {"from": "2099-12-31", "to": "2099-12-31"}
    assert client.get("/admin/api/reports/overview", query_string=ok, headers=admin).status_code == 200
    path = f"/admin/api/merchants/{merchant.id}/statement"
    assert client.get(path, query_string={"month": "2099-12"}, headers=admin).status_code == 200


def test_console_pages_with_days_at_the_calendars_edge_answer_without_a_500(
    client, admin, make_campaign, make_merchant
):
    campaign = make_campaign(RULES)
    merchant = make_merchant()
    csrf = sign_in(client, admin)
    for path in (
        "/console/audit?from=9999-12-31&to=9999-12-31",
        "/console/audit?from=0001-01-01&to=0001-01-01",
        f"/console/campaigns/{campaign.id}/report?from=9999-12-31&to=9999-12-31",
        f"/console/statements?merchant_id={merchant.id}&month=9999-12",
        "/console/challenges?since=9999-12-31",
    ):
        answer = client.get(path)
        assert answer.status_code < 500, (path, answer.status_code)
    for day in ("9999-12-31", "0001-01-01"):  # a backtest's window from the form's date fields
        form = {"scope": "", "rules": '{"rules": []}', "from": day, "to": day, "csrf_token": csrf}
        answer = client.post("/console/risk/rules/backtest", data=form)
        assert answer.status_code == 422, answer.status_code


# --- a far end stored before the API bounded it ------------------------------------------------------------------


def test_a_far_end_already_stored_breaks_no_page(client, admin, make_campaign):
    # given: a campaign and a ban whose ends were stored at the calendar's last second (old data)
    far = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    campaign = make_campaign(RULES, ends_at=far)
    db.session.add(Ban(subject="net", value="10.9.7.0/24", reason="old", ends_at=far, created_at=utcnow()))
    db.session.commit()
    # then: the public rules page, its share page and the console's lists answer
    assert client.get(f"/api/v1/campaigns/{campaign.id}/rules").status_code == 200
    assert client.get(f"/c/{campaign.id}").status_code == 200
    sign_in(client, admin)
    for path in ("/console/campaigns", f"/console/campaigns/{campaign.id}", "/console/bans"):
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.status_code)


def test_beijing_time_of_the_calendars_last_hours_is_its_last_instant():
    last = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert beijing(last) == datetime.max.replace(tzinfo=BEIJING)
    first = datetime.fromisoformat(FAR[2])  # 0001-01-01 at +14:00: before the calendar's first UTC instant
    assert beijing(first) == datetime.min.replace(tzinfo=BEIJING)
    assert beijing(datetime(2026, 1, 1, 16, tzinfo=UTC)) == datetime(2026, 1, 2, 0, tzinfo=BEIJING)


# --- a phone's clock may say anything: only offsets count --------------------------------------------------------


def test_events_stamped_at_the_calendars_ends_are_placed_within_the_batch_spread():
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    view = trail.Event(trail.KINDS["view"], 1, None, None)
    stamps = [datetime.fromisoformat(FAR[2]), datetime.fromisoformat(FAR[0]), datetime(1970, 1, 1, tzinfo=UTC)]
    placed = trail.place([(view, at) for at in stamps], now)
    assert [at for _, at in placed] == [now - trail.BATCH_SPREAD] * 2 + [now]


def test_the_events_api_takes_a_reset_clock(client, make_user, user_headers):
    person = make_user()
    events = [{"kind": "page", "path": "/home", "client_at": at} for at in ("1970-01-01T00:00:00Z", FAR[2], FAR[0])]
    answer = client.post("/api/v1/events", json={"events": events}, headers=user_headers(person))
    assert answer.status_code == 202, answer.json
