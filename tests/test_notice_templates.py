"""NOTICE_TEMPLATES: WeChat's field rules and the no-marketing rule checked at start-up; rendering within limits."""

from __future__ import annotations

import copy

import pytest

from app import ConfigError, create_app
from notices.events import NoticeEvent
from notices.templates import DEFAULT_TEMPLATES, TemplateError, inbox_text, load_templates, render_data
from tests.conftest import TEST_SETTINGS

FACTS = {"packet_id": 7, "amount_fen": 1230, "issuer": "Noodle House", "expires_at": "2026-11-30T06:00:00+00:00"}


def with_field(key: str, text: str, event: str = NoticeEvent.PACKET_RECEIVED) -> dict:
    raw = copy.deepcopy({str(k): v for k, v in DEFAULT_TEMPLATES.items()})
    raw[event]["subscribe"]["data"] = {key: text}
    return raw


def test_the_built_in_set_loads_and_live_mode_keeps_only_the_inbox():
    sim = load_templates(None, simulator=True)
    assert sim[NoticeEvent.PACKET_RECEIVED].subscribe.template_id == "sim-tmpl-packet-received"
    live = load_templates(None, simulator=False)
    assert all(t.subscribe is None and t.oa is None for t in live.by_event.values())
    assert all(t.title and t.body for t in live.by_event.values())


@pytest.mark.parametrize(
    ("key", "text", "why"),
    [
        ("thing1", "一二三四五六七八九十一二三四五六七八九十一", "over 20"),  # fixed text longer than 20
        ("amount2", "{amount}元", "exactly {amount}"),
        ("amount2", "{issuer}", "exactly {amount}"),
        ("time3", "{issuer}", "time placeholder"),
        ("time3", "明天 {expires_at}", "time placeholder"),
        ("date3", "2026", "time placeholder"),
        ("number4", "12a", "digits"),
        ("number4", "1" * 33, "32 digits"),
        ("phrase5", "已经到账了啊", "over 5"),
        ("phrase5", "ok", "5 Chinese"),
        ("character_string6", "订单", "letters, digits"),
        ("character_string6", "A" * 33, "over 32"),
        ("name7", "一二三四五六七八九十一", "over 10"),
        ("thing1", "{no_such_fact}", "unknown placeholder"),
        ("thing1", "{amount_fen", "expected"),
        ("colour1", "red", "not a WeChat template key"),
        ("thing", "x", "not a WeChat template key"),
    ],
)
def test_each_field_rule_is_checked(key, text, why):
    with pytest.raises(TemplateError, match=why):
        load_templates(with_field(key, text), simulator=True)


@pytest.mark.parametrize("word", ["优惠", "促销", "抢购", "限时", "秒杀", "特价"])
def test_a_marketing_word_is_refused_in_fields_title_and_body(word):
    with pytest.raises(TemplateError, match="marketing"):
        load_templates(with_field("thing1", f"{word}红包"), simulator=True)
    raw = with_field("thing1", "红包")
    raw[NoticeEvent.REBATE_LANDED]["body"] = f"返利到账，{word}进行中"
    with pytest.raises(TemplateError, match="marketing"):
        load_templates(raw, simulator=True)


def test_every_event_needs_inbox_text_and_no_unknown_events_or_placeholders():
    raw = with_field("thing1", "红包")
    del raw[NoticeEvent.PAYOUT_FAILED]
    with pytest.raises(TemplateError, match="no template for payout_failed"):
        load_templates(raw, simulator=True)
    raw = with_field("thing1", "红包")
    raw["birthday"] = raw[NoticeEvent.PAYOUT_FAILED]
    with pytest.raises(TemplateError, match="unknown event"):
        load_templates(raw, simulator=True)
    raw = with_field("thing1", "红包")
    raw[NoticeEvent.REBATE_HELD]["title"] = "审核 {why}"
    with pytest.raises(TemplateError, match="unknown placeholder why"):
        load_templates(raw, simulator=True)
    raw = with_field("thing1", "红包")
    raw[NoticeEvent.REBATE_HELD]["page"] = "https://example.com"
    with pytest.raises(TemplateError, match="page"):
        load_templates(raw, simulator=True)


def test_the_app_refuses_to_start_with_a_bad_template(tmp_path):
    settings = {**TEST_SETTINGS, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    with pytest.raises(ConfigError, match="marketing"):
        create_app({**settings, "NOTICE_TEMPLATES": with_field("thing1", "秒杀红包")})


def test_rendering_cuts_things_safely_formats_money_and_beijing_time():
    raw = with_field("thing1", "{issuer} 送你的红包")
    raw[NoticeEvent.PACKET_RECEIVED]["subscribe"]["data"].update(
        {"amount2": "{amount}", "time3": "{expires_at}", "date4": "{expires_at}", "character_string5": "{packet_id}"}
    )
    channel = load_templates(raw, simulator=True)[NoticeEvent.PACKET_RECEIVED].subscribe
    long_name = {**FACTS, "issuer": "一家名字非常非常非常非常长的面馆🍜🍜"}
    data = render_data(channel, long_name)
    assert len(data["thing1"]["value"]) == 20 and data["thing1"]["value"].endswith("…")
    assert data["thing1"]["value"].startswith("一家名字")
    assert data["amount2"] == {"value": "¥12.30"}
    assert data["time3"] == {"value": "2026年11月30日 14:00"}  # 06:00 UTC is 14:00 in Beijing
    assert data["date4"] == {"value": "2026年11月30日"}
    assert data["character_string5"] == {"value": "7"}
    title, body = inbox_text(load_templates(None, simulator=True)[NoticeEvent.PACKET_RECEIVED], FACTS)
    assert title == "你收到一个红包"
    assert body == "Noodle House 送你一个 ¥12.30 的红包，请在 2026年11月30日 14:00 前使用。"


def test_a_big_amount_stays_within_ten_digits():
    channel = load_templates(None, simulator=True)[NoticeEvent.REBATE_LANDED].subscribe
    data = render_data(channel, {"amount_fen": 99_999_999_99, "form": "wechat_change"})
    assert data["amount1"]["value"] == "¥99999999.99"
    assert data["phrase2"]["value"] == "微信零钱"


def test_rate_limits_name_known_channels_only(tmp_path):
    settings = {**TEST_SETTINGS, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    with pytest.raises(ConfigError, match="NOTICE_RATE_LIMITS: unknown channel sms"):
        create_app({**settings, "NOTICE_RATE_LIMITS": {"sms": 5}})


@pytest.mark.parametrize(
    ("cash_fen", "points", "title", "told", "thing3"),
    [
        (0, 100, "积分已退回", "使用的 100 积分已退回。", "积分已退回"),  # was "¥0.00 余额和 100 积分"
        (3_00, 0, "余额已退回", "使用的 ¥3.00 余额已退回。", "余额已退回"),  # was "… 和 0 积分"
        (3_00, 40, "余额和积分已退回", "使用的 ¥3.00 余额和 40 积分已退回。", "余额和积分已退回"),
    ],
)
def test_returned_wallet_money_names_only_what_came_back(cash_fen, points, title, told, thing3):
    template = load_templates(None, simulator=True)[NoticeEvent.WALLET_RETURNED]
    # the facts as rebate.tell stores them (and as notices stored before the words existed hold them)
    facts = {"out_trade_no": "T1", "amount_fen": cash_fen, "points": points, "reason": "已退款"}
    assert inbox_text(template, facts) == (title, f"订单 T1 已退款，{told}")
    data = render_data(template.subscribe, facts)
    assert data["thing3"] == {"value": thing3}
    assert data["amount1"] == {"value": "¥" + f"{cash_fen / 100:.2f}"}


@pytest.mark.parametrize(
    ("event", "facts", "body"),
    [
        (NoticeEvent.REBATE_CLAWED_BACK, {"amount_fen": 20, "reason": "订单退款"}, "¥0.20 的返利已收回：订单退款"),
        (
            NoticeEvent.REBATE_CLAWED_BACK,
            {"amount_fen": 20, "points": 1, "reason": "订单退款"},
            "¥0.20 的返利已收回（1 积分）：订单退款",  # the point that left, not only the fen
        ),
        (
            NoticeEvent.CHALLENGE_SETTLED,
            {"challenge_id": 3, "title": "走路", "result": "获胜", "amount_fen": 2_50},
            "「走路」已结算：你获胜，获得 ¥2.50。",
        ),
        (  # a share under one fen, or a sponsor that refused: no "获得 ¥0.00"
            NoticeEvent.CHALLENGE_SETTLED,
            {"challenge_id": 3, "title": "走路", "result": "获胜", "amount_fen": 0},
            "「走路」已结算：你获胜。",
        ),
        (
            NoticeEvent.CHALLENGE_CANCELLED,
            {"challenge_id": 3, "title": "走路", "amount_fen": 5_00},
            "「走路」参加人数不足已取消，挑战金 ¥5.00 已退回。",
        ),
        (  # a sponsor's challenge: nobody staked anything
            NoticeEvent.CHALLENGE_CANCELLED,
            {"challenge_id": 3, "title": "走路", "amount_fen": 0},
            "「走路」参加人数不足已取消。",
        ),
    ],
)
def test_a_notice_names_what_moved_and_not_zero(event, facts, body):
    assert inbox_text(load_templates(None, simulator=True)[event], facts)[1] == body
