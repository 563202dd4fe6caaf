"""The one shape of a WeChat call: prepare + commit, call with no transaction, record + commit."""

import pytest
import responses
from sqlalchemy import select

from jobs.payouts import payout_rails
from models import Merchant, call_between_commits, db, transaction_open
from wechat.http import CallInsideTransaction, WeChatSession

URL = "https://api.mch.weixin.qq.com/v3/ping"


def test_session_refuses_a_call_while_a_transaction_is_open(app):
    session = WeChatSession(transaction_open)
    with responses.RequestsMock() as mocked:
        mocked.add(responses.GET, URL, json={"ok": True})
        db.session.execute(select(Merchant)).all()  # autobegins a transaction
        assert transaction_open()
        with pytest.raises(CallInsideTransaction):
            session.get(URL)
        assert len(mocked.calls) == 0  # refused before anything was sent
        db.session.commit()
        assert not transaction_open()
        assert session.get(URL).json() == {"ok": True}


def test_call_between_commits_commits_before_and_after_the_call(app):
    session = WeChatSession(transaction_open)
    seen = {}

    def prepare():
        db.session.add(Merchant(name="before the call"))
        return "prepared"

    def call(prepared):
        seen["open_during_call"] = transaction_open()
        return session.get(URL).json()

    def record(prepared, answer):
        db.session.add(Merchant(name=f"after: {prepared} {answer['ok']}"))
        return "recorded"

    with responses.RequestsMock() as mocked:
        mocked.add(responses.GET, URL, json={"ok": True})
        assert call_between_commits(prepare, call, record) == "recorded"
    assert seen == {"open_during_call": False}
    assert not transaction_open()
    names = set(db.session.execute(select(Merchant.name)).scalars())
    assert {"before the call", "after: prepared True"} <= names


def test_a_failed_call_keeps_what_prepare_committed(app):
    def call(_):
        raise TimeoutError("no answer")

    with pytest.raises(TimeoutError):
        call_between_commits(lambda: db.session.add(Merchant(name="fixed before")), call, lambda p, a: None)
    db.session.rollback()
    assert db.session.execute(select(Merchant).where(Merchant.name == "fixed before")).scalar_one()


def test_a_failed_record_rolls_back_only_its_own_transaction(app):
    def record(_, __):
        db.session.add(Merchant(name="half recorded"))
        raise ValueError("bad answer")

    with pytest.raises(ValueError):
        call_between_commits(lambda: db.session.add(Merchant(name="prepared")), lambda _: "answer", record)
    names = set(db.session.execute(select(Merchant.name)).scalars())
    assert "prepared" in names and "half recorded" not in names


# -- the app's own clients: the guard is on ------------------------------------------------


def test_the_apps_shared_wechat_session_refuses_a_call_while_the_db_session_holds_a_transaction(app):
    # given: the app's one WeChat session, shared by every client the app built (the v2 red packets too)
    wx = app.extensions["wechat"]
    session = wx.session
    assert wx.pay.session is session and wx.mini_program.session is session
    assert payout_rails(app)["cash_red_packet"].client.session is session
    with responses.RequestsMock() as mocked:
        mocked.add(responses.GET, URL, json={"ok": True})
        # when: a call is made while db.session holds a transaction
        db.session.execute(select(Merchant)).all()
        assert transaction_open()
        with pytest.raises(CallInsideTransaction):
            session.get(URL)
        with pytest.raises(CallInsideTransaction):  # a client's call (to the in-process simulator) too
            wx.pay.query_order("T1")
        # then: nothing was sent; once committed, the same call goes out
        assert len(mocked.calls) == 0
        db.session.commit()
        assert session.get(URL).json() == {"ok": True}
        assert len(mocked.calls) == 1


# -- live mode: the same guard on the session that talks to the real WeChat -----------------


@pytest.fixture
def live_app(tmp_path, monkeypatch):
    """A live-mode app (real key files, made for this test), on its own SQLite file; nothing is sent anywhere."""
    from app import create_app
    from config import SETTINGS
    from wechat.crypto import private_key_pem, public_key_pem
    from wechat.sim.keys import generate_rsa_key

    (tmp_path / "apiclient_key.pem").write_text(private_key_pem(generate_rsa_key()))
    (tmp_path / "pub_key.pem").write_text(public_key_pem(generate_rsa_key().public_key()))
    for setting in SETTINGS:  # only what is set here counts
        monkeypatch.delenv(setting.name, raising=False)
    live = {
        "WECHAT_MODE": "live",
        "SECRET_KEY": "Yq3v9-Tz8LkP2mW7xR4nB6cJ1hF5dS0gA_eU",
        "DATA_ENCRYPTION_KEY": "p2v0L5dTgd0l2Pz7o7m4k0o3QyYw5cYpXq3kJ0x8Q1A=",
        "WECHAT_APPID": "wx1234567890abcdef",
        "WECHAT_APP_SECRET": "app-secret",
        "WECHAT_MCHID": "1900000001",
        "WECHAT_MCH_PRIVATE_KEY_PATH": str(tmp_path / "apiclient_key.pem"),
        "WECHAT_MCH_CERT_SERIAL": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
        "WECHAT_APIV3_KEY": "0123456789abcdef0123456789abcdef",
        "WECHAT_PAY_PUBLIC_KEY_PATH": str(tmp_path / "pub_key.pem"),
        "WECHAT_PAY_PUBLIC_KEY_ID": "PUB_KEY_ID_0114232134912410000000000000",
        "PUBLIC_BASE_URL": "https://rebate.example.com",
        "APP_PROCESSES": "1",  # one process: no Redis needed
        "DATABASE_URL": f"sqlite:///{tmp_path / 'live.db'}",
    }
    for name, value in live.items():
        monkeypatch.setenv(name, value)
    app = create_app({"TESTING": True, "LOG_LEVEL": "WARNING"})
    with app.app_context():
        db.create_all()
        yield app
        db.session.remove()
        db.engine.dispose()


def test_in_live_mode_the_shared_wechat_session_refuses_a_call_inside_a_transaction(live_app):
    # given: a live app, its clients on the one guarded session, no simulator anywhere
    wx = live_app.extensions["wechat"]
    assert live_app.config["WECHAT_MODE"] == "live" and wx.simulator is None
    session = wx.session
    assert wx.pay.session is session and wx.mini_program.session is session
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        mocked.add(responses.GET, URL, json={"ok": True})
        mocked.add(responses.GET, "https://api.mch.weixin.qq.com/v3/pay/transactions/out-trade-no/T1", json={})
        # when: calls are made while db.session holds a transaction
        db.session.execute(select(Merchant)).all()
        assert transaction_open()
        with pytest.raises(CallInsideTransaction):
            session.get(URL)
        with pytest.raises(CallInsideTransaction):  # a client's signed call to WeChat Pay too
            wx.pay.query_order("T1")
        with pytest.raises(CallInsideTransaction):  # and jscode2session
            wx.mini_program.code_to_session("0a1b2c")
        # then: nothing was sent; once committed, the same call goes out
        assert len(mocked.calls) == 0
        db.session.commit()
        assert not transaction_open()
        assert session.get(URL).json() == {"ok": True}
        assert len(mocked.calls) == 1
