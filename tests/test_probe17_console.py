"""Probe 17: the operations console (web/console/*) as a curious operator and an outside attacker."""

from __future__ import annotations

import pytest

from tests.console_helpers import sign_in as client_sign_in


@pytest.fixture
def admin(client, make_operator):
    _, headers = make_operator("admin")
    return client_sign_in(client, headers)


def test_the_overview_of_a_merchant_that_does_not_exist_is_a_404_not_a_page_of_zeros(client, admin, make_merchant):
    """A platform operator typing a merchant's number into the overview (``?merchant_id=``) saw "Overview · merchant
    #N" with every figure zero for a merchant that does not exist: the same as a real merchant that sold nothing.
    The merchant's statement and settings pages answer such a number 404, and the README says a ``merchant_id`` that is
    not one answers 404 (a word was the API's 422 here)."""
    shop = make_merchant("tea shop")
    assert client.get("/console/overview", query_string={"merchant_id": str(shop.id)}).status_code == 200
    for value in (str(shop.id + 1000), "2147483647", "abc", "0", "-1", "9" * 5000):
        answer = client.get("/console/overview", query_string={"merchant_id": value})
        assert answer.status_code == 404, (value[:12], answer.status_code)
        assert f"merchant #{value}" not in answer.get_data(as_text=True)
    assert client.get("/console/overview", query_string={"merchant_id": ""}).status_code == 200  # platform-wide


def test_the_overview_api_of_a_merchant_that_does_not_exist_is_a_404_not_a_report_of_zeros(
    client, make_operator, make_merchant
):
    shop, other = make_merchant("tea shop"), make_merchant("noodles")
    _, admin = make_operator("admin")
    _, staff = make_operator("merchant_staff", shop)
    overview = "/admin/api/reports/overview"
    month = {"from": "2026-11-01", "to": "2026-11-30"}
    assert client.get(overview, query_string={**month, "merchant_id": shop.id}, headers=admin).status_code == 200
    missing = client.get(overview, query_string={**month, "merchant_id": other.id + 1000}, headers=admin)
    assert (missing.status_code, missing.get_json()["error"]) == (404, "not_found")
    assert client.get(overview, query_string={**month, "merchant_id": other.id}, headers=staff).status_code == 404
    assert client.get(overview, query_string={**month, "merchant_id": shop.id}, headers=staff).status_code == 200
    assert client.get(overview, query_string=month, headers=staff).status_code == 200  # their own, unasked
