"""Probe 18: audiences, audience runs and their measured lift (README "Audiences", docs/architecture.md §15).
Both databases."""

from __future__ import annotations

import re
from html import unescape

import pytest
from sqlalchemy import func, insert, select

from models import Alert, Audience, AudienceMember, AudienceRun, Operator, db, utcnow
from tests.console_helpers import sign_in
from tests.test_audiences import LAPSED_30, RULES, many_users


def test_the_console_audiences_list_pages_back_to_the_oldest(client, make_operator):
    """The console's audiences list read the newest 100 with no way to the older ones: a platform with 120 audiences
    showed its operators 100 and hid the first 20. It pages as the other console lists do (newer / older links)."""
    _, admin = make_operator("admin")
    creator = db.session.execute(select(Operator.id)).scalar()
    db.session.execute(
        insert(Audience),
        [
            {"name": f"aud-{i}", "definition": LAPSED_30, "created_by": creator, "created_at": utcnow()}
            for i in range(120)
        ],
    )
    db.session.commit()
    every = set(db.session.execute(select(Audience.id)).scalars())
    sign_in(client, admin)

    seen, path, pages = set(), "/console/audiences", 0
    while path and pages < 10:
        page = client.get(path)
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        table = html.split('id="audiences"', 1)[1].split("</table>", 1)[0]
        seen |= {int(i) for i in re.findall(r'href="/console/audiences/(\d+)"', table)}
        older = re.search(r'<a href="([^"]+)">下一页 Older', html)
        path, pages = (unescape(older.group(1)) if older else None), pages + 1

    assert seen == every and pages == 3  # 50, 50 and the oldest 20
    assert 'id="audience-form"' in client.get("/console/audiences?offset=100").get_data(as_text=True)


@pytest.mark.parametrize(
    ("spent", "code"),
    [
        ({"max_packets": 3, "packets_issued": 3}, "packets_exhausted"),
        ({"budget_limit_fen": 5_00}, "budget_exhausted"),  # a packet reserves 1 + 5 yuan (its face and top rebate)
    ],
    ids=["packets", "money"],
)
def test_a_run_on_a_campaign_that_cannot_issue_one_more_packet_is_refused(
    client, make_operator, make_campaign, spent, code
):
    """A run on a paused or ended campaign answers 409 and makes nothing; one on a campaign whose packets or budget
    are all spent was started all the same: a run written, every member chosen and "treated" with a refusal, an
    alert, and a lift report comparing a treated group that received nothing with its holdout (on a big audience the
    job ground through every member, each one refused). It answers 409 with the campaign's own refusal, as the first
    member's packet would, and changes nothing."""
    many_users(4)
    _, admin = make_operator("admin")
    campaign = make_campaign(RULES, packet_amount_fen=1_00, **{"budget_limit_fen": 1_000_00, **spent})
    audience = client.post(
        "/admin/api/audiences", json={"name": "all", "definition": {"kind": "never_used_packet"}}, headers=admin
    ).get_json()
    answer = client.post(
        f"/admin/api/audiences/{audience['id']}/runs",
        json={"campaign_id": campaign.id, "holdout_bps": 1000},
        headers={**admin, "Idempotency-Key": "spent-1"},
    )
    assert (answer.status_code, answer.get_json()["error"]) == (409, code)
    db.session.rollback()
    assert db.session.execute(select(func.count()).select_from(AudienceRun)).scalar_one() == 0
    assert db.session.execute(select(func.count()).select_from(AudienceMember)).scalar_one() == 0
    assert db.session.execute(select(func.count()).select_from(Alert)).scalar_one() == 0


def test_holdout_edges_and_zero_sized_groups_have_no_ratio(client, make_operator, make_campaign):
    """Held: a lone member held out (treated group empty), no holdout (holdout group empty), a holdout past 5000
    (422, nothing made), and an empty audience: every ratio on a zero base is null, the console's table shows "—"."""
    many_users(1)
    _, admin = make_operator("admin")
    campaign = make_campaign(RULES, packet_amount_fen=1_00, budget_limit_fen=1_000_00)
    audience = client.post(
        "/admin/api/audiences", json={"name": "one", "definition": {"kind": "never_used_packet"}}, headers=admin
    ).get_json()
    empty = client.post(
        "/admin/api/audiences", json={"name": "none", "definition": LAPSED_30}, headers=admin
    ).get_json()
    path = f"/admin/api/audiences/{audience['id']}/runs"

    def run(audience_path: str, holdout_bps: int, key: str):
        return client.post(
            audience_path,
            json={"campaign_id": campaign.id, "holdout_bps": holdout_bps},
            headers={**admin, "Idempotency-Key": key},
        )

    assert run(path, 10_000, "h-1").status_code == 422
    lone = run(path, 5000, "h-2").get_json()
    kept = run(path, 0, "h-3").get_json()
    nobody = run(f"/admin/api/audiences/{empty['id']}/runs", 3000, "h-4").get_json()
    for answer in (lone, kept, nobody):
        lift = client.get(f"/admin/api/audiences/runs/{answer['id']}", headers=admin).get_json()["lift"]
        treated, holdout = lift["treated"], lift["holdout"]
        assert treated["members"] + holdout["members"] == answer["members"] == (0 if answer is nobody else 1)
        for group in (treated, holdout):
            if group["members"] == 0:
                assert (group["buyer_share_bps"], group["sales_per_member_fen"]) == (None, None)
        assert set(lift["lift"].values()) == {None}
        assert lift["uptake"]["issued"] == answer["issued"]
    sign_in(client, admin)
    page = client.get(f"/console/audiences/runs/{nobody['id']}").get_data(as_text=True)
    assert 'id="uptake">0 / 0 (—)' in page
