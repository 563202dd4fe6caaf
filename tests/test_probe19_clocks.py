"""Probes of time (round 19): Beijing months, ISO weeks across a new year, a campaign ending at Beijing midnight."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import time_machine
from sqlalchemy import func, select

from insights.reports import overview
from jobs.insights import rebuild
from models import RedPacket, SignIn, db
from models.base import BEIJING
from rebate.errors import Invalid
from rebate.fees import month_bounds
from tests.test_reports import PRODUCTS, plant_order


def bj(*args) -> datetime:
    return datetime(*args, tzinfo=BEIJING).astimezone(UTC)


# -- a month is YYYY-MM in ASCII digits, 2000-01 to 9999-12: anything else is Invalid, never another month ---------


@pytest.mark.parametrize("month", ["9999-12", " 2024-1", "2024-1 ", "2024-+1", "２０２４-01", "2024-\u0661\u0662"])
def test_a_month_that_is_not_yyyy_mm_is_refused_as_invalid(month):
    """``month_bounds`` says ``Invalid`` for anything but a ``YYYY-MM`` month. It read the parts with ``int``, which
    takes spaces, a sign and any script's digits: `` 2024-1`` and ``2024-+1`` were January 2024 under another name
    (an invoice keyed by that name would be a second invoice of January, and months compared as text no longer sort
    as dates), and ``9999-12``, which passed its own year check, raised a bare ``ValueError`` (its end is in year
    10000)."""
    with pytest.raises(Invalid) as refused:
        month_bounds(month)
    assert refused.value.code == "invalid_month"


def test_the_last_month_of_the_calendar_a_month_can_name_still_has_its_bounds():
    start, end = month_bounds("2099-12")
    assert (start, end) == (bj(2099, 12, 1), bj(2100, 1, 1))
    assert month_bounds("2028-02") == (bj(2028, 2, 1), bj(2028, 3, 1))  # a leap February ends after the 29th


# -- weekly reports across a new year: ISO weeks, cut at Beijing midnight --------------------------------------------


def test_a_weekly_report_across_new_year_cuts_iso_weeks_at_beijing_midnight(make_merchant, make_product, make_user):
    # given: orders a second either side of Beijing midnight on 31 December 2026 (2026 has an ISO week 53: Monday 28
    # December to Sunday 3 January) and on the Sunday night ending that week
    shop = make_merchant()
    PRODUCTS[shop.id] = make_product(shop).id
    buyer = make_user()
    for at, fen in (
        (bj(2026, 12, 31, 23, 59, 59), 1_00),
        (bj(2027, 1, 1, 0, 0, 0), 2_00),
        (bj(2027, 1, 3, 23, 59, 59), 4_00),
        (bj(2027, 1, 4, 0, 0, 0), 8_00),
    ):
        plant_order(buyer, shop, at, [("book", fen)])
    db.session.commit()
    rebuild([date(2026, 12, 31), date(2027, 1, 1), date(2027, 1, 3), date(2027, 1, 4)], bj(2027, 1, 20))
    # when: the weeks from Monday 28 December to Sunday 10 January are reported
    report = overview(date(2026, 12, 28), date(2027, 1, 10), shop.id, "week")
    # then: week 53 of 2026 holds the three orders to Sunday midnight, week 1 of 2027 the one after it
    series = [(p["period"], p["from"], p["to"], p["orders"], p["sales_fen"]) for p in report["series"]]
    assert series == [
        ("2026-W53", "2026-12-28", "2027-01-03", 3, 7_00),
        ("2027-W01", "2027-01-04", "2027-01-10", 1, 8_00),
    ]
    # and by month the first two orders fall either side of the new year
    months = overview(date(2026, 12, 1), date(2027, 1, 31), shop.id, "month")["series"]
    assert [(p["period"], p["sales_fen"]) for p in months] == [("2026-12", 1_00), ("2027-01", 14_00)]


# -- a sign-in campaign ending at Beijing midnight: the streak goes on, the packets stop ---------------------------


def test_a_sign_in_campaign_ending_at_beijing_midnight_pays_until_then_and_the_streak_goes_on(
    client, user_headers, make_user, make_campaign
):
    # given: a sign-in campaign ending at midnight starting 6 March (Beijing), i.e. 16:00 UTC on 5 March
    make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]},
        packet_amount_fen=1_00,
        budget_limit_fen=1_000_00,
        trigger={"kind": "daily_sign_in"},
        ends_at=bj(2025, 3, 6),
    )
    amy = make_user()

    def sign_in(at: datetime) -> dict:
        with time_machine.travel(at, tick=False):
            answer = client.post("/api/v1/sign-in", headers=user_headers(amy))
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()

    # when: amy signs in a second before the end, then at the end itself (the next Beijing day)
    before = sign_in(bj(2025, 3, 5, 23, 59, 59))
    at_end = sign_in(bj(2025, 3, 6))
    # then: the first is 5 March with a packet; the second is 6 March, streak 2, and no packet (the end is exclusive)
    assert (before["day"], before["streak"], len(before["packets"])) == ("2025-03-05", 1, 1)
    assert (at_end["day"], at_end["streak"], at_end["packets"]) == ("2025-03-06", 2, [])
    owned = db.session.execute(select(func.count()).where(RedPacket.owner_id == amy.id)).scalar_one()
    days = db.session.execute(select(func.count()).where(SignIn.user_id == amy.id)).scalar_one()
    assert (owned, days) == (1, 2)
