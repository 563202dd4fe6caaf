"""WeChat message push end to end in the app: ``/wechat/oa/push`` and ``/wechat/mp/push`` record each push once
and answer ``success``; the messages job (``jobs.messages.apply_messages``) applies them once, after the answer.

Pushes are built exactly as WeChat builds them (``wechat.push.build_push``: wechatpy's ``encrypt_message``
under the app's own token and EncodingAESKey, safe mode); WeChat's user-info API is ``responses``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from datetime import timedelta

import pytest
import responses
from flask import current_app
from sqlalchemy import func, select

from jobs import messages as worker
from jobs.messages import apply_messages
from ledger import account, balance
from models import (
    AccountKind,
    Alert,
    InboundMessage,
    LedgerEntry,
    OaFollower,
    Payout,
    User,
    UserIdentity,
    db,
    utcnow,
)
from payouts.card_rail import card_key
from payouts.card_rail import outer_str as outer_str_for
from payouts.operations import settle_redeemed_card
from tests.concurrency import together
from tests.test_card_codes import fund_card_payout, offered
from web.push import push_settings
from wechat.push import build_handshake, build_push, new_aes_key

API = "https://api.weixin.test"
CODE = "110201201245"


def push(client, source: str, fields: dict, *, json_format: bool = False, args: dict | None = None, body=None):
    settings = dataclasses.replace(push_settings(source), json_format=json_format)
    built = build_push(settings, fields)
    return client.post(f"/wechat/{source}/push", query_string=args or built.args, data=body or built.body)


def tagged(external_no: str) -> str:
    return outer_str_for(external_no, card_key(current_app.config["SECRET_KEY"]))


def card_event(event: str, outer_str: str | None, at: int = 1_700_000_000, signed: bool = True, **extra) -> dict:
    fields = {
        "ToUserName": "gh_oa",
        "FromUserName": "oOA-alice",
        "CreateTime": at,
        "MsgType": "event",
        "Event": event,
        "CardId": "pCARD0001",
        "UserCardCode": CODE,
        **extra,
    }
    if outer_str is not None:  # our number with our tag, as the cardExt carried it (signed=False: as given)
        fields["OuterStr"] = tagged(outer_str) if signed else outer_str
    return fields


def rows() -> list[InboundMessage]:
    db.session.expire_all()
    return db.session.execute(select(InboundMessage).order_by(InboundMessage.id)).scalars().all()


def paid_entries(payout_id: int) -> int:
    stmt = (
        select(func.count()).select_from(LedgerEntry).where(LedgerEntry.idempotency_key == f"payout:{payout_id}:paid")
    )
    return db.session.execute(stmt).scalar_one()


def settlement() -> int:
    return balance(account(AccountKind.WECHAT_SETTLEMENT))


# -- the endpoints ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["oa", "mp"])
def test_the_url_check_echoes_echostr_only_when_signed_with_the_token(client, source):
    args = build_handshake(push_settings(source).token, "echo-4711")
    answer = client.get(f"/wechat/{source}/push", query_string=args)
    assert (answer.status_code, answer.text) == (200, "echo-4711")
    forged = client.get(f"/wechat/{source}/push", query_string=build_handshake("notTheToken", "echo-4711"))
    assert forged.status_code == 403 and "echo-4711" not in forged.text


def test_a_push_retried_three_times_is_recorded_once_and_answered_success_each_time(client):
    fields = card_event("user_get_card", "CA000000000001")
    answers = [push(client, "oa", fields) for _ in range(3)]
    assert [(a.status_code, a.text, a.mimetype) for a in answers] == [(200, "success", "text/plain")] * 3
    [row] = rows()
    assert (row.source, row.msg_type, row.event, row.openid, row.status) == (
        "oa",
        "event",
        "user_get_card",
        "oOA-alice",
        "queued",
    )
    assert row.payload["fields"]["OuterStr"] == tagged("CA000000000001")
    assert row.dedupe_key == f"oa:event:oOA-alice:1700000000:user_get_card:{CODE}"


def test_text_messages_are_deduplicated_by_msgid_and_mp_json_is_accepted(client):
    text = {"ToUserName": "gh_mp", "FromUserName": "oMP-bob", "CreateTime": 1, "MsgType": "text", "Content": "hi"}
    for n in (1, 1, 2):
        assert push(client, "mp", {**text, "MsgId": n}, json_format=True).text == "success"
    assert [r.dedupe_key for r in rows()] == ["mp:msg:1", "mp:msg:2"]


def test_bad_signature_hostile_xml_and_oversized_bodies_write_nothing(client):
    fields = card_event("user_get_card", "CA000000000001")
    built = build_push(push_settings("oa"), fields)
    forged = client.post("/wechat/oa/push", query_string={**built.args, "msg_signature": "0" * 40}, data=built.body)
    assert forged.status_code == 403
    unsigned = client.post("/wechat/oa/push", data=built.body)
    assert unsigned.status_code == 403
    bomb = b'<!DOCTYPE xml [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><xml><Encrypt>&b;</Encrypt></xml>'
    hostile = client.post("/wechat/oa/push", query_string=built.args, data=bomb)
    assert (hostile.status_code, hostile.text) == (400, "HOSTILE_XML")
    garbage = client.post("/wechat/oa/push", query_string=built.args, data=b"<xml><Encrypt>")
    assert garbage.status_code == 400
    huge = client.post("/wechat/oa/push", query_string=built.args, data=b"x" * 70_000)
    assert huge.status_code == 413
    assert rows() == []


def test_a_push_url_whose_token_is_not_configured_answers_404(app, client):
    app.config["WECHAT_MP_PUSH_TOKEN"] = None
    assert client.get("/wechat/mp/push", query_string=build_handshake("x", "e")).status_code == 404
    assert client.post("/wechat/mp/push", data=b"{}").status_code == 404


def test_the_previous_encoding_aes_key_still_decrypts_during_rotation(app, client):
    old = push_settings("oa")
    # the key was changed in the admin; WeChat still encrypts with the old one for a while
    app.config.update(WECHAT_OA_ENCODING_AES_KEY=new_aes_key(), WECHAT_OA_ENCODING_AES_KEY_PREVIOUS=old.aes_key)
    built = build_push(old, card_event("user_get_card", "CA1"))
    assert client.post("/wechat/oa/push", query_string=built.args, data=built.body).text == "success"
    app.config["WECHAT_OA_ENCODING_AES_KEY_PREVIOUS"] = None
    built = build_push(old, card_event("user_get_card", "CA2", at=1_700_000_001))
    assert client.post("/wechat/oa/push", query_string=built.args, data=built.body).status_code == 400
    assert len(rows()) == 1


# -- card payouts ------------------------------------------------------------------------------------------------


def test_user_get_card_delivers_the_card_payout_once_and_moves_the_ledger_once(app, client, make_user):
    payout = offered(fund_card_payout(make_user()))
    before = settlement()
    for _ in range(3):
        push(client, "oa", card_event("user_get_card", payout.external_no))
    assert apply_messages() == {"done": 1}
    assert apply_messages() == {}
    db.session.expire_all()
    payout = db.session.get(Payout, payout.id)
    assert (payout.status, payout.wechat_ref) == ("succeeded", CODE)
    assert settlement() - before == payout.amount_fen and paid_entries(payout.id) == 1
    assert [r.status for r in rows()] == ["done"]
    # the counter's redemption (the fallback) afterwards records the redemption and moves nothing
    assert settle_redeemed_card(CODE, utcnow()) is None
    db.session.commit()
    assert paid_entries(payout.id) == 1 and db.session.get(Payout, payout.id).card_consumed_at is not None


def test_consume_and_delete_events_are_recorded_on_the_payout_and_move_nothing(app, client, make_user):
    payout = offered(fund_card_payout(make_user()))
    push(client, "oa", card_event("user_get_card", payout.external_no))
    push(client, "oa", card_event("user_consume_card", payout.external_no, at=1_700_000_100, ConsumeSource="FROM_API"))
    push(client, "oa", card_event("user_del_card", None, at=1_700_000_200))
    assert apply_messages() == {"done": 3}
    db.session.expire_all()
    payout = db.session.get(Payout, payout.id)
    assert payout.status == "succeeded" and payout.card_consumed_at and payout.card_deleted_at
    assert paid_entries(payout.id) == 1


def test_a_consume_event_whose_get_event_was_lost_still_delivers_once(app, client, make_user):
    payout = offered(fund_card_payout(make_user()))
    push(client, "oa", card_event("user_consume_card", payout.external_no))
    assert apply_messages() == {"done": 1}
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).status == "succeeded" and paid_entries(payout.id) == 1


def test_events_for_a_payout_we_do_not_know_are_ignored_and_change_nothing(app, client, make_user):
    payout = offered(fund_card_payout(make_user()))
    before = settlement()
    push(client, "oa", card_event("user_get_card", "CA999999999999", UserCardCode="999"))
    push(client, "oa", card_event("user_get_card", payout.external_no, at=5, IsGiveByFriend=1))
    assert apply_messages() == {"ignored": 2}
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).status == "waiting_user_confirm" and settlement() == before


def test_a_card_added_after_its_payout_was_cancelled_alerts_and_moves_nothing(app, client, make_user):
    from payouts.transitions import mark_returned

    payout = offered(fund_card_payout(make_user()))
    mark_returned(payout, "cancelled", utcnow(), "cancelled by an operator")
    db.session.commit()
    push(client, "oa", card_event("user_get_card", payout.external_no))
    assert apply_messages() == {"done": 1}
    assert db.session.execute(select(Alert.kind)).scalars().all() == ["card_added_late"]
    assert paid_entries(payout.id) == 0


# -- the worker: crash, retries, races ---------------------------------------------------------------------------


def test_a_worker_that_dies_after_claiming_leaves_the_row_to_be_applied_once_later(app, client, make_user):
    payout = offered(fund_card_payout(make_user()))
    push(client, "oa", card_event("user_get_card", payout.external_no))
    # the process answered WeChat and died before applying: the row is still queued
    assert [r.status for r in rows()] == ["queued"]
    # a worker claims it and dies before applying it (its claim is committed, its lease runs)
    claimed = worker.claim(utcnow())
    db.session.commit()
    assert [c.id for c in claimed] == [rows()[0].id]
    assert apply_messages() == {}  # leased to the dead worker
    later = utcnow() + worker.LEASE + timedelta(seconds=1)
    assert apply_messages(clock=lambda: later) == {"done": 1}
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).status == "succeeded" and paid_entries(payout.id) == 1
    assert rows()[0].attempts == 2


def test_two_workers_at_once_apply_a_message_once(app, client, make_user):
    payouts = [offered(fund_card_payout(make_user(), key=f"k{n}")) for n in range(6)]
    for n, payout in enumerate(payouts):
        event = card_event("user_get_card", payout.external_no, at=1_700_000_000 + n, UserCardCode=f"code-{n}")
        push(client, "oa", event)
        push(client, "oa", event)  # WeChat's retry
    results = together(2, lambda _: apply_messages(), app=app)
    assert sum((r for r in results), start=type(results[0])())["done"] == 6, results
    db.session.expire_all()
    assert {db.session.get(Payout, p.id).status for p in payouts} == {"succeeded"}
    assert [paid_entries(p.id) for p in payouts] == [1] * 6


def test_a_failing_message_is_retried_with_backoff_then_failed_with_an_alert(app, client, monkeypatch):
    app.config["MESSAGES_MAX_ATTEMPTS"] = 2
    calls = []

    def broken(message, now):
        calls.append(message.id)
        raise RuntimeError("the challenge parser broke")

    monkeypatch.setattr(worker, "TEXT_HANDLERS", [broken])
    text = {"ToUserName": "gh", "FromUserName": "oOA-c", "CreateTime": 1, "MsgType": "text", "Content": "x"}
    push(client, "oa", {**text, "MsgId": 7})
    assert apply_messages() == {"queued": 1}
    [row] = rows()
    assert row.status == "queued" and row.next_attempt_at > utcnow() and "broke" in row.last_error
    assert apply_messages() == {}  # not due yet
    later = utcnow() + timedelta(hours=2)
    assert apply_messages(clock=lambda: later) == {"failed": 1}
    assert rows()[0].status == "failed" and len(calls) == 2
    assert db.session.execute(select(Alert.kind)).scalars().all() == ["message_failed"]


def test_text_messages_go_to_the_registered_handlers_else_are_ignored(app, client, monkeypatch):
    seen = []
    monkeypatch.setattr(worker, "TEXT_HANDLERS", [lambda m, now: seen.append(m.payload["fields"]["Content"]) or True])
    text = {"ToUserName": "gh", "FromUserName": "oOA-c", "CreateTime": 1, "MsgType": "text"}
    push(client, "oa", {**text, "Content": "加入挑战", "MsgId": 1})
    assert apply_messages() == {"done": 1} and seen == ["加入挑战"]
    monkeypatch.setattr(worker, "TEXT_HANDLERS", [])
    push(client, "oa", {**text, "Content": "hello", "MsgId": 2})
    push(client, "oa", {**text, "MsgType": "image", "PicUrl": "http://x", "MsgId": 3})
    assert apply_messages() == {"ignored": 2}


# -- following the official account -------------------------------------------------------------------------------


def follow(event: str, at: int, openid: str = "oOA-alice") -> dict:
    return {"ToUserName": "gh_oa", "FromUserName": openid, "CreateTime": at, "MsgType": "event", "Event": event}


@responses.activate
def test_a_follow_links_the_person_by_unionid_and_events_apply_in_wechats_order(app, client, make_user):
    app.config["WECHAT_API_BASE"] = API
    responses.post(f"{API}/cgi-bin/stable_token", json={"access_token": "AT", "expires_in": 7200})
    info = responses.get(
        f"{API}/cgi-bin/user/info",
        json={"subscribe": 1, "openid": "oOA-alice", "unionid": "union-alice", "subscribe_time": 1},
    )
    alice = make_user(unionid="union-alice")
    push(client, "oa", follow("subscribe", 100))
    assert apply_messages() == {"done": 1}
    assert info.call_count == 1 and "openid=oOA-alice" in info.calls[0].request.url
    follower = db.session.execute(select(OaFollower)).scalar_one()
    assert (follower.user_id, follower.unionid, follower.following) == (alice.id, "union-alice", True)
    oa_appid = app.config["WECHAT_OA_APPID"]
    identity = db.session.execute(select(UserIdentity).where(UserIdentity.appid == oa_appid)).scalar_one()
    assert (identity.user_id, identity.openid, identity.channel) == (alice.id, "oOA-alice", "official_account")
    # unfollow, then a late retry of an older follow: the newer state stays
    push(client, "oa", follow("unsubscribe", 200))
    push(client, "oa", follow("subscribe", 150))
    assert apply_messages() == {"done": 2}
    db.session.expire_all()
    follower = db.session.execute(select(OaFollower)).scalar_one()
    assert follower.following is False and follower.unfollowed_at is not None
    assert info.call_count == 2  # an unfollow asks nothing
    assert db.session.execute(select(func.count()).select_from(User)).scalar_one() == 1


@responses.activate
def test_a_follower_nobody_knows_yet_is_kept_unlinked_and_no_person_is_made(app, client):
    app.config["WECHAT_API_BASE"] = API
    responses.post(f"{API}/cgi-bin/stable_token", json={"access_token": "AT", "expires_in": 7200})
    responses.get(f"{API}/cgi-bin/user/info", json={"subscribe": 1, "openid": "oOA-zed"})
    push(client, "oa", follow("subscribe", 100, openid="oOA-zed"))
    assert apply_messages() == {"done": 1}
    follower = db.session.execute(select(OaFollower)).scalar_one()
    assert (follower.user_id, follower.following) == (None, True)
    assert db.session.execute(select(func.count()).select_from(User)).scalar_one() == 0


@responses.activate
def test_follows_oa_sees_a_follow_by_link_or_by_unionid_and_not_after_an_unfollow(app, client, make_user):
    from models.messages import follows_oa

    app.config["WECHAT_API_BASE"] = API
    responses.post(f"{API}/cgi-bin/stable_token", json={"access_token": "AT", "expires_in": 7200})
    responses.get(f"{API}/cgi-bin/user/info", json={"subscribe": 1, "openid": "oOA-zed", "unionid": "union-zed"})
    push(client, "oa", follow("subscribe", 100, openid="oOA-zed"))
    assert apply_messages() == {"done": 1}
    zed, other = make_user(unionid="union-zed"), make_user()  # zed signs in after following
    assert (follows_oa(zed.id), follows_oa(other.id)) == (True, False)
    push(client, "oa", follow("unsubscribe", 200, openid="oOA-zed"))
    assert apply_messages() == {"done": 1}
    assert follows_oa(zed.id) is False


@responses.activate
def test_user_info_unreachable_leaves_the_follow_queued_for_a_retry(app, client):
    app.config["WECHAT_API_BASE"] = API
    responses.post(f"{API}/cgi-bin/stable_token", json={"access_token": "AT", "expires_in": 7200})
    responses.get(f"{API}/cgi-bin/user/info", status=502)
    push(client, "oa", follow("subscribe", 100))
    assert apply_messages() == {"queued": 1}
    assert db.session.execute(select(OaFollower)).first() is None
    assert "UNAVAILABLE" in rows()[0].last_error or "HTTP_502" in rows()[0].last_error


# -- subscribe-message consents (notices.consents, another part of issue 14) --------------------------------------

POPUP = {
    "ToUserName": "gh_mp",
    "FromUserName": "oMP-alice",
    "CreateTime": 1_700_000_100,
    "MsgType": "event",
    "Event": "subscribe_msg_popup_event",
}


def test_subscribe_message_events_go_to_notices_consents_with_the_person_and_a_list(app, client, monkeypatch):
    import notices

    calls = []
    fake = types.ModuleType("notices.consents")
    fake.apply_push_event = lambda *args: calls.append(args)
    monkeypatch.setitem(sys.modules, "notices.consents", fake)
    monkeypatch.setattr(notices, "consents", fake, raising=False)
    alice = User()
    db.session.add(alice)
    db.session.flush()
    db.session.add(UserIdentity(user_id=alice.id, appid=app.config["WECHAT_APPID"], openid="oMP-alice"))
    db.session.commit()
    one = {"TemplateId": "tpl-a", "SubscribeStatusString": "accept", "PopupScene": "0"}
    push(client, "mp", {**POPUP, "List": one}, json_format=True)
    push(client, "mp", {**POPUP, "CreateTime": 1_700_000_101, "List": [one, {**one, "TemplateId": "tpl-b"}]})
    assert apply_messages() == {"done": 2}
    (u1, o1, e1, items1, at1), (_, _, _, items2, _) = calls
    assert (u1, o1, e1, items1) == (alice.id, "oMP-alice", "subscribe_msg_popup_event", [one])
    assert at1.timestamp() == 1_700_000_100 and at1.tzinfo is not None
    assert [i["TemplateId"] for i in items2] == ["tpl-a", "tpl-b"]


def test_subscribe_message_events_wait_while_notices_consents_is_missing(app, client, monkeypatch):
    import notices

    monkeypatch.setitem(sys.modules, "notices.consents", None)  # import fails
    monkeypatch.delattr(notices, "consents", raising=False)
    push(client, "mp", {**POPUP, "List": {"TemplateId": "t", "SubscribeStatusString": "accept"}}, json_format=True)
    assert apply_messages() == {"queued": 1}
    assert "notices.consents" in rows()[0].last_error


def test_the_scheduler_runs_the_messages_job_every_few_seconds():
    from jobs.scheduler import JOBS

    assert {job.__name__: s for job, s in JOBS}["apply_messages"] <= 5


# -- settings -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"WECHAT_OA_PUSH_TOKEN": "x"}, "WECHAT_OA_PUSH_TOKEN must be 3-32 letters or digits"),
        ({"WECHAT_MP_PUSH_TOKEN": "tok", "WECHAT_MP_ENCODING_AES_KEY": "short"}, "must be 43 characters"),
        ({"WECHAT_OA_PUSH_TOKEN": "tok", "WECHAT_OA_ENCODING_AES_KEY": "*" * 43}, "must be base64"),
        ({"WECHAT_OA_ENCODING_AES_KEY": new_aes_key()}, "needs WECHAT_OA_PUSH_TOKEN"),
        ({"WECHAT_MP_PUSH_TOKEN": "tok", "WECHAT_MP_ENCODING_AES_KEY_PREVIOUS": new_aes_key()}, "needs the current"),
    ],
)
def test_push_settings_are_checked_at_start_up(change, message):
    from config import ConfigError, load_config

    with pytest.raises(ConfigError) as refused:
        load_config({"WECHAT_MODE": "simulator", **change}, environ={})
    assert message in str(refused.value)


def test_a_rotation_to_the_same_key_is_refused_and_a_good_one_starts():
    from config import ConfigError, load_config

    key = new_aes_key()
    good = {"WECHAT_MODE": "simulator", "WECHAT_OA_PUSH_TOKEN": "tok123", "WECHAT_OA_ENCODING_AES_KEY": key}
    assert load_config({**good, "WECHAT_OA_ENCODING_AES_KEY_PREVIOUS": new_aes_key()}, environ={})
    with pytest.raises(ConfigError, match="nothing was rotated"):
        load_config({**good, "WECHAT_OA_ENCODING_AES_KEY_PREVIOUS": key}, environ={})


def test_live_mode_refuses_plaintext_message_push():
    """Plaintext push signs the token, timestamp and nonce only: anyone holding one signed URL could post any
    body (card events move money). Live mode requires safe mode."""
    from config import ConfigError, load_config

    with pytest.raises(ConfigError) as refused:
        load_config({"WECHAT_MODE": "live", "WECHAT_MP_PUSH_TOKEN": "tok123"}, environ={})
    assert "WECHAT_MP_PUSH_TOKEN is set without WECHAT_MP_ENCODING_AES_KEY" in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        load_config(
            {"WECHAT_MODE": "live", "WECHAT_MP_PUSH_TOKEN": "tok123", "WECHAT_MP_ENCODING_AES_KEY": new_aes_key()},
            environ={},
        )
    assert "WECHAT_MP_PUSH_TOKEN" not in str(refused.value)  # refused for the missing Pay secrets only


# -- a card event must be about our payout, its card and its person (review findings) --------------------------


def test_an_outer_str_without_our_tag_names_no_payout_and_alerts(app, client, make_user):
    """outer_str is outside the cardExt's signature: a person editing hers to another's (sequential) number."""
    alice, mallory = make_user(), make_user()
    alices = offered(fund_card_payout(alice, key="a"))
    offered(fund_card_payout(mallory, key="m"))
    forged = card_event("user_get_card", alices.external_no, signed=False, FromUserName="oOA-mallory")
    push(client, "oa", forged)
    assert apply_messages() == {"ignored": 1}
    db.session.expire_all()
    assert db.session.get(Payout, alices.id).status == "waiting_user_confirm"
    assert db.session.execute(select(Alert.kind)).scalars().all() == ["card_event_forged"]


def test_a_card_event_from_another_known_person_or_for_another_card_moves_nothing(app, client, make_user):
    alice, mallory = make_user(), make_user()
    alices = offered(fund_card_payout(alice, key="a"))
    oa_appid = app.config["WECHAT_OA_APPID"]
    db.session.add(UserIdentity(user_id=mallory.id, appid=oa_appid, openid="oOA-mallory"))
    db.session.commit()
    push(client, "oa", card_event("user_get_card", alices.external_no, FromUserName="oOA-mallory"))
    push(client, "oa", card_event("user_get_card", alices.external_no, at=1_700_000_009, CardId="pOTHERCARD"))
    assert apply_messages() == {"ignored": 2}
    db.session.expire_all()
    assert db.session.get(Payout, alices.id).status == "waiting_user_confirm"
    assert db.session.execute(select(Alert.kind)).scalars().all() == ["card_event_mismatch", "card_event_mismatch"]
    # the card's own holder (known or not) takes it: delivered
    push(client, "oa", card_event("user_get_card", alices.external_no, at=1_700_000_010))
    assert apply_messages() == {"done": 1}
    db.session.expire_all()
    assert db.session.get(Payout, alices.id).status == "succeeded"


def test_two_cards_taken_in_the_same_second_are_two_events(app, client, make_user):
    """One wx.addCard may add several cards: the same sender, second and event, a code each."""
    user = make_user()
    one, two = offered(fund_card_payout(user, key="1")), offered(fund_card_payout(user, key="2"))
    push(client, "oa", card_event("user_get_card", one.external_no, UserCardCode="C1"))
    push(client, "oa", card_event("user_get_card", two.external_no, UserCardCode="C2"))
    push(client, "oa", card_event("user_get_card", two.external_no, UserCardCode="C2"))  # WeChat's retry
    assert apply_messages() == {"done": 2}
    db.session.expire_all()
    assert [db.session.get(Payout, p.id).status for p in (one, two)] == ["succeeded", "succeeded"]


# -- an old signed query carries no new body (outside probe) ----------------------------------------------------


@pytest.mark.parametrize("skew", [-301, 301, 10**6])
def test_a_push_signed_further_than_the_max_age_from_our_clock_is_refused_and_writes_nothing(app, client, skew):
    """The plain signature covers the Token, timestamp and nonce only: a signed query seen once (a log) must not
    carry another body later."""
    settings = push_settings("oa")
    built = build_push(settings, card_event("user_get_card", None), timestamp=int(utcnow().timestamp()) + skew)
    answer = client.post("/wechat/oa/push", query_string=built.args, data=built.body)
    assert (answer.status_code, answer.get_data(as_text=True)) == (403, "STALE")
    assert db.session.execute(select(func.count()).select_from(InboundMessage)).scalar_one() == 0


def test_a_push_within_the_max_age_is_recorded(app, client):
    settings = push_settings("oa")
    built = build_push(settings, card_event("user_get_card", None), timestamp=int(utcnow().timestamp()) - 290)
    answer = client.post("/wechat/oa/push", query_string=built.args, data=built.body)
    assert (answer.status_code, answer.get_data(as_text=True)) == (200, "success")
    assert db.session.execute(select(func.count()).select_from(InboundMessage)).scalar_one() == 1


def test_a_push_nested_past_the_parsers_depth_is_a_clear_400(app, client):
    """A JSON-format mini-program push whose decrypted message nests past the JSON parser's depth: 400, not 500."""
    from wechatpy.utils import to_text

    settings = dataclasses.replace(push_settings("mp"), json_format=True)
    nested = '{"ToUserName": "gh", "MsgType": ' + "[" * 5_000 + "]" * 5_000 + "}"
    built = build_push(settings, {"ToUserName": "gh", "MsgType": "text"})
    envelope = settings.cryptos()[0].encrypt_message(nested, built.args["nonce"], built.args["timestamp"])
    encrypt = to_text(envelope.split("<Encrypt><![CDATA[")[1].split("]]>")[0])
    msg_signature = envelope.split("<MsgSignature><![CDATA[")[1].split("]]>")[0]
    args = {**built.args, "msg_signature": msg_signature}
    answer = client.post("/wechat/mp/push", query_string=args, data=json.dumps({"Encrypt": encrypt}))
    assert (answer.status_code, answer.get_data(as_text=True)) == (400, "MALFORMED_JSON")
    assert db.session.execute(select(func.count()).select_from(InboundMessage)).scalar_one() == 0


def test_wechat_giving_a_card_the_code_another_payout_recorded_alerts_once(app, client, make_user):
    """The person recorded their card's code on another of their card payouts; WeChat's event names its own payout
    (by OuterStr): the card is delivered as WeChat says and an operator is told of the code on two payouts (review)."""
    from payouts.operations import record_card_code

    user = make_user()
    first, second = offered(fund_card_payout(user, key="k1")), offered(fund_card_payout(user, key="k2"))
    record_card_code(second.id, user.id, CODE)
    db.session.commit()
    for _ in range(2):
        push(client, "oa", card_event("user_get_card", first.external_no))
    assert apply_messages() == {"done": 1}
    db.session.expire_all()
    assert db.session.get(Payout, first.id).status == "succeeded"
    clashes = [a for a in db.session.execute(select(Alert)).scalars() if a.kind == "card_code_on_two_payouts"]
    assert len(clashes) == 1 and second.external_no in clashes[0].message


# -- pushes WeChat could not have sent are refused at the door, not failed eight times by the job ----------------


@pytest.mark.parametrize("create_time", [99999999999999999999, 253402300800, 4_102_444_800, -1])
def test_a_create_time_before_1970_or_after_2099_is_refused_and_writes_nothing(client, create_time):
    text = {"ToUserName": "gh_mp", "FromUserName": "oMP-bob", "MsgType": "text", "Content": "hi", "MsgId": 7}
    response = push(client, "mp", {**text, "CreateTime": create_time}, json_format=True)
    assert response.status_code == 400
    assert rows() == []


def test_a_subscribe_event_whose_list_is_not_objects_is_refused_and_writes_nothing(client):
    fields = {
        "ToUserName": "gh_oa",
        "FromUserName": "oOA-alice",
        "CreateTime": 1_700_000_000,
        "MsgType": "event",
        "Event": "subscribe_msg_popup_event",
        "SubscribeMsgPopupEvent": {"List": "text"},
    }
    response = push(client, "oa", fields)
    assert response.status_code == 400
    assert rows() == []
    good = {**fields, "SubscribeMsgPopupEvent": {"List": {"TemplateId": "T1", "SubscribeStatusString": "accept"}}}
    assert push(client, "oa", good).text == "success"
    assert len(rows()) == 1


@pytest.mark.parametrize("content", ["h\ud800i", "h\x00i"])
def test_a_json_push_with_text_no_database_can_store_is_refused_and_writes_nothing(client, content):
    text = {"ToUserName": "gh_mp", "FromUserName": "oMP-bob", "CreateTime": 1_700_000_000, "MsgType": "text"}
    response = push(client, "mp", {**text, "Content": content, "MsgId": 8}, json_format=True)
    assert response.status_code == 400
    assert rows() == []
