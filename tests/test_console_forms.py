"""Every console form carries a key of its own: a double click, or a form sent again from the browser's
history, acts once (the API's Idempotency-Key mechanism, web/idempotency.py, keyed by the form)."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from models import AuditLog, Campaign, db
from tests.console_helpers import post
from tests.console_helpers import sign_in as client_sign_in
from tests.test_console_campaigns import RULES, form

FORM_KEY = re.compile(r'name="form_key" value="([^"]+)"')


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def test_every_form_has_its_own_key(client, make_operator, make_campaign):
    _, headers = make_operator("admin")
    client_sign_in(client, headers)
    campaign = make_campaign(RULES, status="draft", budget_limit_fen=1_000_00)
    html = client.get(f"/console/campaigns/{campaign.id}").get_data(as_text=True)
    keys = FORM_KEY.findall(html)
    assert len(keys) >= 3 and len(set(keys)) == len(keys)


def test_a_create_form_sent_twice_creates_one_campaign(client, make_operator):
    _, headers = make_operator("admin")
    csrf = client_sign_in(client, headers)
    data = form(form_key="k-create-1")
    first = post(client, "/console/campaigns/new", data, csrf)
    again = post(client, "/console/campaigns/new", data, csrf)
    assert first.status_code == again.status_code == 302
    assert first.headers["Location"] == again.headers["Location"]  # the same campaign's page
    assert count(Campaign) == 1
    assert db.session.execute(select(func.count()).where(AuditLog.action == "campaign.create")).scalar_one() == 1
    other = post(client, "/console/campaigns/new", form(form_key="k-create-2", name="Another"), csrf)
    assert other.status_code == 302 and count(Campaign) == 2


def test_a_transition_sent_twice_acts_once(client, make_operator, make_campaign):
    _, headers = make_operator("admin")
    csrf = client_sign_in(client, headers)
    campaign = make_campaign(RULES, status="draft", budget_limit_fen=1_000_00)
    data = {"reason": "launch day", "form_key": "k-activate"}
    for _ in range(2):
        assert post(client, f"/console/campaigns/{campaign.id}/activate", data, csrf).status_code == 302
    db.session.rollback()
    assert db.session.get(Campaign, campaign.id).status == "active"
    actions = db.session.execute(select(AuditLog.action).where(AuditLog.target_id == str(campaign.id))).scalars()
    assert [a for a in actions if a.endswith("activate")] == ["campaign.activate"]
