"""Spike alerts: hourly counts against an EWMA baseline, once per hour per key (SQLite and PostgreSQL)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
from sqlalchemy import func, select

from jobs.risk import run_spikes
from models import Alert, AuditLog, Campaign, CampaignRules, Merchant, RedPacket, SpikeBaseline, User, db
from risk.spikes import Baseline, SpikeSettings, fold_hours

T0 = datetime(2026, 11, 28, 0, 0, tzinfo=UTC)  # 08:00 Beijing
SETTINGS = SpikeSettings()
HOUR = timedelta(hours=1)
_n = count(1)
RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]}


@pytest.fixture
def shop(app):
    merchant = Merchant(name=f"spiky-{next(_n)}")
    user = User()
    db.session.add_all([merchant, user])
    db.session.commit()
    return merchant, user


def campaign(merchant: Merchant, auto_pause: bool = False) -> Campaign:
    c = Campaign(
        name=f"c-{next(_n)}",
        issuer_type="merchant",
        issuer_merchant_id=merchant.id,
        funder_type="merchant_deposit",
        funder_merchant_id=merchant.id,
        status="active",
        spike_auto_pause=auto_pause,
    )
    db.session.add(c)
    db.session.flush()
    db.session.add(CampaignRules(campaign_id=c.id, version=1, rules=RULES))
    db.session.commit()
    return c


def claims(c: Campaign, user: User, per_hour: dict[int, int]) -> None:
    """``per_hour[h]`` packets claimed in hour h after T0 (spread over the hour)."""
    rows = []
    for h, n in per_hour.items():
        for k in range(n):
            i = next(_n)
            rows.append(
                {
                    "campaign_id": c.id,
                    "rules_version": 1,
                    "issuer_type": "merchant",
                    "issuer_merchant_id": c.issuer_merchant_id,
                    "owner_id": user.id,
                    "amount_fen": 1_00,
                    "status": "issued",
                    "expires_at": T0 + timedelta(days=60),
                    "source": "test",
                    "source_ref": str(i),
                    "claimed_at": T0 + h * HOUR + timedelta(seconds=k * 3599 // max(n, 1)),
                }
            )
    db.session.execute(RedPacket.__table__.insert(), rows)
    db.session.commit()


def steady(hours: range) -> dict[int, int]:
    return {h: 8 if h % 2 else 12 for h in hours}


def baseline(key: str) -> SpikeBaseline:
    db.session.expire_all()
    return db.session.get(SpikeBaseline, key)


def test_ewma_by_hand():
    b = Baseline()
    for x in (10, 20, 0):
        b.fold(x, 0.1)
    # 10 → mean 10, var 0; 20: diff 10, mean 11, var 0.9·(0 + 0.1·100) = 9;
    # 0: diff -11, mean 9.9, var 0.9·(9 + 0.1·121) = 18.99.
    assert b.hours == 3
    assert b.mean == pytest.approx(9.9)
    assert b.var == pytest.approx(18.99)


def test_the_baseline_folds_each_hour_as_computed_by_hand(shop):
    merchant, user = shop
    c = campaign(merchant)
    claims(c, user, {0: 10, 1: 20})  # hour 2: nothing

    fold_hours(T0 + 3 * HOUR + timedelta(minutes=5), SETTINGS)
    db.session.commit()

    row = baseline(f"campaign:{c.id}:claims")
    assert row.hours == 3 and row.last_count == 0
    assert row.mean == pytest.approx(9.9) and row.var == pytest.approx(18.99)
    assert row.hour == T0 + 2 * HOUR
    by_merchant = baseline(f"merchant:{merchant.id}:claims")
    assert by_merchant.mean == pytest.approx(9.9)


def test_a_spike_after_the_warm_up_alerts_once_with_the_figures(shop):
    merchant, user = shop
    c = campaign(merchant)
    claims(c, user, {**steady(range(30)), 30: 140})

    spikes = fold_hours(T0 + 31 * HOUR, SETTINGS)
    db.session.commit()

    assert [(s.key, s.hour, s.count) for s in spikes if s.key.startswith("campaign")] == [
        (f"campaign:{c.id}:claims", T0 + 30 * HOUR, 140)
    ]
    alert = db.session.execute(select(Alert).where(Alert.subject == f"campaign:{c.id}:claims")).scalar_one()
    b = Baseline()
    for h in range(30):
        b.fold(8 if h % 2 else 12, 0.1)
    expected = f"campaign {c.id}: 140 claims in 2026-11-29 14:00-15:00 Beijing, baseline {b.mean:.1f} ± "
    assert alert.kind == "spike" and alert.message.startswith(expected)
    assert f"± {math.sqrt(b.var):.1f}" in alert.message
    assert baseline(f"campaign:{c.id}:claims").alerted_at == T0 + 31 * HOUR
    # The same hour again (another run, the same node or another): nothing more.
    assert fold_hours(T0 + 31 * HOUR + timedelta(minutes=30), SETTINGS) == []
    db.session.commit()
    assert db.session.execute(select(func.count(Alert.id)).where(Alert.kind == "spike")).scalar_one() == 2  # + merchant


def test_no_alert_during_the_warm_up_nor_below_the_minimum(shop):
    merchant, user = shop
    warming, small = campaign(merchant), campaign(merchant)
    claims(warming, user, {**steady(range(10)), 10: 140})  # only 10 hours behind it: warming up
    claims(small, user, {**dict.fromkeys(range(30), 1), 30: 15})  # 15 ≫ 1 but under 20

    spikes = fold_hours(T0 + 31 * HOUR, SETTINGS)
    db.session.commit()

    assert [s.key for s in spikes if s.key.startswith("campaign")] == []
    assert baseline(f"campaign:{warming.id}:claims").hours == 31  # hours 0..30 (from its first count on)
    assert baseline(f"campaign:{small.id}:claims").last_count == 15


def test_missed_hours_are_caught_up_with_zeros_and_at_most_48(shop):
    merchant, user = shop
    c = campaign(merchant)
    claims(c, user, {0: 10})
    fold_hours(T0 + HOUR, SETTINGS)
    db.session.commit()
    assert baseline(f"campaign:{c.id}:claims").hours == 1

    fold_hours(T0 + 6 * HOUR, SETTINGS)  # hours 1..5 missed: 5 empty hours folded
    db.session.commit()
    row = baseline(f"campaign:{c.id}:claims")
    assert row.hours == 6 and row.hour == T0 + 5 * HOUR
    assert row.mean == pytest.approx(10 * 0.9**5)

    claims(c, user, {205: 3})
    fold_hours(T0 + 206 * HOUR, SETTINGS)  # 200 hours later: only the last 48 are folded
    db.session.commit()
    row = baseline(f"campaign:{c.id}:claims")
    assert row.hours == 6 + 48 and row.hour == T0 + 205 * HOUR and row.last_count == 3


def test_only_complete_hours_are_folded(shop):
    merchant, user = shop
    c = campaign(merchant)
    claims(c, user, {0: 5, 1: 7})

    fold_hours(T0 + HOUR + timedelta(minutes=59), SETTINGS)  # hour 1 is not over
    db.session.commit()

    row = baseline(f"campaign:{c.id}:claims")
    assert row.hours == 1 and row.last_count == 5


def test_several_nodes_fold_an_hour_once(shop, app):
    from tests.concurrency import together

    merchant, user = shop
    c = campaign(merchant)
    claims(c, user, {**steady(range(30)), 30: 140})

    results = together(4, lambda i: fold_hours(T0 + 31 * HOUR, SETTINGS), app=app)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert sorted(len(r) for r in results) == [0, 0, 0, 2]  # the campaign's and the merchant's, by one node
    assert db.session.execute(select(func.count(Alert.id)).where(Alert.kind == "spike")).scalar_one() == 2
    assert baseline(f"campaign:{c.id}:claims").hours == 31


def test_auto_pause_pauses_only_the_flagged_campaign_audited_as_the_system(shop):
    merchant, user = shop
    flagged, plain = campaign(merchant, auto_pause=True), campaign(merchant)
    for c in (flagged, plain):
        claims(c, user, {**steady(range(30)), 30: 140})

    summary = run_spikes(T0 + 31 * HOUR, SETTINGS)

    assert summary["paused"] == 1
    db.session.expire_all()
    assert db.session.get(Campaign, flagged.id).status == "paused"
    assert db.session.get(Campaign, plain.id).status == "active"
    line = db.session.execute(select(AuditLog).where(AuditLog.action == "campaign.pause")).scalar_one()
    assert line.operator_id is None and line.target_id == str(flagged.id)
    assert line.reason.startswith(f"spike auto-pause: campaign {flagged.id}: 140 claims")


def test_rebates_count_and_their_fen_per_campaign_and_merchant(app):
    from tests.test_collusion import World

    w = World(now=T0 + 3 * HOUR)
    shop = w.merchant()
    buyer = w.user(age_days=100)
    for k in range(4):  # paid in hour 1, each rebating 3 yuan to the buyer and 3 to the shop
        w.order(buyer, shop, packet=k < 2, days_ago=(1.5 + k / 100) / 24, rebate_fen=3_00)
    w.save()
    campaign_id = w.campaigns[shop.id].id

    fold_hours(T0 + 3 * HOUR, SETTINGS)
    db.session.commit()

    # Hour 1: 8 rebates, 2400 fen; hour 2: none (folded as 0 with alpha 0.1).
    assert baseline(f"campaign:{campaign_id}:rebates").mean == pytest.approx(8 * 0.9)
    assert baseline(f"campaign:{campaign_id}:rebate_fen").mean == pytest.approx(2400 * 0.9)
    assert baseline(f"merchant:{shop.id}:rebates").hours == 2
    assert baseline(f"merchant:{shop.id}:redemptions").mean == pytest.approx(2 * 0.9)
    assert baseline(f"campaign:{campaign_id}:claims").hours == 3  # claimed in hour 0, an hour before paying


def test_a_campaign_a_person_activated_again_is_not_paused_again_for_the_same_burst(shop):
    from models import Operator

    merchant, user = shop
    flagged = campaign(merchant, auto_pause=True)
    claims(flagged, user, {**steady(range(30)), 30: 140, 31: 400, 38: 1000})
    assert run_spikes(T0 + 31 * HOUR, SETTINGS)["paused"] == 1
    # given: an operator judges the burst real and activates the campaign again at 15:10 Beijing
    operator = Operator(username=f"ops-{next(_n)}", display_name="Ops", role="admin")
    db.session.add(operator)
    db.session.commit()
    db.session.get(Campaign, flagged.id).status = "active"  # as rebate.campaign_ops.transition leaves it, audited
    db.session.add(
        AuditLog(
            operator_id=operator.id,
            action="campaign.activate",
            target_type="campaign",
            target_id=str(flagged.id),
            reason="a real burst: the shop is on TV",
            created_at=T0 + 31 * HOUR + timedelta(minutes=10),
        )
    )
    db.session.commit()

    # when: the burst goes on in the next hour (a spike again): alerted, not paused
    summary = run_spikes(T0 + 32 * HOUR, SETTINGS)
    assert (summary["spikes"] >= 1, summary["paused"]) == (True, 0)
    db.session.expire_all()
    assert db.session.get(Campaign, flagged.id).status == "active"
    alerts = db.session.execute(select(Alert.message).where(Alert.subject == f"campaign:{flagged.id}:claims"))
    assert any(": 400 claims in" in m for m in alerts.scalars())

    # then: a spike of an hour beginning after the grace (6 hours) pauses it again, as the system
    assert run_spikes(T0 + 39 * HOUR, SETTINGS)["paused"] == 1
    db.session.expire_all()
    assert db.session.get(Campaign, flagged.id).status == "paused"
    pauses = db.session.execute(select(AuditLog).where(AuditLog.action == "campaign.pause").order_by(AuditLog.id))
    assert [p.reason.split(" in ")[0] for p in pauses.scalars()] == [
        f"spike auto-pause: campaign {flagged.id}: 140 claims",
        f"spike auto-pause: campaign {flagged.id}: 1000 claims",
    ]
