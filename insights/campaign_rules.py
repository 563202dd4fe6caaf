"""A campaign's rules in words, for the people it pays: the public "poster" of ``/c/<id>``.

Anti-scam advice says: before you take a red packet, know who organises it, who pays for it, what
each side gets and where to complain. ``campaign_rules`` answers exactly that, as a plain dict (the
JSON of ``GET /api/v1/campaigns/<id>/rules``, and what the page ``/c/<id>`` renders), every amount
in fen with yuan beside it and every rate in basis points with the percent beside it.

Public, like a poster, so it shows only what a poster would: never the deposit's balance, the risk
rules, operators' notes, a user issuer's or funder's identity, or the exact budget. The budget still
available is rounded DOWN to a coarse figure (``BUDGET_STEP_FEN``) and a percentage band
(``BUDGET_BAND_PERCENT``): the exact figure moves with every claim and payment, so publishing it would
let anyone follow a merchant's sales and spending claim by claim (commercial data of the merchant),
and time a rush of claims to the last yuan; rounding down never promises money that is not there.

Every restriction that can refuse a buyer is spelled out (``restrictions``), exactly as ``rebate`` enforces
it: the Beijing weekdays and hours and the regions and channels of ``rebate.packets.check_audience``
(checked when a packet is issued or claimed and again when an order spends it), the one merchant whose
orders a packet is usable on (``rebate.orders``: the packet's merchant, and a merchant's campaign serves
only its own orders), the products and categories a packet covers, and the minimum time between two
claims (the campaign's ``ClaimLimits.min_interval_seconds`` per device and network address, the
platform's ``CLAIM_PERSON_INTERVAL_SECONDS`` per person). A buyer who reads "any time, anywhere" must
not then be refused.

Rules are versioned (``CampaignRules``) and a packet pays under the version it was issued with
(``RedPacket.rules_version``): ``version`` shows that one (``NotFound`` for a version the campaign
never had), and ``rules_version`` says which is shown and whether newer rules exist. The packet's
terms, dates and limits are the campaign's as they are now (they are not versioned).

Only campaigns people can meet are public: active, paused and ended ones; a draft (or an unknown id)
is ``NotFound``. Reads only (``insights`` never writes, docs/architecture.md §2).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from models import Campaign, CampaignStatus, FunderType, IssuerType, Merchant, Product, db, merchant_name
from models.base import beijing
from models.triggers import Trigger, TriggerError, TriggerKind
from money import format_yuan
from rebate.campaigns import merchant_of, rules_of
from rebate.errors import NotFound
from rebate.packets import top_face_fen
from rebate.rules import Form, RoleRule, RuleSet
from risk.limits import ClaimLimits, ClaimLimitsError, PlatformLimits

PUBLIC_STATUSES = (CampaignStatus.ACTIVE, CampaignStatus.PAUSED, CampaignStatus.ENDED)
BUDGET_STEP_FEN = 100_00  # the budget left is shown rounded down to whole 100 yuan...
BUDGET_BAND_PERCENT = 10  # ...and as a band of 10 percent of the total (rounded down)
WECHAT_PAY_COMPLAINT = "微信支付 → 我 → 服务 → 钱包 → 账单（交易记录）→ 选择该笔交易 → 投诉 (WeChat Pay: Me → Services → Wallet → Bill → the payment → Complain)"  # noqa: E501

STATUS_WORDS = {
    CampaignStatus.ACTIVE: "进行中 (running)",
    CampaignStatus.PAUSED: "已暂停 (paused: no new packets or rebates until it resumes)",
    CampaignStatus.ENDED: "已结束 (ended)",
}


def _status_words(campaign, now: datetime | None = None) -> str:
    """The status as a buyer meets it at ``now``: a campaign past its end date is over and one before its start has
    not begun, whatever its status says (``rebate.campaigns.is_running``: neither issues nor pays)."""
    if now is not None and campaign.status != CampaignStatus.ENDED:
        if campaign.ends_at is not None and now >= campaign.ends_at:
            return f"已结束 (ended: its end date, {_when(campaign.ends_at)} Beijing time, has passed)"
        if campaign.status == CampaignStatus.ACTIVE and campaign.starts_at is not None and now < campaign.starts_at:
            return f"未开始 (not started yet: it starts {_when(campaign.starts_at)} Beijing time)"
    if campaign.status == CampaignStatus.PAUSED and campaign.paused_for_deposit:
        return DEPOSIT_PAUSE_WORDS
    return STATUS_WORDS[CampaignStatus(campaign.status)]


DEPOSIT_PAUSE_WORDS = "已暂停发放 (paused: no new packets; the packets already out still earn their rebates)"
ROLE_WORDS = {
    "issuer": "发券方 (the packet's issuer)",
    "consumer": "你（消费者）(you, the buyer)",
    "inviter": "邀请人 (the person who invited you)",
}
FORM_WORDS = {
    Form.WECHAT_CHANGE: "微信零钱 (WeChat Pay change)",
    Form.CASH_RED_PACKET: "微信现金红包 (a WeChat cash red packet)",
    Form.WECHAT_COUPON: "微信支付代金券 (a WeChat Pay coupon)",
    Form.CARD_COUPON: "微信卡券 (a WeChat card coupon)",
    Form.BALANCE: "平台余额 (your cash balance in the app)",
    Form.POINTS: "积分 (points)",
    Form.MERCHANT_CREDIT: "商家营销额度 (the merchant's marketing credit)",
}
BASE_WORDS = {"paid": "实付金额 (what the buyer paid)", "order_total": "订单金额 (the order total before packets)"}
TRIGGER_WORDS = {
    TriggerKind.ORDER_PAID: "下单支付后发放 (issued after a paid order)",
    TriggerKind.CLAIM_CODE: "凭领取码领取 (claimed with a code)",
    TriggerKind.CLAIM: "直接领取 (claimed in the app)",
    TriggerKind.REGISTRATION: "新用户注册发放 (issued when you register)",
    TriggerKind.DAILY_SIGN_IN: "每日签到发放 (issued at the daily sign-in)",
    TriggerKind.SHARE: "好友打开分享链接发放 (issued when a friend opens a share link)",
    TriggerKind.REFERRAL_BIND: "受邀注册发放 (issued when you join through an invitation)",
    TriggerKind.MANUAL: "由平台发放 (issued by the platform's staff)",
}
FUNDER_WORDS = {
    FunderType.PLATFORM_FUND: "平台营销资金 (the platform's marketing fund)",
    FunderType.MERCHANT_DEPOSIT: "商家预存的营销资金 (the merchant's prepaid marketing deposit)",
    FunderType.USER_STAKE: "用户自有资金 (a user's own stake)",
}
WEEKDAY_WORDS = {
    1: "周一 (Mon)",
    2: "周二 (Tue)",
    3: "周三 (Wed)",
    4: "周四 (Thu)",
    5: "周五 (Fri)",
    6: "周六 (Sat)",
    7: "周日 (Sun)",
}
CHANNEL_WORDS = {
    "mini_program": "微信小程序 (the WeChat mini program)",
    "official_account": "微信公众号 (the WeChat official account)",
    "h5": "手机网页 (the mobile web page)",
    "app": "App (the app)",
}
A_USER = "一位用户 (a user)"  # a person issuing or funding is never named on a public page


def campaign_rules(
    campaign_id: int,
    *,
    platform_name: str,
    complaint_contact: str,
    platform_limits: PlatformLimits,
    now: datetime,
    version: int | None = None,
) -> dict:
    """The public rules of a campaign that is active, paused or ended (at rules ``version``, else the current
    one); else ``NotFound``, also for a version the campaign never had."""
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None or campaign.status not in PUBLIC_STATUSES:
        raise NotFound(f"campaign {campaign_id} not found")
    if version is not None and not 1 <= version <= campaign.rules_version:
        raise NotFound(
            f"campaign {campaign_id} has no rules version {version} (its versions are 1 to {campaign.rules_version})",
            code="rules_version_not_found",
        )
    try:
        rules: RuleSet | None = rules_of(campaign, version)
    except LookupError:
        if version is not None:
            raise NotFound(
                f"campaign {campaign_id} has no rules version {version}", code="rules_version_not_found"
            ) from None
        rules = None
    limits = _limits(campaign, platform_limits)
    return {
        "id": campaign.id,
        "name": campaign.name,
        "status": campaign.status,
        "status_words": _status_words(campaign, now),
        "organiser": _party(campaign.issuer_type, campaign.issuer_merchant_id, platform_name),
        "funder": {
            **_party(_funder_party(campaign.funder_type), campaign.funder_merchant_id, platform_name),
            "funder_type": campaign.funder_type,
            "words": FUNDER_WORDS[FunderType(campaign.funder_type)],
        },
        "dates": _dates(campaign),
        "packet": _packet(campaign),
        "how_to_get": _trigger(campaign),
        "rules_version": _version(campaign, version),
        "rebates": [_role(r) for r in rules.roles] if rules else [],
        "rebate_days": _rebate_days(rules),
        "claim_limits": limits,
        "restrictions": _restrictions(campaign, limits),
        "budget": budget_left(campaign, now),
        "complaints": complaints(platform_name, complaint_contact),
        "as_of": beijing(now).isoformat(timespec="seconds"),
    }


def complaints(platform_name: str, complaint_contact: str) -> dict:
    """Where to complain: the platform's own channel, and WeChat Pay's complaint path for any payment."""
    return {"platform": f"{platform_name}: {complaint_contact}", "wechat_pay": WECHAT_PAY_COMPLAINT}


def percent(bps: int) -> str:
    """``1250`` → ``"12.5%"``, without a float."""
    whole, part = divmod(bps, 100)
    return f"{whole}{f'.{part:02d}'.rstrip('0') if part else ''}%"


def money(fen: int | None) -> dict | None:
    return None if fen is None else {"fen": fen, "yuan": format_yuan(fen)}


OVER_WORDS = "活动已结束，不再发放 (the campaign is over: nothing more is given out)"


def budget_left(campaign: Campaign, now: datetime | None = None) -> dict:
    """The money budget still available, coarsely (see the module's note): never the exact figure. A campaign
    that is over (ended, or past its end date at ``now``) has nothing left for anybody, whatever its budget holds."""
    available, limit = campaign.budget_available_fen, campaign.budget_limit_fen
    over = campaign.status == CampaignStatus.ENDED or (
        now is not None and campaign.ends_at is not None and now >= campaign.ends_at
    )
    if over:
        return {"limited": bool(limit), "over": True, "words": OVER_WORDS}
    if available is None or not limit:
        return {"limited": False, "over": False, "words": "不设总预算上限 (no total budget limit)"}
    available = max(available, 0)
    at_least = available // BUDGET_STEP_FEN * BUDGET_STEP_FEN
    # the band holding the share left: 100 % left is the top band (90-100 %), not "100-100 %"
    band = min(available * 100 // limit // BUDGET_BAND_PERCENT * BUDGET_BAND_PERCENT, 100 - BUDGET_BAND_PERCENT)
    if at_least:
        words = f"剩余预算至少 {format_yuan(at_least)} 元 (at least {format_yuan(at_least)} yuan left)"
    elif available:
        words = f"剩余预算不足 {format_yuan(BUDGET_STEP_FEN)} 元 (less than {format_yuan(BUDGET_STEP_FEN)} yuan left)"
    else:
        words = "预算已用完 (the budget is used up)"
    return {
        "limited": True,
        "over": False,
        "at_least_fen": at_least,
        "at_least_yuan": format_yuan(at_least),
        "percent_left_band": f"{band}-{min(band + BUDGET_BAND_PERCENT, 100)}%",
        "rounding": f"rounded down to {format_yuan(BUDGET_STEP_FEN)} yuan and to {BUDGET_BAND_PERCENT}% bands",
        "words": words,
    }


def _funder_party(funder_type: str) -> str:
    return {
        FunderType.PLATFORM_FUND: IssuerType.PLATFORM,
        FunderType.MERCHANT_DEPOSIT: IssuerType.MERCHANT,
        FunderType.USER_STAKE: IssuerType.USER,
    }[FunderType(funder_type)]


def _party(kind: str, merchant_id: int | None, platform_name: str) -> dict:
    if kind == IssuerType.MERCHANT and merchant_id is not None:
        merchant = db.session.get(Merchant, merchant_id)
        return {
            "type": IssuerType.MERCHANT.value,
            "merchant_id": merchant_id,
            "name": merchant.name if merchant else "?",
        }
    if kind == IssuerType.USER:
        return {"type": IssuerType.USER.value, "name": A_USER}
    return {"type": IssuerType.PLATFORM.value, "name": platform_name}


def _when(value: datetime | None) -> str | None:
    return beijing(value).isoformat(timespec="minutes") if value else None


def _dates(campaign: Campaign) -> dict:
    return {
        "timezone": "Asia/Shanghai (北京时间)",
        "starts_at": _when(campaign.starts_at),
        "ends_at": _when(campaign.ends_at),
        "usage_windows": campaign.usage_windows or {},
    }


def _issues_packets(campaign: Campaign) -> bool:
    """Whether the campaign issues packets: a face value, or tiers alone (``rebate.packets.top_face_fen``)."""
    return top_face_fen(campaign) > 0


def _packet(campaign: Campaign) -> dict | None:
    if not _issues_packets(campaign):
        return None
    fixed = campaign.packet_valid_from is not None or campaign.packet_valid_until is not None
    face = campaign.packet_amount_fen if campaign.packet_amount_fen is not None else top_face_fen(campaign)
    return {
        "face_value": money(face),
        "tiers": [
            {"min_spend": money(t["min_spend_fen"]), "face_value": money(t["amount_fen"])}
            for t in campaign.packet_tiers or []
            if isinstance(t, dict) and {"min_spend_fen", "amount_fen"} <= set(t)
        ],
        "min_spend": money(campaign.packet_min_spend_fen or 0),
        "categories": list(campaign.packet_categories or []),
        "only_products": list(campaign.packet_products or []),
        "only_merchant_id": campaign.packet_merchant_id,
        "only_merchant_name": merchant_name(campaign.packet_merchant_id),
        "valid_days": None if fixed else campaign.packet_valid_days,
        "valid_from": _when(campaign.packet_valid_from),
        "valid_until": _when(campaign.packet_valid_until),
        "packets_per_order": campaign.max_packets_per_order,
        "regions": list(campaign.regions or []),
        "channels": list(campaign.channels or []),
    }


def _trigger(campaign: Campaign) -> dict:
    try:
        trigger = Trigger.parse(campaign.trigger)
    except TriggerError:
        trigger = Trigger(TriggerKind.MANUAL)
    return {
        "kind": trigger.kind.value,
        "words": TRIGGER_WORDS[trigger.kind],
        "min_order": money(trigger.min_order_fen) if trigger.min_order_fen else None,
        "first_order_only": trigger.first_order_only,
    }


def _role(rule: RoleRule) -> dict:
    """One side's share in numbers and in words."""
    words = (
        f"{ROLE_WORDS[rule.role]}: {percent(rule.rate_bps)} of {BASE_WORDS[rule.base]}"
        + (f", at most {format_yuan(rule.cap_fen)} yuan per order" if rule.cap_fen is not None else "")
        + (f", on orders from {format_yuan(rule.min_order_fen)} yuan" if rule.min_order_fen else "")
        + _tier_words(rule)
        + _window_words(rule)
        + _category_words(rule)
        + f", paid as {FORM_WORDS[rule.form]}"
        + _choice_words(rule)
    )
    if rule.condition is not None:
        words += f"; paid once {', '.join(rule.condition.milestones)} within {rule.condition.window_days} days"
    return {
        "role": rule.role,
        "who": ROLE_WORDS[rule.role],
        "rate_bps": rule.rate_bps,
        "rate_percent": percent(rule.rate_bps),
        "base": rule.base,
        "cap": money(rule.cap_fen),
        "min_order": money(rule.min_order_fen),
        "form": rule.form.value,
        "form_words": FORM_WORDS[rule.form],
        "fallback_form": rule.fallback_form.value if rule.fallback_form else None,
        "forms": [{"form": f.value, "form_words": FORM_WORDS[f]} for f in rule.allowed_forms],
        "category_rates": [
            {"category": c, "rate_bps": bps, "rate_percent": percent(bps)} for c, bps in rule.category_bps or ()
        ],
        "tiers": [
            {"min_order": money(t.min_order_fen), "rate_bps": t.rate_bps, "rate_percent": percent(t.rate_bps)}
            for t in sorted(rule.tiers, key=lambda t: t.min_order_fen)
        ],
        "multiplier_windows": [
            {"starts_at": _when(w.starts_at), "ends_at": _when(w.ends_at), "factor_percent": percent(w.factor_bps)}
            for w in rule.windows
        ],
        "condition": None
        if rule.condition is None
        else {
            "milestones": list(rule.condition.milestones),
            "within_days": rule.condition.window_days,
            "release": rule.condition.release,
        },
        "words": words + ".",
    }


def _tier_words(rule: RoleRule) -> str:
    """``"; from 100.00 yuan: 10%"``: the rate the tier reached replaces the whole-order rate (``rebate.rules``)."""
    if not rule.tiers:
        return ""
    tiers = "; ".join(
        f"from {format_yuan(t.min_order_fen)} yuan: {percent(t.rate_bps)}"
        for t in sorted(rule.tiers, key=lambda t: t.min_order_fen)
    )
    return f" ({tiers}, the highest tier the order reaches)"


def _window_words(rule: RoleRule) -> str:
    """``"; ×200% from … to … (Beijing time)"``: every rate multiplied in a window (the first listed, where two
    overlap)."""
    if not rule.windows:
        return ""
    windows = "; ".join(
        f"×{percent(w.factor_bps)} from {_when(w.starts_at)} to {_when(w.ends_at)}" for w in rule.windows
    )
    overlap = ", the first listed where they overlap" if len(rule.windows) > 1 else ""
    return f" (rates multiplied {windows}, Beijing time{overlap})"


def _category_words(rule: RoleRule) -> str:
    """``"; 8% on fruit (the rest at 5%)"``: each category's part of the base at its own rate."""
    if not rule.category_bps:
        return ""
    rates = ", ".join(f"{percent(bps)} on {category}" for category, bps in rule.category_bps)
    return f" ({rates}, shared out over the order's lines by value; other lines at {percent(rule.rate_bps)})"


def _choice_words(rule: RoleRule) -> str:
    others = [FORM_WORDS[f] for f in rule.allowed_forms if f != rule.form]
    return f", or by your choice {' or '.join(others)} (set in your preferences)" if others else ""


def _rebate_days(rules: RuleSet | None) -> dict:
    return {
        "referral_days": rules.referral_days if rules else None,
        "attribution_days": rules.attribution_days if rules else None,
    }


def _limits(campaign: Campaign, platform: PlatformLimits) -> dict:
    """What limits one person: the campaign's own and the platform's (never the per-network daily count or the
    device ones but for the time between claims, which a buyer meets)."""
    try:
        own = ClaimLimits.parse(campaign.claim_limits)
    except ClaimLimitsError:
        own = ClaimLimits()
    return {
        "per_person": own.per_person,
        "per_person_per_day": own.per_person_per_day,
        "platform_per_person_per_day": platform.person_per_day or None,
        "platform_minutes_between_claims": _minutes(platform.person_interval_seconds),
        "platform_seconds_between_claims": platform.person_interval_seconds or None,
        "minutes_between_claims": _minutes(own.min_interval_seconds),
        "seconds_between_claims": own.min_interval_seconds or None,
        "max_packets": campaign.max_packets,
    }


def _minutes(seconds: int | None) -> int | None:
    """Whole minutes, rounded up (a buyer who waits that long is never refused); None: no such wait."""
    return (seconds + 59) // 60 if seconds else None


def _wait_words(seconds: int) -> str:
    if seconds % 60:
        return f"{seconds} 秒 ({seconds} seconds)"
    return f"{seconds // 60} 分钟 ({seconds // 60} minutes)"


def _version(campaign: Campaign, version: int | None) -> dict:
    shown, current = version or campaign.rules_version, campaign.rules_version
    if shown == current:
        words = f"当前规则（第 {shown} 版）(the current rules, version {shown})"
    else:
        words = (
            f"第 {shown} 版规则，已有更新的第 {current} 版；用这个版本发放的红包仍按第 {shown} 版返利 "
            f"(rules version {shown}; newer rules exist (version {current}); packets issued under version "
            f"{shown} still earn by version {shown})"
        )
    return {
        "shown": shown,
        "current": current,
        "is_current": shown == current,
        "newer_exists": shown < current,
        "words": words,
    }


def _restrictions(campaign: Campaign, limits: dict) -> dict:
    """Everything that can refuse a buyer, exactly as ``rebate`` checks it, in numbers and words; ``words``
    lists them all ("no restriction" is said only when there is none)."""
    windows = campaign.usage_windows if isinstance(campaign.usage_windows, dict) else {}
    weekdays = sorted({d for d in windows.get("weekdays") or [] if d in WEEKDAY_WORDS})
    hours = windows.get("hours") or None
    regions, channels = list(campaign.regions or []), list(campaign.channels or [])
    when = ("领取和下单使用", "both to get it and to order with it")
    out: dict = {
        "weekdays": None,
        "hours": None,
        "regions": None,
        "channels": None,
        "merchants": None,
        "products": None,
        "categories": None,
        "between_claims": None,
    }
    if weekdays:
        names = [WEEKDAY_WORDS[d] for d in weekdays]
        zh, en = "、".join(n.split(" ")[0] for n in names), ", ".join(n.split(" ")[1].strip("()") for n in names)
        out["weekdays"] = {
            "days": weekdays,
            "names": names,
            "words": f"仅限每周 {zh} {when[0]}（北京时间）(only on {en}, Beijing time, {when[1]})",
        }
    if hours:
        start, end = f"{hours[0]:02d}:00", f"{hours[1]:02d}:00"
        out["hours"] = {
            "from_hour": hours[0],
            "to_hour": hours[1],
            "from": start,
            "to": end,
            "words": f"仅限每天 {start} 至 {end} 前{when[0]}（北京时间）"
            f"(only from {start} until before {end}, Beijing time, {when[1]})",
        }
    if regions:
        out["regions"] = {
            "regions": regions,
            "words": f"仅限账户地区为 {'、'.join(regions)} 的用户 (only for users whose account region is "
            f"{', '.join(regions)}; an account without a region cannot use it)",
        }
    if channels:
        named = [CHANNEL_WORDS.get(c, c) for c in channels]
        out["channels"] = {
            "channels": channels,
            "names": named,
            "words": f"仅限通过 {' / '.join(named)} 领取和使用 (only through these channels)",
        }
    merchant_ids = list(dict.fromkeys(m for m in (campaign.packet_merchant_id, merchant_of(campaign)) if m))
    if merchant_ids and _issues_packets(campaign):
        names = [merchant_name(m) or "?" for m in merchant_ids]
        out["merchants"] = {
            "merchants": [{"merchant_id": m, "name": n} for m, n in zip(merchant_ids, names, strict=True)],
            "words": f"红包仅限在 {' 且 '.join(names)} 的订单使用 (the packet is only usable on orders from "
            f"{' and '.join(names)})",
        }
    elif merchant_of(campaign) is not None:  # no packet: a merchant's campaign rebates only its own orders
        owner = merchant_of(campaign)
        name = merchant_name(owner) or "?"
        out["merchants"] = {
            "merchants": [{"merchant_id": owner, "name": name}],
            "words": f"返利仅限 {name} 的订单 (rebates are only given on orders from {name})",
        }
    products = [p for p in campaign.packet_products or [] if isinstance(p, int) and not isinstance(p, bool)]
    if products and _issues_packets(campaign):
        found = dict(db.session.execute(select(Product.id, Product.name).where(Product.id.in_(products))).all())
        named = [{"product_id": p, "name": found.get(p, f"#{p}")} for p in products]
        out["products"] = {
            "products": named,
            "words": f"红包仅抵扣这些商品 {'、'.join(n['name'] for n in named)} (the packet only covers these "
            "products; the minimum spend counts them only)",
        }
    categories = list(campaign.packet_categories or [])
    if categories and _issues_packets(campaign):
        out["categories"] = {
            "categories": categories,
            "words": f"红包仅抵扣这些品类 {'、'.join(map(str, categories))} (the packet only covers these categories; "
            "the minimum spend counts them only)",
        }
    waits = []
    if limits["seconds_between_claims"]:
        wait = _wait_words(limits["seconds_between_claims"])
        waits.append(
            f"本活动同一设备或网络两次领取至少间隔 {wait} (this campaign: between two claims from one "
            "device or network address)"
        )
    if limits["platform_seconds_between_claims"]:
        wait = _wait_words(limits["platform_seconds_between_claims"])
        waits.append(f"全平台同一人两次领取红包至少间隔 {wait} (across the platform: between two claims by one person)")
    if waits:
        out["between_claims"] = {
            "minutes": limits["minutes_between_claims"],
            "platform_minutes": limits["platform_minutes_between_claims"],
            "words": "；".join(waits),
        }
    said = [v["words"] for v in out.values() if v]
    if not any(out[k] for k in ("weekdays", "hours", "regions", "channels", "merchants", "products", "categories")):
        said.insert(0, "不限时间、地区、渠道和商家 (any day and hour, any region, any channel, any merchant)")
    return {**out, "words": said}
