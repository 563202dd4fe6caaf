"""APIv3 key rotation through the app: a callback encrypted with the previous key is accepted only
during the configured overlap; the backup WeChat Pay host is wired from the settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from models import Order, db
from tests.test_wechat_callbacks import (  # noqa: F401 - fixtures
    NOTIFY,
    make_order,
    no_network,
    simulator,
    table_counts,
    transaction_resource,
)
from wechat.sim.state import SimulatorState

OLD_KEY = "old-apiv3-key-0123456789abcdefgh"  # 32 bytes


def _sent_with_old_key(app, order):
    sim = simulator(app)
    before = SimulatorState(mchid=sim.mchid, apiv3_key=OLD_KEY, keys=sim.keys)
    return before.build_notification("TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction")


class TestDuringTheOverlap:
    @pytest.fixture
    def app_settings(self, app_settings):
        until = datetime.now(UTC) + timedelta(hours=25)
        return {**app_settings, "WECHAT_APIV3_KEY_PREVIOUS": OLD_KEY, "WECHAT_APIV3_KEY_PREVIOUS_UNTIL": until}

    def test_a_callback_encrypted_with_the_previous_key_is_applied(self, app, client, make_order, no_network):  # noqa: F811
        order = make_order()
        headers, body = _sent_with_old_key(app, order)
        assert client.post(NOTIFY, data=body, headers=headers).status_code == 204
        assert db.session.get(Order, order.id).status == "paid"

    def test_the_current_key_still_works(self, app, client, make_order, no_network):  # noqa: F811
        order = make_order()
        headers, body = simulator(app).build_notification(
            "TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction"
        )
        assert client.post(NOTIFY, data=body, headers=headers).status_code == 204
        assert db.session.get(Order, order.id).status == "paid"


class TestAfterTheOverlap:
    @pytest.fixture
    def app_settings(self, app_settings):
        until = datetime.now(UTC) - timedelta(seconds=1)
        return {**app_settings, "WECHAT_APIV3_KEY_PREVIOUS": OLD_KEY, "WECHAT_APIV3_KEY_PREVIOUS_UNTIL": until}

    def test_the_previous_key_is_refused(self, app, client, make_order, no_network):  # noqa: F811
        order = make_order()
        headers, body = _sent_with_old_key(app, order)
        before = table_counts()
        response = client.post(NOTIFY, data=body, headers=headers)
        assert (response.status_code, response.json) == (401, {"code": "FAIL", "message": "DECRYPT_FAILED"})
        assert table_counts() == before and db.session.get(Order, order.id).status == "created"


def test_without_a_previous_key_an_old_callback_is_refused(app, client, make_order, no_network):  # noqa: F811
    order = make_order()
    headers, body = _sent_with_old_key(app, order)
    assert client.post(NOTIFY, data=body, headers=headers).status_code == 401


class TestBackupHostSetting:
    @pytest.fixture
    def app_settings(self, app_settings):
        return {**app_settings, "WECHAT_PAY_API_BACKUP_BASE": "https://api2.wxpay.test/"}

    def test_the_pay_client_gets_the_backup_host(self, app):
        config = app.extensions["wechat"].pay.config
        assert config.bases == [app.config["WECHAT_PAY_API_BASE"], "https://api2.wxpay.test"]


def test_no_backup_host_by_default(app):
    assert app.extensions["wechat"].pay.config.bases == [app.config["WECHAT_PAY_API_BASE"]]
