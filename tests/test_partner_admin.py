"""The admin API for a merchant's WeChat Pay sub-merchant identity (service-provider fund flow): platform
admins only, audited, validated (422 naming the field), one number per merchant (409, also under a race)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from models import AuditLog, db
from tests.test_partner_flow import SUB_MCHID, admin, set_sub_mchid  # noqa: F401 - fixture


def test_an_admin_sets_a_merchants_sub_mchid_audited(client, admin, make_merchant):
    shop = make_merchant()
    response = set_sub_mchid(client, admin, shop.id, sub_appid="wxabcdef0123456789")
    assert response.status_code == 200, response.json
    assert response.json == {"merchant_id": shop.id, "sub_mchid": SUB_MCHID, "sub_appid": "wxabcdef0123456789"}
    [line] = db.session.execute(select(AuditLog).where(AuditLog.action == "merchant.wechat_pay")).scalars()
    assert line.reason == "onboarded as a sub-merchant" and line.details["before"]["sub_mchid"] is None
    assert client.get(f"/admin/api/merchants/{shop.id}/wechat-pay", headers=admin).json["sub_mchid"] == SUB_MCHID


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sub_mchid": "1234567"}, "sub_mchid"),
        ({"sub_mchid": "19000001O9"}, "sub_mchid"),
        ({"sub_mchid": 1900000109}, "sub_mchid"),
        ({"sub_appid": "wxd678efh567hg6999"}, "sub_appid"),
        ({"reason": ""}, "reason"),
    ],
)
def test_bad_sub_merchant_ids_are_422_naming_the_field(client, admin, make_merchant, body, field):
    shop = make_merchant()
    response = set_sub_mchid(client, admin, shop.id, **body)
    assert response.status_code == 422
    assert field in str(response.json)
    db.session.rollback()
    assert db.session.get(type(shop), shop.id).sub_mchid is None


def test_a_sub_mchid_of_another_merchant_is_409_and_others_may_not_set_it(client, admin, make_merchant, make_operator):
    first, second = make_merchant(), make_merchant()
    assert set_sub_mchid(client, admin, first.id).status_code == 200
    taken = set_sub_mchid(client, admin, second.id)
    assert (taken.status_code, taken.json["error"]) == (409, "sub_mchid_taken")
    for role in ("finance", "support", "merchant_staff"):
        headers = make_operator(role, merchant=second)[1]
        assert set_sub_mchid(client, headers, second.id, sub_mchid="1900000110").status_code == 403
    assert set_sub_mchid(client, admin, 999_999).status_code == 404
    db.session.rollback()
    assert db.session.get(type(second), second.id).sub_mchid is None


def test_two_admins_giving_one_sub_mchid_to_two_merchants_at_once_one_wins(app, admin, make_merchant):
    # given: two merchants, two concurrent requests for the same sub-merchant number
    from models import Merchant
    from tests.concurrency import together

    shops = [make_merchant().id, make_merchant().id]

    def put(i: int) -> tuple[int, str | None]:
        body = {"sub_mchid": SUB_MCHID, "reason": "race"}
        response = app.test_client().put(f"/admin/api/merchants/{shops[i]}/wechat-pay", json=body, headers=admin)
        return response.status_code, (response.get_json(silent=True) or {}).get("error")

    # when
    results = together(2, put, app=app)
    # then: one 200, one 409 sub_mchid_taken; the number is held once
    assert sorted(results) == [(200, None), (409, "sub_mchid_taken")], results
    held = db.session.execute(select(Merchant.id).where(Merchant.sub_mchid == SUB_MCHID)).scalars().all()
    assert len(held) == 1
