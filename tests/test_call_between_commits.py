"""The one shape of a WeChat call: prepare + commit, call with no transaction, record + commit."""

import pytest
import responses
from sqlalchemy import select

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
