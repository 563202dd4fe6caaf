"""Message templates as configuration (``NOTICE_TEMPLATES``), checked at start-up and rendered from a notice's facts.

One entry per :class:`NoticeEvent`::

    {"packet_received": {
        "title": "你收到一个红包", "body": "{issuer} 送你 {amount} 红包，{expires_at} 前可用",
        "page": "pages/packets/index",
        "subscribe": {"template_id": "…",
                      "data": {"thing1": "{issuer}", "amount2": "{amount}", "time3": "{expires_at}"}},
        "oa": {"template_id": "…", "data": {…}}}}

``title`` / ``body`` are the inbox text (every event needs them: the inbox always keeps the notice);
``subscribe`` (the mini-program subscribe message) and ``oa`` (the official account's template message) are
optional. Placeholders are the event's facts (``notices.events.FACTS``) with ``amount_fen`` read as
``{amount}`` (rendered ``¥12.30`` through ``money.format_yuan``; with ``points_value_fen`` added where the facts
hold it: an order's wallet return is told as what came back is worth), times (``*_at``) in Beijing time
(``2026年11月30日 14:00``) and ``{form}`` as 微信零钱 / 积分 / …; an unknown placeholder is refused.

WeChat's field rules, by the key's kind (the key without its number): thing ≤ 20 characters (a longer value is
cut safely at rendering, whole characters, ending in …), number ≤ 32 digits, amount = currency symbol + ≤ 10
digits, phrase ≤ 5 Chinese characters, time / date in WeChat's formats, character_string ≤ 32 ASCII
characters, name ≤ 10 characters, letter / symbol ≤ 5. A service message must not advertise: a template with
a marketing word (``MARKETING_WORDS``) is refused at start-up.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from models.base import beijing
from models.payouts import InApp, Rail
from models.text import one_line
from money import format_yuan
from notices.events import FACTS, NoticeEvent

KINDS = {
    "thing": 20,
    "number": 32,
    "amount": 11,  # the symbol + 10 digits (with the point)
    "phrase": 5,
    "time": 0,
    "date": 0,
    "character_string": 32,
    "name": 10,
    "letter": 5,
    "symbol": 5,
}
MARKETING_WORDS = ("优惠", "促销", "抢购", "限时", "秒杀", "特价", "折扣", "大促", "福利", "免费领", "广告", "返场")
FORMS = {  # a rebate's form (rebate.rules.Form: the rails' and in-app words) as a phrase (≤ 5 Chinese characters)
    Rail.WECHAT_CHANGE: "微信零钱",
    Rail.CASH_RED_PACKET: "现金红包",
    Rail.WECHAT_COUPON: "代金券",
    Rail.CARD_COUPON: "卡券",
    Rail.PROFIT_SHARING: "微信零钱",  # a merchant-funded cash rebate split to the person: it lands in their change
    InApp.BALANCE: "余额",
    InApp.POINTS: "积分",
}
TEXT_MAX = {"title": 40, "body": 200}
PAGE_MAX, TEMPLATE_ID_MAX = 256, 64
_KEY = re.compile(r"^([a-z_]+?)(\d+)$")
_CHINESE = re.compile(r"^[\u4e00-\u9fff]+$")
_ASCII_STRING = re.compile(r"^[\x21-\x7e]*$")
ELLIPSIS = "…"


class TemplateError(ValueError):
    """A template the configuration must not start with; the message names it."""


@dataclass(frozen=True)
class Channel:
    template_id: str
    data: dict[str, str]  # WeChat's key (thing1) → our format ("{issuer}")


@dataclass(frozen=True)
class Template:
    event: NoticeEvent
    title: str
    body: str
    page: str | None = None
    subscribe: Channel | None = None
    oa: Channel | None = None


@dataclass(frozen=True)
class Templates:
    by_event: dict[NoticeEvent, Template] = field(default_factory=dict)

    def __getitem__(self, event: str) -> Template:
        return self.by_event[NoticeEvent(event)]

    def subscribe_ids(self) -> dict[str, list[NoticeEvent]]:
        """Each mini-program template id configured, with the events it tells of."""
        ids: dict[str, list[NoticeEvent]] = {}
        for template in self.by_event.values():
            if template.subscribe is not None:
                ids.setdefault(template.subscribe.template_id, []).append(template.event)
        return ids


# -- the facts as placeholders ----------------------------------------------------------------


def _returned_parts(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What came back of an order's balance and points, each with its words: only what did (no "¥0.00 余额")."""
    cash, points = int(facts.get("amount_fen") or 0), int(facts.get("points") or 0)
    return [
        (w, n)
        for w, n, k in (("余额", f"¥{format_yuan(cash)} 余额", cash), ("积分", f"{points} 积分", points))
        if k > 0
    ]


def _if_any(facts: Mapping[str, Any], name: str, words: str) -> str:
    """``words`` with the fact in (fen as yuan) when it is above zero; else nothing."""
    value = int(facts.get(name) or 0)
    if value <= 0:
        return ""
    return words.format(format_yuan(value) if name.endswith("_fen") else value)


# Words made from an event's facts when rendered (so notices stored before they existed read them too).
DERIVED: dict[NoticeEvent, dict[str, Callable[[Mapping[str, Any]], str]]] = {
    NoticeEvent.WALLET_RETURNED: {
        "what": lambda facts: "和".join(w for w, _ in _returned_parts(facts)),  # 余额和积分 / 余额 / 积分
        "returned": lambda facts: "和 ".join(n for _, n in _returned_parts(facts)),  # ¥3.00 余额和 40 积分
    },
    # a points rebate taken back: the points that left, not only the fen (a point may be worth more than the fen)
    NoticeEvent.REBATE_CLAWED_BACK: {"points_taken": lambda facts: _if_any(facts, "points", "（{} 积分）")},
    # a winner whose share was under a fen (or whose sponsor refused) won nothing: no "获得 ¥0.00"
    NoticeEvent.CHALLENGE_SETTLED: {"gained": lambda facts: _if_any(facts, "amount_fen", "，获得 ¥{}")},
    # a sponsor's challenge had no stakes: no "挑战金 ¥0.00 已退回"
    NoticeEvent.CHALLENGE_CANCELLED: {"stake_back": lambda facts: _if_any(facts, "amount_fen", "，挑战金 ¥{} 已退回")},
}
_DERIVED = {name: make for names in DERIVED.values() for name, make in names.items()}


def placeholders(event: NoticeEvent) -> set[str]:
    return {("amount" if name == "amount_fen" else name) for name in FACTS[event]} | set(DERIVED.get(event, ()))


def _fields(text: str) -> list[str]:
    try:
        return [name for _, name, spec, conv in string.Formatter().parse(text) if name is not None]
    except ValueError as exc:
        raise TemplateError(f"{text!r}: {exc}") from None


def _static(text: str) -> str:
    return "".join(literal for literal, *_ in string.Formatter().parse(text))


def beijing_time(value: str | datetime, *, date_only: bool = False) -> str:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    local = beijing(moment)
    return local.strftime("%Y年%m月%d日") if date_only else local.strftime("%Y年%m月%d日 %H:%M")


def _amount_fen(facts: Mapping[str, Any]) -> int:
    """``{amount}``: ``amount_fen``, plus ``points_value_fen`` where the facts count points apart from the money
    (an order's balance and points coming back: told as what came back is worth, as a points rebate is)."""
    return int(facts["amount_fen"]) + int(facts.get("points_value_fen") or 0)


def _value(name: str, facts: Mapping[str, Any]) -> str:
    if name == "amount":
        return "¥" + format_yuan(_amount_fen(facts))
    if name in _DERIVED:
        return _DERIVED[name](facts)
    raw = facts.get(name)
    if raw is None:
        return ""
    if name.endswith("_at"):
        return beijing_time(raw)
    if name == "form":
        return FORMS.get(str(raw), one_line(str(raw)))
    return one_line(str(raw))


def _safe_value(name: str, facts: Mapping[str, Any], strict: bool) -> str:
    try:
        return _value(name, facts)
    except (KeyError, TypeError, ValueError) as exc:  # a fact written wrong (MoneyError is a ValueError)
        if strict:
            raise TemplateError(f"fact {name!r} cannot be rendered: {exc}") from None
        return ""


def fill(text: str, facts: Mapping[str, Any], *, strict: bool = False) -> str:
    """``text`` with the facts in; a fact that cannot be rendered is left empty (``strict``: TemplateError)."""
    return text.format_map({name: _safe_value(name, facts, strict) for name in _fields(text)})


def cut(value: str, most: int) -> str:
    """At most ``most`` characters, whole characters, ending in … when cut (thing, name, phrase, letter, symbol)."""
    return value if len(value) <= most else value[: most - 1] + ELLIPSIS


# -- rendering --------------------------------------------------------------------------------


def render_data(channel: Channel, facts: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """WeChat's ``data``: ``{key: {"value": …}}``, every value within its kind's rule (TemplateError when a fact
    cannot be rendered: the message is not sent rather than sent wrong)."""
    data = {}
    for key, text in channel.data.items():
        kind = _kind(key)
        if kind in ("time", "date"):
            (name,) = _fields(text)
            try:
                value = beijing_time(facts[name], date_only=kind == "date")
            except (KeyError, TypeError, ValueError) as exc:
                raise TemplateError(f"fact {name!r} is not a time: {exc}") from None
        else:
            value = fill(text, facts, strict=True)
            if kind == "character_string":  # letters, digits and symbols only: cut without "…" (not ASCII)
                value = value.replace(" ", "_")[: KINDS[kind]]
                if not _ASCII_STRING.match(value):
                    raise TemplateError(f"{key}: {value!r} is not a character_string (ASCII letters, digits, symbols)")
            elif kind in ("thing", "name", "letter", "symbol", "phrase"):
                value = cut(value, KINDS[kind])
            if kind == "phrase" and not _CHINESE.match(value):  # WeChat refuses anything else (47003)
                raise TemplateError(f"{key}: {value!r} is not a phrase (at most 5 Chinese characters)")
        data[key] = {"value": value}
    return data


def inbox_text(template: Template, facts: Mapping[str, Any]) -> tuple[str, str]:
    return cut(fill(template.title, facts), TEXT_MAX["title"]), cut(fill(template.body, facts), TEXT_MAX["body"])


# -- start-up checks --------------------------------------------------------------------------


def _kind(key: str) -> str:
    match = _KEY.match(key)
    if not match or match.group(1) not in KINDS:
        raise TemplateError(f"{key!r} is not a WeChat template key (thing1, amount2, time3, …)")
    return match.group(1)


def _refuse_marketing(where: str, text: str) -> None:
    for word in MARKETING_WORDS:
        if word in text:
            raise TemplateError(f"{where}: {word!r} is marketing; a service message must not advertise")


def _check_field(where: str, key: str, text: str, allowed: set[str]) -> None:
    kind = _kind(key)
    if not isinstance(text, str) or not text:
        raise TemplateError(f"{where}.{key}: a non-empty text")
    names = _fields(text)
    unknown = set(names) - allowed
    if unknown:
        raise TemplateError(f"{where}.{key}: unknown placeholder {', '.join(sorted(unknown))}")
    static = _static(text)
    _refuse_marketing(f"{where}.{key}", text)
    one = len(names) == 1 and not static
    if kind == "amount" and not (one and names[0] == "amount"):
        raise TemplateError(f"{where}.{key}: an amount field is exactly {{amount}} (¥ + at most 10 digits)")
    if kind in ("time", "date") and not (one and names[0].endswith("_at")):
        raise TemplateError(f"{where}.{key}: a {kind} field is exactly one time placeholder ({{expires_at}}, …)")
    if kind == "number" and not ((one and names[0].endswith("_id")) or (not names and static.isdecimal())):
        raise TemplateError(f"{where}.{key}: a number field is digits (at most 32) or one id placeholder")
    if kind == "number" and len(static) > KINDS["number"]:
        raise TemplateError(f"{where}.{key}: a number is at most 32 digits")
    if kind == "phrase" and not ((one and names[0] == "form") or (not names and _CHINESE.match(static))):
        raise TemplateError(f"{where}.{key}: a phrase is at most 5 Chinese characters (or {{form}})")
    if kind == "character_string" and not _ASCII_STRING.match(static):
        raise TemplateError(f"{where}.{key}: a character_string is letters, digits and symbols only")
    limit = KINDS[kind]
    if limit and len(static) > limit:
        raise TemplateError(f"{where}.{key}: its fixed text is over {limit} characters (WeChat's {kind} limit)")
    if kind in ("name", "letter", "symbol") and names and not set(names) <= {"issuer", "reason"}:
        raise TemplateError(f"{where}.{key}: a {kind} field takes fixed text or {{issuer}}")


def _channel(where: str, raw: Any, allowed: set[str]) -> Channel | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"template_id", "data"}:
        raise TemplateError(f"{where}: {{template_id, data}}")
    template_id, data = raw.get("template_id"), raw.get("data")
    if not isinstance(template_id, str) or not 0 < len(template_id) <= TEMPLATE_ID_MAX:
        raise TemplateError(f"{where}.template_id: 1 to {TEMPLATE_ID_MAX} characters")
    if not isinstance(data, dict) or not data:
        raise TemplateError(f"{where}.data: an object of WeChat keys")
    for key, text in data.items():
        _check_field(f"{where}.data", key, text, allowed)
    return Channel(template_id, dict(data))


def _template(event: NoticeEvent, raw: Any) -> Template:
    where = f"NOTICE_TEMPLATES.{event}"
    if not isinstance(raw, dict):
        raise TemplateError(f"{where}: an object with title, body, page, subscribe, oa")
    extra = set(raw) - {"title", "body", "page", "subscribe", "oa"}
    if extra:
        raise TemplateError(f"{where}: unknown {', '.join(sorted(extra))}")
    allowed = placeholders(event)
    for name in ("title", "body"):
        text = raw.get(name)
        if not isinstance(text, str) or not text.strip():
            raise TemplateError(f"{where}.{name}: the inbox needs it")
        unknown = set(_fields(text)) - allowed
        if unknown:
            raise TemplateError(f"{where}.{name}: unknown placeholder {', '.join(sorted(unknown))}")
        _refuse_marketing(f"{where}.{name}", text)
    page = raw.get("page")
    if page is not None and (not isinstance(page, str) or len(page) > PAGE_MAX or page.startswith(("http", "/"))):
        raise TemplateError(f"{where}.page: a mini-program page path (pages/…), at most {PAGE_MAX} characters")
    return Template(
        event,
        raw["title"],
        raw["body"],
        page,
        _channel(f"{where}.subscribe", raw.get("subscribe"), allowed),
        _channel(f"{where}.oa", raw.get("oa"), allowed),
    )


def load_templates(raw: Mapping[str, Any] | None, *, simulator: bool) -> Templates:
    """The checked templates; ``raw`` None: the built-in set (in live mode its WeChat channels are dropped, as
    its template ids are the simulator's: every notice then goes to the inbox until NOTICE_TEMPLATES is set)."""
    if raw is None:
        raw = DEFAULT_TEMPLATES if simulator else {e: _inbox_only(t) for e, t in DEFAULT_TEMPLATES.items()}
    if not isinstance(raw, Mapping):
        raise TemplateError("NOTICE_TEMPLATES: a JSON object keyed by event")
    unknown = set(raw) - set(NoticeEvent)
    if unknown:
        raise TemplateError(f"NOTICE_TEMPLATES: unknown event {', '.join(sorted(unknown))}")
    missing = set(NoticeEvent) - set(raw)
    if missing:
        raise TemplateError(f"NOTICE_TEMPLATES: no template for {', '.join(sorted(missing))}")
    templates = Templates({NoticeEvent(e): _template(NoticeEvent(e), raw[e]) for e in NoticeEvent})
    _one_shape_per_template_id(templates)
    return templates


def _one_shape_per_template_id(templates: Templates) -> None:
    """A WeChat template has one set of keys: events sharing its id must fill the same keys (else 47003 each send)."""
    for side in ("subscribe", "oa"):
        keys: dict[str, tuple[NoticeEvent, set[str]]] = {}
        for event, template in templates.by_event.items():
            channel = getattr(template, side)
            if channel is None:
                continue
            first = keys.setdefault(channel.template_id, (event, set(channel.data)))
            if first[1] != set(channel.data):
                raise TemplateError(
                    f"NOTICE_TEMPLATES.{event}.{side}: template {channel.template_id} has the keys "
                    f"{', '.join(sorted(first[1]))} (as {first[0]} fills them), not {', '.join(sorted(channel.data))}"
                )


def _inbox_only(raw: dict) -> dict:
    return {k: v for k, v in raw.items() if k not in ("subscribe", "oa")}


def _sub(event: str, data: dict[str, str]) -> dict:
    return {"template_id": f"sim-tmpl-{event.replace('_', '-')}", "data": data}


def _oa(event: str, data: dict[str, str]) -> dict:
    return {"template_id": f"sim-oa-{event.replace('_', '-')}", "data": data}


DEFAULT_TEMPLATES: dict[str, dict] = {
    NoticeEvent.PACKET_RECEIVED: {
        "title": "你收到一个红包",
        "body": "{issuer} 送你一个 {amount} 的红包，请在 {expires_at} 前使用。",
        "page": "pages/packets/index",
        "subscribe": _sub(
            "packet_received", {"thing1": "{issuer} 送你的红包", "amount2": "{amount}", "time3": "{expires_at}"}
        ),
        "oa": _oa("packet_received", {"thing1": "{issuer} 送你的红包", "amount2": "{amount}", "time3": "{expires_at}"}),
    },
    NoticeEvent.PACKET_EXPIRING: {
        "title": "红包即将过期",
        "body": "你有一个 {amount} 的红包将在 {expires_at} 过期。",
        "page": "pages/packets/index",
        "subscribe": _sub(
            "packet_expiring", {"thing1": "红包即将过期", "amount2": "{amount}", "time3": "{expires_at}"}
        ),
    },
    NoticeEvent.REBATE_LANDED: {
        "title": "返利已到账",
        "body": "{amount} 返利已以{form}形式到账。",
        "page": "pages/wallet/index",
        "subscribe": _sub("rebate_landed", {"amount1": "{amount}", "phrase2": "{form}", "thing3": "返利已到账"}),
        "oa": _oa("rebate_landed", {"amount1": "{amount}", "thing2": "返利已到账"}),
    },
    NoticeEvent.TRANSFER_TO_CONFIRM: {
        "title": "有一笔转账等你确认收款",
        "body": "{amount} 的转账等你确认收款，{closes_at} 前未确认将退回余额。",
        "page": "pages/wallet/index",
        "subscribe": _sub(
            "transfer_to_confirm", {"amount1": "{amount}", "time2": "{closes_at}", "thing3": "请确认收款"}
        ),
        "oa": _oa("transfer_to_confirm", {"amount1": "{amount}", "time2": "{closes_at}", "thing3": "请确认收款"}),
    },
    NoticeEvent.TRANSFER_REMINDER: {
        "title": "转账即将关闭",
        "body": "{amount} 的转账将在 {closes_at} 关闭，请尽快确认收款。",
        "page": "pages/wallet/index",
        "subscribe": _sub(
            "transfer_to_confirm", {"amount1": "{amount}", "time2": "{closes_at}", "thing3": "转账即将关闭"}
        ),
        "oa": _oa("transfer_to_confirm", {"amount1": "{amount}", "time2": "{closes_at}", "thing3": "转账即将关闭"}),
    },
    NoticeEvent.REBATE_HELD: {
        "title": "返利审核中",
        "body": "{amount} 的返利正在审核，结果会通知你。",
        "page": "pages/rebates/index",
        "subscribe": _sub("rebate_held", {"amount1": "{amount}", "phrase2": "审核中", "thing3": "结果会通知你"}),
    },
    NoticeEvent.REBATE_CLAWED_BACK: {
        "title": "返利已收回",
        "body": "{amount} 的返利已收回{points_taken}：{reason}",
        "page": "pages/rebates/index",
        "subscribe": _sub("rebate_clawed_back", {"amount1": "{amount}", "thing2": "{reason}"}),
    },
    NoticeEvent.PAYOUT_FAILED: {
        "title": "提现未成功，金额已退回余额",
        "body": "{amount} 未能发出（{reason}），已退回你的余额。",
        "page": "pages/wallet/index",
        "subscribe": _sub("payout_failed", {"amount1": "{amount}", "thing2": "{reason}", "thing3": "已退回余额"}),
    },
    NoticeEvent.WALLET_RETURNED: {
        "title": "{what}已退回",
        "body": "订单 {out_trade_no} {reason}，使用的 {returned}已退回。",
        "page": "pages/wallet/index",
        "subscribe": _sub("wallet_returned", {"amount1": "{amount}", "thing2": "{reason}", "thing3": "{what}已退回"}),
    },
    NoticeEvent.CHALLENGE_SETTLED: {
        "title": "挑战已结算",
        "body": "「{title}」已结算：你{result}{gained}。",
        "page": "pages/challenges/index",
        "subscribe": _sub("challenge_settled", {"thing1": "{title}", "thing2": "{result}", "amount3": "{amount}"}),
    },
    NoticeEvent.CHALLENGE_CANCELLED: {
        "title": "挑战已取消",
        "body": "「{title}」参加人数不足已取消{stake_back}。",
        "page": "pages/challenges/index",
        "subscribe": _sub("challenge_cancelled", {"thing1": "{title}", "amount2": "{amount}"}),
    },
    NoticeEvent.CHALLENGE_POINTS_SETTLED: {  # a points stake: never shown as yuan
        "title": "挑战已结算",
        "body": "「{title}」已结算：你{result}，获得 {points} 积分。",
        "page": "pages/challenges/index",
        "subscribe": _sub(
            "challenge_points_settled", {"thing1": "{title}", "thing2": "{result}", "thing3": "{points} 积分"}
        ),
    },
    NoticeEvent.CHALLENGE_POINTS_CANCELLED: {
        "title": "挑战已取消",
        "body": "「{title}」参加人数不足已取消，挑战积分 {points} 已退回。",
        "page": "pages/challenges/index",
        "subscribe": _sub("challenge_points_cancelled", {"thing1": "{title}", "thing2": "{points} 积分已退回"}),
    },
}
