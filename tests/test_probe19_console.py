"""Probe 19: the operations console's filters, sessions and forms (web/console/*) as a demanding operator and an
outside attacker would use them."""

from __future__ import annotations

import pytest

from models import AuditLog, db
from tests.console_helpers import sign_in as client_sign_in


def text(answer) -> str:
    return answer.get_data(as_text=True)


# --- a filter's number is read as the API reads it ------------------------------------------------


@pytest.mark.parametrize("written", ["1_0", "1.0", "+10"])
def test_an_audit_filter_number_the_api_refuses_is_refused_by_the_page_too(client, make_operator, written):
    """The console runs the admin API's views with "the same query models (422 with every problem)"; the API refuses
    a whole-number filter not written in digits (``1_0``, ``1.0``, ``+1``: web.api.validate_query), but the page's
    query went through the bare model, which read ``operator_id=1_0`` as operator 10 and listed their lines under a
    filter nobody typed."""
    _, headers = make_operator("admin")
    db.session.add(AuditLog(operator_id=None, action="probe.line", target_type="probe", target_id="x", details={}))
    db.session.commit()
    api = client.get("/admin/api/audit-log", query_string={"operator_id": written}, headers=headers)
    assert api.status_code == 422, api.json
    browser = client.application.test_client()
    client_sign_in(browser, headers)
    page = browser.get("/console/audit", query_string={"operator_id": written})
    assert page.status_code == 422, (page.status_code, text(page)[:300])
    assert "operator_id" in text(page)


def test_the_challenges_filter_of_a_number_not_in_digits_is_the_pages_422(client, make_operator):
    _, headers = make_operator("admin")
    client_sign_in(client, headers)
    page = client.get("/console/challenges", query_string={"user_id": "1_0"})
    assert page.status_code == 422, (page.status_code, text(page)[:300])
    assert "user_id" in text(page)
    assert client.get("/console/challenges", query_string={"user_id": "10"}).status_code == 200


def test_filters_written_in_digits_still_work(client, make_operator, make_merchant):
    _, headers = make_operator("admin")
    shop = make_merchant()
    client_sign_in(client, headers)
    assert client.get("/console/audit", query_string={"operator_id": "1"}).status_code == 200
    assert client.get("/console/profit-shares", query_string={"merchant_id": str(shop.id)}).status_code == 200
    assert client.get("/console/reconciliation", query_string={"run_id": "3"}).status_code == 200
    assert client.get("/console/operators").status_code == 200  # a query with a flag (unconfirmed) and numbers
    assert client.get("/console/lookup", query_string={"kind": "user", "id": "999"}).status_code == 404
