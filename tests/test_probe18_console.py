"""Probe 18: the operations console's sign-in, roles, CSRF and form keys (web/console/*, web/auth.py,
web/idempotency.py) as a demanding operator and an outside attacker would use them."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from models import AuditLog, MerchantFeeRate, db
from tests.console_helpers import post
from tests.console_helpers import sign_in as client_sign_in

FORM_KEY = re.compile(r'name="form_key" value="([^"]+)"')


def text(answer) -> str:
    return answer.get_data(as_text=True)


def test_a_form_key_sent_again_with_other_values_is_refused_not_answered_as_saved(client, make_operator, make_merchant):
    """A console form's key stands for one form as it was sent (docs/architecture.md §4: same key, other body → 422).
    The fingerprint was taken of the request body after the form had been parsed from it, which Werkzeug leaves
    empty: every form sent with a key fingerprinted alike, so the same form sent again with another rate (changed
    before the page moved on) answered the first one's stored answer: "Fee rate saved" for a rate never saved."""
    _, headers = make_operator("admin")
    csrf = client_sign_in(client, headers)
    shop = make_merchant("tea shop")
    page = text(client.get("/console/merchant-settings", query_string={"merchant_id": str(shop.id)}))
    key = FORM_KEY.findall(page)[0]  # the fee form's
    url = f"/console/merchants/{shop.id}/fee-rate"
    first = post(client, url, {"rate_bps": "100", "reason": "first deal", "form_key": key}, csrf)
    assert first.status_code == 302, text(first)
    client.get(first.headers["Location"])  # (its flash shown)
    again = post(client, url, {"rate_bps": "200", "reason": "better deal", "form_key": key}, csrf)
    assert again.status_code == 422, (again.status_code, text(again)[:400])
    assert "different request" in text(again) and "保存 Fee rate saved" not in text(again)
    db.session.rollback()
    rates = db.session.execute(select(MerchantFeeRate.rate_bps).where(MerchantFeeRate.merchant_id == shop.id))
    assert list(rates.scalars()) == [100]
    same = post(client, url, {"rate_bps": "100", "reason": "first deal", "form_key": key}, csrf)  # a double click
    assert same.status_code == 302
    db.session.rollback()
    audited = select(func.count()).where(AuditLog.action.like("%fee_rate%"), AuditLog.target_id == str(shop.id))
    assert db.session.execute(audited).scalar_one() == 1
