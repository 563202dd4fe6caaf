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
