"""The console's audience pages (web/console/audiences.py): define with a preview, run a batch with a holdout,
the run's lift table; merchant scoping and bad input, over the admin API's own views."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from models import Audience, AudienceRun, RedPacket, db
from tests.console_helpers import post
from tests.console_helpers import sign_in as client_sign_in

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 5_00}]}
LAPSED = {"kind": "never_used_packet"}


def text(answer) -> str:
    return answer.get_data(as_text=True)


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def test_define_preview_run_and_read_the_lift(client, make_operator, make_user, make_campaign):
    _, headers = make_operator("admin")
    csrf = client_sign_in(client, headers)
    people = [make_user() for _ in range(3)]
    campaign = make_campaign(RULES, packet_amount_fen=5_00, budget_limit_fen=100_00, name="Come back")

    listing = client.get("/console/audiences")
    assert listing.status_code == 200 and "人群 Audiences" in text(listing)
    checked = post(client, "/console/audiences", {"name": "all", "definition": json.dumps(LAPSED), "check": "1"}, csrf)
    assert 'id="preview"' in text(checked) and "<strong>3</strong>" in text(checked)
    assert count(Audience) == 0  # a preview saves nothing

    created = post(client, "/console/audiences", {"name": "all", "definition": json.dumps(LAPSED), "create": "1"}, csrf)
    assert created.status_code == 302
    page = client.get(created.headers["Location"])
    assert 'id="preview-count">3<' in text(page) and "Come back" in text(page)

    audience_id = db.session.execute(select(Audience.id)).scalar_one()
    ran = post(
        client,
        f"/console/audiences/{audience_id}/runs",
        {"campaign_id": str(campaign.id), "holdout_bps": "0", "form_key": "k1"},
        csrf,
    )
    assert ran.status_code == 302, text(ran)
    again = post(  # the same form sent twice acts once
        client,
        f"/console/audiences/{audience_id}/runs",
        {"campaign_id": str(campaign.id), "holdout_bps": "0", "form_key": "k1"},
        csrf,
    )
    assert again.status_code == 302 and count(AudienceRun) == 1
    assert sorted(db.session.execute(select(RedPacket.owner_id)).scalars()) == sorted(p.id for p in people)
    run_page = client.get(ran.headers["Location"])
    assert 'id="run-status">done<' in text(run_page)
    assert 'id="uptake">0 / 3 (0.00%)' in text(run_page)


def test_bad_forms_show_the_problem_and_change_nothing(client, make_operator, make_campaign):
    _, headers = make_operator("admin")
    csrf = client_sign_in(client, headers)
    broken = post(client, "/console/audiences", {"name": "x", "definition": "{not json", "create": "1"}, csrf)
    assert broken.status_code == 200 and "JSON" in text(broken)
    bad = post(
        client, "/console/audiences", {"name": "x", "definition": '{"kind": "lapsed", "days": 0}', "create": "1"}, csrf
    )
    assert "definition.lapsed.days" in text(bad)
    assert count(Audience) == 0
    ok = post(client, "/console/audiences", {"name": "x", "definition": json.dumps(LAPSED), "create": "1"}, csrf)
    audience_id = int(ok.headers["Location"].rsplit("/", 1)[1])
    campaign = make_campaign(RULES, packet_amount_fen=5_00)
    refused = post(
        client, f"/console/audiences/{audience_id}/runs", {"campaign_id": str(campaign.id), "holdout_bps": "9000"}, csrf
    )
    assert refused.status_code == 200 and "holdout_bps" in text(refused)
    assert count(AudienceRun) == 0


def test_merchant_staff_see_only_their_merchants_audiences(client, app, make_operator):
    _, admin = make_operator("admin")
    _, staff = make_operator("merchant_staff")
    created = client.post("/admin/api/audiences", json={"name": "platform", "definition": LAPSED}, headers=admin)
    client_sign_in(client, staff)
    listing = client.get("/console/audiences")
    assert "platform" not in text(listing) and "人群 Audiences" in text(listing)
    assert client.get(f"/console/audiences/{created.get_json()['id']}").status_code == 404
