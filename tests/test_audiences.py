"""Audiences (issue 14, "Re-engagement that can be measured"): definitions against planted purchase histories,
merchant scoping, batch runs with a deterministic holdout (idempotent, resumable, budget-bounded), the
"packet received" notices, the lift report and bad input. Both databases."""

from __future__ import annotations

from datetime import timedelta
from itertools import count

import pytest
from sqlalchemy import func, insert, select

from insights.lift import run_lift
from jobs.audiences import work_runs
from models import (
    Audience,
    AudienceMember,
    AudienceRun,
    AuditLog,
    Notice,
    Order,
    OrderLine,
    OrderPacket,
    RedPacket,
    RunStatus,
    User,
    db,
    utcnow,
)
from models.operators import Actor
from rebate import audiences
from rebate.audiences import held_out, members_query, parse_definition, preview_count, work_run
from rebate.budgets import release_reserved
from rebate.errors import Invalid
from tests.concurrency import together, writer_meanwhile

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 5_00}]}
_trade = count(1)
DAY = timedelta(days=1)


def plant_order(user, product, paid_at, paid_fen, *, refunded_fen=0, status="paid"):
    """A paid order of one line (what the payment path leaves behind), written directly."""
    order = Order(
        out_trade_no=f"aud-{next(_trade)}",
        user_id=user.id,
        merchant_id=product.merchant_id,
        status=status,
        total_fen=paid_fen,
        payable_fen=paid_fen,
        paid_fen=paid_fen,
        refunded_fen=refunded_fen,
        paid_at=paid_at,
        time_expire=paid_at,
        created_at=paid_at,
    )
    db.session.add(order)
    db.session.flush()
    db.session.add(
        OrderLine(
            order_id=order.id,
            product_id=product.id,
            category=product.category,
            quantity=1,
            unit_price_fen=paid_fen,
            line_total_fen=paid_fen,
        )
    )
    db.session.commit()
    return order


@pytest.fixture
def world(make_user, make_merchant, make_product, make_campaign):
    """Two shops and seven people with hand-written histories (see each line); returns a namespace."""
    now = utcnow()
    a, b = make_merchant("shop-a"), make_merchant("shop-b")
    a_tea, a_cake, b_tea = (
        make_product(a, category="tea"),
        make_product(a, category="cake"),
        make_product(b, category="tea"),
    )
    u = [None] + [make_user() for _ in range(7)]
    plant_order(u[1], a_tea, now - 100 * DAY, 300_00)  # lapsed 30; tea a year; spent 300 a year
    plant_order(u[2], a_cake, now - 5 * DAY, 50_00)  # recent cake
    plant_order(u[2], a_tea, now - 200 * DAY, 80_00)  # … and tea long ago: 130 a year
    plant_order(u[3], b_tea, now - 10 * DAY, 200_00, refunded_fen=150_00)  # shop B only: tea, net 50
    used_on = plant_order(u[4], a_cake, now - 20 * DAY, 150_00)  # spent 150 in 30 days, with a packet
    # u5: no order at all
    plant_order(u[6], a_tea, now - 100 * DAY, 300_00)  # like u1, but banned
    plant_order(u[7], a_tea, now - 40 * DAY, 120_00, refunded_fen=120_00, status="refunded")  # refunded whole
    campaign = make_campaign(RULES, packet_amount_fen=5_00)
    db.session.add(
        RedPacket(
            campaign_id=campaign.id,
            rules_version=1,
            issuer_type="platform",
            owner_id=u[4].id,
            amount_fen=5_00,
            status="used",
            reserved_fen=0,
            expires_at=now + DAY,
            source="test",
            source_ref="u4",
            order_id=used_on.id,
        )
    )
    u[6].status = "banned"
    db.session.commit()

    class World:
        pass

    w = World()
    w.now, w.a, w.b, w.u = now, a, b, u
    w.ids = lambda *ns: sorted(u[n].id for n in ns)
    return w


def members(definition: dict, merchant_id=None, now=None) -> list[int]:
    clause = parse_definition(definition)
    return sorted(db.session.execute(members_query(clause, merchant_id, now or utcnow())).scalars())


LAPSED_30 = {"kind": "lapsed", "days": 30}


@pytest.mark.parametrize(
    ("definition", "expected", "shop_a"),
    [
        (LAPSED_30, (1,), (1,)),
        ({"kind": "bought_in_category", "category": "tea", "days": 30}, (3,), ()),
        ({"kind": "bought_in_category", "category": "tea", "days": 365}, (1, 2, 3), (1, 2)),
        ({"kind": "bought_in_category", "category": "cake", "days": 30}, (2, 4), (2, 4)),
        ({"kind": "spent_at_least", "amount_fen": 100_00, "days": 30}, (4,), (4,)),
        ({"kind": "spent_at_least", "amount_fen": 100_00, "days": 365}, (1, 2, 4), (1, 2, 4)),
        ({"kind": "spent_at_least", "amount_fen": 50_00, "days": 30}, (2, 3, 4), (2, 4)),
        ({"kind": "never_used_packet"}, (1, 2, 3, 5, 7), (1, 2, 7)),
    ],
    ids=["lapsed", "tea-30", "tea-365", "cake-30", "spent-100-30", "spent-100-365", "spent-50-30", "never-used"],
)
def test_each_clause_picks_the_hand_computed_people(world, definition, expected, shop_a):
    assert members(definition, now=world.now) == world.ids(*expected)
    assert members(definition, world.a.id, now=world.now) == world.ids(*shop_a)
    assert preview_count(parse_definition(definition), None, world.now) == len(expected)


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        (
            {
                "kind": "all_of",
                "clauses": [
                    {"kind": "bought_in_category", "category": "tea", "days": 365},
                    {"kind": "not", "clause": LAPSED_30},
                ],
            },
            (2, 3),
        ),
        (
            {"kind": "any_of", "clauses": [LAPSED_30, {"kind": "spent_at_least", "amount_fen": 100_00, "days": 30}]},
            (1, 4),
        ),
        ({"kind": "not", "clause": {"kind": "never_used_packet"}}, (4,)),
        ({"kind": "all_of", "clauses": [LAPSED_30, {"kind": "never_used_packet"}]}, (1,)),
    ],
    ids=["tea-but-not-lapsed", "lapsed-or-big-spender", "used-a-packet", "lapsed-and-never-used"],
)
def test_combinations(world, definition, expected):
    assert members(definition, now=world.now) == world.ids(*expected)


def test_banned_people_are_never_members(world):
    assert world.u[6].id not in members({"kind": "not", "clause": LAPSED_30}, now=world.now)
    assert world.u[6].id not in members(LAPSED_30, world.a.id, now=world.now)


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        ({"kind": "lapsed", "days": 0}, "days"),
        ({"kind": "lapsed"}, "days"),
        ({"kind": "sometime"}, ""),
        ({"kind": "spent_at_least", "amount_fen": "100", "days": 3}, "amount_fen"),
        ({"kind": "bought_in_category", "category": "tea; drop", "days": 3}, "category"),
        ({"kind": "never_used_packet", "extra": 1}, "extra"),
        ({"kind": "all_of", "clauses": []}, "clauses"),
        (
            {
                "kind": "not",
                "clause": {"kind": "not", "clause": {"kind": "not", "clause": {"kind": "not", "clause": LAPSED_30}}},
            },
            "",
        ),
    ],
    ids=["zero-days", "no-days", "unknown-kind", "amount-text", "bad-category", "extra-field", "empty-all", "too-deep"],
)
def test_bad_definitions_are_refused_naming_the_field(definition, field):
    with pytest.raises(Invalid, match=f"definition.*{field}") as refused:
        parse_definition(definition)
    assert refused.value.code == "invalid_definition"


# -- the admin API ------------------------------------------------------------------------------------------


def test_create_answers_the_preview_count_and_audits(client, world, make_operator):
    _, admin = make_operator("admin")
    answer = client.post(
        "/admin/api/audiences",
        json={"name": "lapsed", "definition": LAPSED_30},
        headers={**admin, "Idempotency-Key": "aud-1"},
    )
    assert answer.status_code == 201, answer.get_json()
    body = answer.get_json()
    assert (body["preview_count"], body["merchant_id"], body["definition"]) == (1, None, LAPSED_30)
    again = client.get(f"/admin/api/audiences/{body['id']}", headers=admin).get_json()
    assert again["preview_count"] == 1 and again["runs"] == []
    assert [a["id"] for a in client.get("/admin/api/audiences", headers=admin).get_json()["items"]] == [body["id"]]
    assert db.session.execute(select(AuditLog.action).where(AuditLog.target_type == "audience")).scalars().all() == [
        "audience.create"
    ]


@pytest.mark.parametrize(
    ("sent", "field"),
    [
        ({"name": "x", "definition": {"kind": "lapsed", "days": -1}}, "definition.lapsed.days"),
        ({"name": "x", "definition": {"kind": "nope"}}, "definition"),
        ({"name": "", "definition": LAPSED_30}, "name"),
        ({"name": "x"}, "definition"),
        ({"name": "x", "definition": LAPSED_30, "merchant_id": 0}, "merchant_id"),
    ],
)
def test_bad_audiences_answer_422_naming_the_field_and_change_nothing(client, make_operator, sent, field):
    _, admin = make_operator("admin")
    answer = client.post("/admin/api/audiences", json=sent, headers=admin)
    assert answer.status_code == 422
    assert field in {d["field"] for d in answer.get_json()["details"]}
    assert db.session.execute(select(func.count()).select_from(Audience)).scalar_one() == 0


def test_merchant_staff_see_and_target_only_their_own_buyers(client, world, make_operator, make_campaign):
    staff_op, staff = make_operator("merchant_staff", world.a)
    other_op, other = make_operator("merchant_staff", world.b)
    _, admin = make_operator("admin")
    everyone = {"kind": "never_used_packet"}

    mine = client.post("/admin/api/audiences", json={"name": "a", "definition": everyone}, headers=staff).get_json()
    assert (mine["merchant_id"], mine["preview_count"]) == (world.a.id, 3)  # u1, u2, u7: shop A's buyers
    foreign = client.post(
        "/admin/api/audiences", json={"name": "b", "definition": everyone, "merchant_id": world.b.id}, headers=staff
    )
    assert foreign.status_code == 404
    platform = client.post("/admin/api/audiences", json={"name": "p", "definition": everyone}, headers=admin).get_json()
    assert platform["preview_count"] == 5

    assert client.get(f"/admin/api/audiences/{mine['id']}", headers=other).status_code == 404
    assert client.get(f"/admin/api/audiences/{platform['id']}", headers=staff).status_code == 404
    assert [a["id"] for a in client.get("/admin/api/audiences", headers=staff).get_json()["items"]] == [mine["id"]]
    assert client.get("/admin/api/audiences", headers=other).get_json()["items"] == []

    shop_b_campaign = make_campaign(
        RULES,
        issuer_type="merchant",
        issuer_merchant_id=world.b.id,
        funder_type="merchant_deposit",
        funder_merchant_id=world.b.id,
        packet_amount_fen=5_00,
        budget_limit_fen=100_00,
    )
    run_on_b = client.post(
        f"/admin/api/audiences/{mine['id']}/runs",
        json={"campaign_id": shop_b_campaign.id, "holdout_bps": 0},
        headers={**staff, "Idempotency-Key": "b-1"},
    )
    assert run_on_b.status_code == 404  # not their campaign
    platform_on_b = client.post(
        f"/admin/api/audiences/{platform['id']}/runs",
        json={"campaign_id": shop_b_campaign.id, "holdout_bps": 0},
        headers={**admin, "Idempotency-Key": "b-2"},
    )
    assert (platform_on_b.status_code, platform_on_b.get_json()["error"]) == (409, "audience_scope")
    assert db.session.execute(select(func.count()).select_from(AudienceRun)).scalar_one() == 0


def test_a_small_run_is_worked_in_its_request_and_written_once(client, world, make_operator, make_campaign):
    _, admin = make_operator("admin")
    campaign = make_campaign(RULES, packet_amount_fen=5_00, budget_limit_fen=1_000_00)
    audience = client.post(
        "/admin/api/audiences", json={"name": "all", "definition": {"kind": "never_used_packet"}}, headers=admin
    ).get_json()
    sent = {"campaign_id": campaign.id, "holdout_bps": 0, "reason": "win them back"}
    headers = {**admin, "Idempotency-Key": "run-1"}

    first = client.post(f"/admin/api/audiences/{audience['id']}/runs", json=sent, headers=headers)
    replay = client.post(f"/admin/api/audiences/{audience['id']}/runs", json=sent, headers=headers)

    assert first.status_code == 201, first.get_json()
    assert replay.get_json() == first.get_json()
    run = first.get_json()
    assert (run["status"], run["members"], run["treated"], run["issued"], run["refused"]) == ("done", 5, 5, 5, 0)
    packets = db.session.execute(select(RedPacket.owner_id).where(RedPacket.source == "audience")).scalars().all()
    assert sorted(packets) == world.ids(1, 2, 3, 5, 7)
    notices = db.session.execute(select(Notice).where(Notice.event == "packet_received")).scalars().all()
    assert sorted(n.user_id for n in notices) == world.ids(1, 2, 3, 5, 7)
    for notice in notices:
        assert notice.key == f"packet:{notice.facts['packet_id']}:received"
        assert notice.facts["amount_fen"] == 5_00 and notice.facts["issuer"] == "平台"
    shown = client.get(f"/admin/api/audiences/runs/{run['id']}", headers=admin).get_json()
    assert shown["lift"]["uptake"] == {"issued": 5, "used": 0, "uptake_bps": 0}
    assert shown["lift"]["holdout"]["members"] == 0 and shown["lift"]["holdout"]["buyer_share_bps"] is None
    assert "audience.run" in db.session.execute(select(AuditLog.action)).scalars().all()


@pytest.mark.parametrize(
    ("sent", "field"),
    [
        ({"campaign_id": 1, "holdout_bps": 5001}, "holdout_bps"),
        ({"campaign_id": 1, "holdout_bps": -1}, "holdout_bps"),
        ({"campaign_id": 1, "holdout_bps": "10"}, "holdout_bps"),
        ({"holdout_bps": 10}, "campaign_id"),
        ({"campaign_id": 1, "holdout_bps": 10, "seed": "x"}, "seed"),
    ],
)
def test_bad_runs_answer_422_naming_the_field(client, world, make_operator, sent, field):
    _, admin = make_operator("admin")
    audience = client.post(
        "/admin/api/audiences", json={"name": "l", "definition": LAPSED_30}, headers=admin
    ).get_json()
    answer = client.post(f"/admin/api/audiences/{audience['id']}/runs", json=sent, headers=admin)
    assert answer.status_code == 422
    assert field in {d["field"] for d in answer.get_json()["details"]}
    assert db.session.execute(select(func.count()).select_from(AudienceRun)).scalar_one() == 0


def test_a_run_on_a_campaign_that_is_not_running_is_refused(client, world, make_operator, make_campaign):
    _, admin = make_operator("admin")
    paused = make_campaign(RULES, packet_amount_fen=5_00, status="paused")
    audience = client.post(
        "/admin/api/audiences", json={"name": "l", "definition": LAPSED_30}, headers=admin
    ).get_json()
    answer = client.post(
        f"/admin/api/audiences/{audience['id']}/runs",
        json={"campaign_id": paused.id, "holdout_bps": 0},
        headers={**admin, "Idempotency-Key": "p-1"},
    )
    assert (answer.status_code, answer.get_json()["error"]) == (409, "campaign_not_running")
    keyless = client.post(
        f"/admin/api/audiences/{audience['id']}/runs", json={"campaign_id": paused.id, "holdout_bps": 0}, headers=admin
    )
    assert (keyless.status_code, keyless.get_json()["error"]) == (422, "idempotency_key_required")
    assert client.get("/admin/api/audiences/runs/999", headers=admin).status_code == 404


# -- batches: holdout, idempotency, resumption, budgets -----------------------------------------------------


def many_users(n: int) -> list[int]:
    db.session.execute(insert(User), [{"status": "active"} for _ in range(n)])
    db.session.commit()
    return db.session.execute(select(User.id).order_by(User.id)).scalars().all()


def new_run(make_operator, campaign, definition: dict, holdout_bps: int, merchant_id=None) -> AudienceRun:
    operator, _ = make_operator("admin")
    actor = Actor(operator, "127.0.0.1")
    audience = audiences.create_audience(actor, "batch", parse_definition(definition), merchant_id)
    run = audiences.start_run(actor, audience.id, campaign.id, holdout_bps, utcnow())
    db.session.commit()
    return run


def member_flags(run_id: int) -> dict[int, bool]:
    db.session.expire_all()
    rows = db.session.execute(
        select(AudienceMember.user_id, AudienceMember.holdout).where(AudienceMember.run_id == run_id)
    )
    return dict(rows.tuples().all())


def test_the_holdout_is_close_to_its_share_and_the_same_on_every_try(app, make_operator, make_campaign):
    many_users(1000)
    campaign = make_campaign(RULES, packet_amount_fen=1_00)
    run = new_run(make_operator, campaign, {"kind": "never_used_packet"}, 2000)

    work_run(run.id, utcnow(), 100)  # choose the members …
    first = member_flags(run.id)
    db.session.rollback()  # … a crash before the commit …
    work_run(run.id, utcnow(), 100)  # … and again
    db.session.commit()
    again = member_flags(run.id)

    assert first == again and len(again) == 1000
    held = sum(again.values())
    assert 160 <= held <= 240  # 20 % of 1,000: ±4 standard deviations (σ ≈ 12.6)
    assert all(held_out(run.seed, uid, 2000) == flag for uid, flag in again.items())
    run = db.session.get(AudienceRun, run.id)
    assert (run.members, run.holdout, run.treated, run.status) == (1000, held, 1000 - held, RunStatus.ISSUING)


def packets_per_owner() -> dict[int, int]:
    db.session.expire_all()
    rows = db.session.execute(
        select(RedPacket.owner_id, func.count()).where(RedPacket.source == "audience").group_by(RedPacket.owner_id)
    )
    return dict(rows.tuples().all())


def treated_ids(run_id: int) -> list[int]:
    return sorted(uid for uid, held in member_flags(run_id).items() if not held)


def test_a_run_worked_twice_and_resumed_after_a_crash_issues_each_treated_member_once(
    app, make_operator, make_campaign, monkeypatch
):
    many_users(60)
    campaign = make_campaign(RULES, packet_amount_fen=1_00, budget_limit_fen=1_000_00)
    run = new_run(make_operator, campaign, {"kind": "never_used_packet"}, 2500)

    work_runs(chunk=10, max_steps=2)  # members, then one chunk of ten
    assert sum(packets_per_owner().values()) == 10
    real = audiences.enqueue_many
    calls = count(1)

    def crash_on_the_second_chunk(drafts):
        if next(calls) == 2:
            raise RuntimeError("the process died mid-chunk")
        return real(drafts)

    monkeypatch.setattr(audiences, "enqueue_many", crash_on_the_second_chunk)
    with pytest.raises(RuntimeError):
        work_runs(chunk=10)
    assert sum(packets_per_owner().values()) == 20  # the crashed chunk left nothing
    monkeypatch.setattr(audiences, "enqueue_many", real)
    work_runs(chunk=10)
    work_runs(chunk=10)  # a done run: nothing more

    treated = treated_ids(run.id)
    assert packets_per_owner() == dict.fromkeys(treated, 1)
    db.session.expire_all()
    run = db.session.get(AudienceRun, run.id)
    assert (run.status, run.issued, run.refused) == (RunStatus.DONE, len(treated), 0)
    notices = db.session.execute(select(Notice.user_id).where(Notice.event == "packet_received")).scalars().all()
    assert sorted(notices) == treated
    assert db.session.execute(select(func.count()).select_from(Notice)).scalar_one() == len(treated)


def test_two_workers_at_once_issue_each_treated_member_once(app, make_operator, make_campaign):
    many_users(40)
    campaign = make_campaign(RULES, packet_amount_fen=1_00, budget_limit_fen=1_000_00)
    run = new_run(make_operator, campaign, {"kind": "never_used_packet"}, 1000)

    results = together(2, lambda i: work_runs(chunk=5), app=app)

    assert not [r for r in results if isinstance(r, Exception)], results
    work_runs(chunk=5)  # whatever a skipped worker left
    assert packets_per_owner() == dict.fromkeys(treated_ids(run.id), 1)


def test_the_budget_running_out_mid_batch_is_recorded_on_each_member_refused(app, make_operator, make_campaign):
    many_users(8)
    campaign = make_campaign(RULES, packet_amount_fen=1_00, budget_limit_fen=1_000_00, max_packets=3)
    run = new_run(make_operator, campaign, {"kind": "never_used_packet"}, 0)

    work_runs(chunk=3)

    db.session.expire_all()
    done = db.session.execute(select(AudienceMember).where(AudienceMember.run_id == run.id).order_by(AudienceMember.id))
    outcomes = [(m.packet_id is not None, m.refusal) for m in done.scalars()]
    assert outcomes == [(True, None)] * 3 + [(False, "packets_exhausted")] * 5
    run = db.session.get(AudienceRun, run.id)
    assert (run.status, run.issued, run.refused) == (RunStatus.DONE, 3, 5)
    assert db.session.execute(select(func.count()).select_from(Notice)).scalar_one() == 3


def test_a_person_banned_after_the_members_were_chosen_gets_nothing(app, make_operator, make_campaign):
    ids = many_users(3)
    campaign = make_campaign(RULES, packet_amount_fen=1_00, budget_limit_fen=1_000_00)
    run = new_run(make_operator, campaign, {"kind": "never_used_packet"}, 0)
    work_runs(chunk=10, max_steps=1)
    db.session.get(User, ids[1]).status = "banned"
    db.session.commit()

    work_runs(chunk=10)

    assert sorted(packets_per_owner()) == [ids[0], ids[2]]
    refusal = db.session.execute(
        select(AudienceMember.refusal).where(AudienceMember.run_id == run.id, AudienceMember.user_id == ids[1])
    ).scalar_one()
    assert refusal == "banned"


# -- lift -------------------------------------------------------------------------------------------------


def test_lift_on_planted_orders(app, make_operator, make_campaign, make_merchant, make_product):
    ids = many_users(10)
    shop = make_merchant("shop")
    product = make_product(shop, category="tea")
    campaign = make_campaign(RULES, packet_amount_fen=1_00, budget_limit_fen=1_000_00)
    run = new_run(make_operator, campaign, {"kind": "never_used_packet"}, 5000)
    run.seed = next(  # a seed that holds out 4 to 6 of the 10 (any split works; this one is easy to read)
        s for s in (f"seed-{i}" for i in range(1000)) if 4 <= sum(held_out(s, uid, 5000) for uid in ids) <= 6
    )
    db.session.commit()
    work_runs(chunk=20)
    run = db.session.get(AudienceRun, run.id)
    start = run.started_at
    flags = member_flags(run.id)
    treated = sorted(u for u, h in flags.items() if not h)
    holdout = sorted(u for u, h in flags.items() if h)
    user = lambda uid: db.session.get(User, uid)  # noqa: E731

    first = plant_order(user(treated[0]), product, start + DAY, 100_00)
    plant_order(user(treated[0]), product, start + 2 * DAY, 50_00, refunded_fen=20_00)
    plant_order(user(treated[1]), product, start + 3 * DAY, 30_00)
    plant_order(user(treated[2]), product, start + 20 * DAY, 999_00)  # after the 14-day window
    plant_order(user(holdout[0]), product, start + DAY, 60_00)
    plant_order(user(holdout[1]), product, start - DAY, 500_00)  # before the run
    packet = db.session.execute(select(RedPacket).where(RedPacket.owner_id == treated[0])).scalar_one()
    release_reserved(campaign.id, packet.reserved_fen)  # spent (the payment path would commit it)
    packet.status, packet.order_id, packet.reserved_fen = "used", first.id, 0
    db.session.commit()

    report = run_lift(run, start + 30 * DAY, 14)

    t, h = len(treated), len(holdout)
    t_sales, h_sales = 100_00 + 30_00 + 30_00, 60_00
    assert report["treated"] == {
        "members": t,
        "buyers": 2,
        "buyer_share_bps": 2 * 10_000 // t,
        "orders": 3,
        "sales_fen": t_sales,
        "sales_per_member_fen": t_sales // t,
    }
    assert report["holdout"] == {
        "members": h,
        "buyers": 1,
        "buyer_share_bps": 10_000 // h,
        "orders": 1,
        "sales_fen": h_sales,
        "sales_per_member_fen": h_sales // h,
    }
    assert report["uptake"] == {"issued": t, "used": 1, "uptake_bps": 10_000 // t}
    gain = t_sales // t - h_sales // h
    assert report["lift"] == {
        "buyer_share_bps": 2 * 10_000 // t - 10_000 // h,
        "sales_per_member_fen": gain,
        "sales_per_member_lift_bps": gain * 10_000 // (h_sales // h),
    }
    assert report["window"]["days"] == 14


def test_uptake_counts_a_packet_spent_on_a_paid_order_that_a_refund_gave_back(
    app, make_operator, make_campaign, make_merchant, make_product
):
    """A treated member's packet spent on a paid order that was refunded is back ``issued`` (it can be spent
    again), yet it was used: the campaign reports count it (from what the order spent), so does the run's uptake.
    A packet on an order never paid is not used."""
    ids = many_users(4)
    shop = make_merchant("shop")
    product = make_product(shop, category="tea")
    campaign = make_campaign(RULES, packet_amount_fen=1_00, budget_limit_fen=1_000_00)
    run = new_run(make_operator, campaign, {"kind": "never_used_packet"}, 0)  # no holdout: all four treated
    db.session.commit()
    work_runs(chunk=20)
    run = db.session.get(AudienceRun, run.id)
    start = run.started_at
    packets = {
        p.owner_id: p for p in db.session.execute(select(RedPacket).where(RedPacket.owner_id.in_(ids))).scalars()
    }
    assert len(packets) == 4
    restored = plant_order(db.session.get(User, ids[0]), product, start + DAY, 100_00, refunded_fen=100_00)
    unpaid = plant_order(db.session.get(User, ids[1]), product, start + DAY, 50_00, status="created")
    unpaid.paid_at, unpaid.paid_fen = None, 0
    for order, owner in ((restored, ids[0]), (unpaid, ids[1])):
        db.session.add(OrderPacket(order_id=order.id, packet_id=packets[owner].id, discount_fen=1_00))
    db.session.commit()
    assert packets[ids[0]].status == "issued"  # given back by the refund

    report = run_lift(run, start + 30 * DAY, 14)

    assert report["uptake"] == {"issued": 4, "used": 1, "uptake_bps": 2500}


def test_lift_has_no_ratio_on_a_zero_base(app, make_operator, make_campaign):
    many_users(4)
    campaign = make_campaign(RULES, packet_amount_fen=1_00, budget_limit_fen=1_000_00)
    run = new_run(make_operator, campaign, {"kind": "never_used_packet"}, 5000)
    assert run_lift(run, utcnow(), 14)["lift"] is None  # members not chosen yet
    work_runs(chunk=10)
    run = db.session.get(AudienceRun, run.id)

    report = run_lift(run, run.started_at + DAY, 14)

    assert report["lift"]["sales_per_member_lift_bps"] is None  # the holdout bought nothing
    assert report["lift"]["sales_per_member_fen"] in (0, None)


def test_a_large_run_answers_pending_and_the_job_works_it_off(app, client, make_operator, make_campaign):
    from jobs.audiences import audience_runs_job
    from jobs.scheduler import JOBS

    assert audience_runs_job in dict(JOBS)
    ids = many_users(12)
    app.config["AUDIENCE_RUN_INLINE_MAX"] = 10
    app.config["AUDIENCE_RUN_CHUNK"] = 5
    _, admin = make_operator("admin")
    _, staff = make_operator("merchant_staff")
    campaign = make_campaign(RULES, packet_amount_fen=1_00, budget_limit_fen=1_000_00)
    audience = client.post(
        "/admin/api/audiences", json={"name": "all", "definition": {"kind": "never_used_packet"}}, headers=admin
    ).get_json()
    assert audience["preview_count"] == 12

    answer = client.post(
        f"/admin/api/audiences/{audience['id']}/runs",
        json={"campaign_id": campaign.id, "holdout_bps": 0},
        headers={**admin, "Idempotency-Key": "big-1"},
    )

    run = answer.get_json()
    assert (answer.status_code, run["status"], run["members"]) == (201, "pending", 0)
    pending = client.get(f"/admin/api/audiences/runs/{run['id']}", headers=admin).get_json()
    assert pending["lift"] == {"window": None, "treated": None, "holdout": None, "uptake": None, "lift": None}
    assert client.get(f"/admin/api/audiences/runs/{run['id']}", headers=staff).status_code == 404
    assert packets_per_owner() == {}

    assert audience_runs_job()["runs_done"] == 1
    done = client.get(f"/admin/api/audiences/runs/{run['id']}", headers=admin).get_json()
    assert (done["status"], done["members"], done["issued"]) == ("done", 12, 12)
    assert packets_per_owner() == dict.fromkeys(ids, 1)


def test_a_merchant_deposit_running_dry_refuses_the_rest_and_pauses_the_campaign(
    app, make_operator, make_campaign, make_merchant, make_product, make_user
):
    shop = make_merchant("shop")
    product = make_product(shop, category="tea")
    buyers = [make_user() for _ in range(3)]
    for buyer in buyers:
        plant_order(buyer, product, utcnow() - 3 * DAY, 10_00)
    campaign = make_campaign(  # each packet reserves 1 + 5 yuan: the 10-yuan deposit covers one
        RULES,
        fund_deposit_fen=10_00,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        packet_amount_fen=1_00,
        budget_limit_fen=100_00,
    )
    run = new_run(make_operator, campaign, {"kind": "never_used_packet"}, 0, merchant_id=shop.id)

    work_runs(chunk=10)

    db.session.expire_all()
    refusals = db.session.execute(
        select(AudienceMember.refusal).where(AudienceMember.run_id == run.id).order_by(AudienceMember.id)
    ).scalars()
    assert list(refusals) == [None, "deposit_exhausted", "campaign_not_running"]
    assert db.session.get(type(campaign), campaign.id).status == "paused"
    notice = db.session.execute(select(Notice)).scalar_one()
    assert (notice.user_id, notice.facts["issuer"]) == (buyers[0].id, "shop")


def test_a_campaigns_report_shows_its_audience_runs_with_their_lift(
    app, client, make_operator, make_campaign, make_merchant
):
    from tests.console_helpers import sign_in

    many_users(6)
    campaign = make_campaign(RULES, packet_amount_fen=1_00, budget_limit_fen=1_000_00)
    other = make_campaign(RULES, packet_amount_fen=1_00, budget_limit_fen=1_000_00)
    run = new_run(make_operator, campaign, {"kind": "never_used_packet"}, 5000)
    work_runs(chunk=20)
    _, headers = make_operator("support")
    runs = client.get(f"/admin/api/audiences/runs?campaign_id={campaign.id}", headers=headers).get_json()["items"]
    assert [r["id"] for r in runs] == [run.id] and runs[0]["lift"]["treated"]["members"] == runs[0]["treated"]
    assert client.get(f"/admin/api/audiences/runs?campaign_id={other.id}", headers=headers).get_json()["items"] == []
    assert client.get("/admin/api/audiences/runs?campaign_id=x", headers=headers).status_code == 422
    _, staff = make_operator("merchant_staff", make_merchant("elsewhere"))
    theirs = client.get(f"/admin/api/audiences/runs?campaign_id={campaign.id}", headers=staff)
    assert theirs.status_code == 404  # a platform campaign's runs are not a merchant's to see (as its report)
    sign_in(client, headers)
    page = client.get(f"/console/campaigns/{campaign.id}/report").get_data(as_text=True)
    assert f'data-run="{run.id}"' in page and 'id="audience-runs"' in page


@pytest.mark.parametrize("how", ["preview", "audience"])
def test_a_count_is_read_apart_and_never_holds_the_writers(app, client, world, make_operator, how):
    """Found by the reports probe: on SQLite every transaction begins IMMEDIATE, and an audience's count (seconds over a
    big shop's orders) ran in the request's, holding every payment, claim and job for as long. While the count runs a
    writer commits at once; on PostgreSQL the count is a read of its own too."""
    _, admin = make_operator("admin")
    created = client.post(
        "/admin/api/audiences",
        json={"name": "lapsed", "definition": LAPSED_30},
        headers={**admin, "Idempotency-Key": f"apart-{how}"},
    ).get_json()
    db.session.commit()
    counts = lambda sql: "count(*)" in sql.lower()  # noqa: E731
    renamed = ("UPDATE audiences SET name = 'renamed meanwhile' WHERE id = ?", (created["id"],))
    with writer_meanwhile(counts, *renamed) as wrote_meanwhile:
        if how == "preview":
            answer = client.post("/admin/api/audiences/preview", json={"definition": LAPSED_30}, headers=admin)
        else:
            answer = client.get(f"/admin/api/audiences/{created['id']}", headers=admin)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["preview_count"] == 1
    assert wrote_meanwhile == [True]


def test_read_apart_refuses_a_transaction_that_wrote(app, world):
    from models.sql import read_apart

    db.session.add(AuditLog(operator_id=None, action="x", target_type="x", target_id=None, reason="x", details={}))
    with pytest.raises(RuntimeError, match="has written"):
        read_apart(select(func.count()).select_from(AuditLog))
    db.session.rollback()
