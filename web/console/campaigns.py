"""Console pages: campaigns (see web/console/__init__.py).

The list, a create form, and a campaign's page (details, budget gauge, activate / pause / end with a
reason, a new rules version, a what-if replay), each over the admin API's own views
(``web/campaign_admin.py``, ``web/insights.py``): the role check, merchant scoping (another merchant's
campaign answers 404), validation, audit and commit are the API's. This module only turns form strings
into the API's types (yuan → fen, Beijing datetime-local → aware datetimes, JSON textareas → objects)
and the API's answers into pages.
"""

from __future__ import annotations

import json
from datetime import datetime

from flask import flash, g, redirect, request, url_for

from models.base import BEIJING
from money import MoneyError, parse_yuan
from rebate.rules import Form as RuleForm
from web.campaign_admin import create_campaign, get_campaign, list_campaigns, replace_rules, transition
from web.campaign_admin import validate_campaign as check_campaign
from web.console import act as console_act
from web.console import allowed, bp, charts, form_data, may, page_offset, read, render
from web.guards import form_json, instant_in_range
from web.insights import simulate_rules

PAGE_SIZE = 50
ACTIONS = {
    "activate": "已启用 · Campaign activated.",
    "pause": "已暂停 · Campaign paused.",
    "end": "已结束 · Campaign ended.",
}
# The API's fen fields and the form's yuan inputs that carry them.
YUAN_FIELDS = {
    "budget_limit_fen": "budget_limit_yuan",
    "packet_amount_fen": "packet_amount_yuan",
    "packet_min_spend_fen": "packet_min_spend_yuan",
}
EXAMPLE_RULES = {
    "applies_to": "packet",
    "roles": [
        {"role": "consumer", "rate_bps": 500, "form": RuleForm.BALANCE, "cap_fen": 2000},
        {"role": "inviter", "rate_bps": 300, "form": RuleForm.WECHAT_CHANGE, "cap_fen": 750},
    ],
}
EXAMPLE_TRIGGER = {"kind": "claim_code"}


def _pretty(value) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=False)


def _act(view, *, body: dict, done: str = "", inputs: dict | None = None, **path):
    """``web.console.act``, with the API's problems put beside the form's inputs (fen fields beside the
    yuan inputs; ``inputs`` renames others)."""
    result = console_act(view, body=body, done=done, **path)
    if result is None:
        names = YUAN_FIELDS | (inputs or {})
        g.form_errors = {names.get(field, field): problem for field, problem in g.get("form_errors", {}).items()}
    return result


def _refuse(problems: dict[str, str]) -> None:
    """The form's own conversion problems, shown like the API's (nothing is sent)."""
    flash("请检查表单 · Please check the form — " + "; ".join(f"{f}: {p}" for f, p in problems.items()), "error")
    g.form_errors = problems


# --- converting form strings ------------------------------------------------------------------------


class Form:
    """Reads a posted form into the API's types, noting each field it cannot convert."""

    def __init__(self, data) -> None:
        self.data = data
        self.problems: dict[str, str] = {}

    def text(self, name: str) -> str | None:
        value = (self.data.get(name) or "").strip()
        return value or None

    def integer(self, name: str) -> int | None:
        value = self.text(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            self.problems[name] = "请输入整数 · enter a whole number"
            return None

    def fen(self, name: str) -> int | None:
        value = self.text(name)
        if value is None:
            return None
        try:
            return parse_yuan(value)
        except MoneyError:
            self.problems[name] = "请输入金额（元，最多两位小数）· enter an amount in yuan with at most two decimals"
            return None

    def moment(self, name: str) -> datetime | None:
        """A ``datetime-local`` input, read as Beijing time."""
        value = self.text(name)
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(value)
            return instant_in_range(moment.replace(tzinfo=BEIJING) if moment.tzinfo is None else moment)
        except ValueError:
            self.problems[name] = "请输入 2000 至 2099 年的日期时间 · enter a date and time from 2000 to 2099"
            return None

    def json_object(self, name: str, default=None):
        value = self.text(name)
        if value is None:
            return default
        parsed, problem = form_json(value)
        if problem is not None:
            self.problems[name] = f"JSON 格式错误 · JSON syntax error: {problem}"
            return default
        return parsed

    def words(self, name: str) -> list[str]:
        return [w.strip() for w in (self.data.get(name) or "").split(",") if w.strip()]


# --- list ------------------------------------------------------------------------------------------


@bp.route("/campaigns")
def campaigns():
    form = Form(request.args)
    limit = min(max(form.integer("limit") or PAGE_SIZE, 1), 500)
    offset = page_offset()  # as every list page: past 10,000,000 (or not a whole number) is the first page
    answer = read(list_campaigns, query={"limit": limit, "offset": offset})
    return render(
        "console/campaigns.html",
        items=answer["items"],
        limit=limit,
        offset=offset,
        may_create=may(create_campaign),
    )


# --- create ----------------------------------------------------------------------------------------


def _new_form_defaults() -> dict:
    scope = g.operator.merchant_id
    return {
        "name": "",
        "issuer_type": "merchant" if scope else "platform",
        "issuer_merchant_id": scope or "",
        "funder_type": "merchant_deposit" if scope else "platform_fund",
        "funder_merchant_id": scope or "",
        "packet_merchant_id": scope or "",
        "starts_at": "",
        "ends_at": "",
        "budget_limit_yuan": "1000.00",
        "packet_amount_yuan": "10.00",
        "packet_min_spend_yuan": "50.00",
        "packet_valid_days": "30",
        "max_packets": "",
        "packet_categories": "",
        "rules": _pretty(EXAMPLE_RULES),
        "trigger": _pretty(EXAMPLE_TRIGGER),
        "claim_limits": "{}",
        "reason": "",
    }


def _or(value, default):
    """An empty input is the API's default; anything typed goes to the API as typed (0 is refused there)."""
    return default if value is None else value


def _create_body(form: Form) -> dict:
    scope = g.operator.merchant_id
    body = {
        "name": form.text("name") or "",
        "issuer_type": form.text("issuer_type") or "platform",
        "issuer_merchant_id": form.integer("issuer_merchant_id"),
        "funder_type": form.text("funder_type") or "platform_fund",
        "funder_merchant_id": form.integer("funder_merchant_id"),
        "packet_merchant_id": form.integer("packet_merchant_id"),
        "starts_at": form.moment("starts_at"),
        "ends_at": form.moment("ends_at"),
        "budget_limit_fen": form.fen("budget_limit_yuan"),
        "packet_amount_fen": form.fen("packet_amount_yuan"),
        "packet_min_spend_fen": _or(form.fen("packet_min_spend_yuan"), 0),
        "packet_valid_days": _or(form.integer("packet_valid_days"), 30),
        "max_packets": form.integer("max_packets"),
        "packet_categories": form.words("packet_categories"),
        "rules": form.json_object("rules", {}),
        "trigger": form.json_object("trigger", {}),
        "claim_limits": form.json_object("claim_limits", {}),
        "reason": form.text("reason"),
    }
    if scope is not None:  # merchant staff run their own merchant's campaigns only (the API refuses others)
        body |= {
            "issuer_type": "merchant",
            "issuer_merchant_id": scope,
            "funder_type": "merchant_deposit",
            "funder_merchant_id": scope,
        }
    return body


@bp.route("/campaigns/new", methods=["GET", "POST"])
def campaign_new():
    allowed(create_campaign)
    if request.method == "GET":
        return render("console/campaign_new.html", form=_new_form_defaults(), checked=None)
    data = form_data()
    form = Form(data)
    body = _create_body(form)
    checked = None
    if form.problems:
        _refuse(form.problems)
    elif "check" in data:
        checked = _act(check_campaign, body=body)  # the page shows the answer beside the form
    else:
        created = _act(create_campaign, body=body, done="已创建草稿活动 · Draft campaign created.")
        if created is not None:
            return redirect(url_for("console.campaign", campaign_id=created["id"]))
    form_values = {**_new_form_defaults(), **{k: v for k, v in data.items() if k not in ("check", "create")}}
    if g.operator.merchant_id is not None:
        form_values |= {
            k: v for k, v in _new_form_defaults().items() if k.endswith("merchant_id") or k.endswith("_type")
        }
    return render("console/campaign_new.html", form=form_values, checked=checked)


# --- one campaign ----------------------------------------------------------------------------------


def _show(campaign_id: int, *, rules_text: str | None = None, what_if: dict | None = None, result=None):
    campaign = read(get_campaign, campaign_id=campaign_id)
    used = campaign["budget_reserved_fen"] + campaign["budget_committed_fen"]
    limit = campaign["budget_limit_fen"]
    current_rules = _pretty(campaign["rules"])
    return render(
        "console/campaign.html",
        c=campaign,
        used_fen=used,
        left_fen=None if limit is None else limit - used,
        gauge=charts.gauge(used, limit),
        current_rules=current_rules,
        rules_text=current_rules if rules_text is None else rules_text,
        what_if=what_if or {"what_if_rules": current_rules, "days": "30", "budget_limit_yuan": ""},
        result=result,
        may_manage=may(transition),
        may_simulate=may(simulate_rules),
    )


@bp.route("/campaigns/<int:campaign_id>")
def campaign(campaign_id: int):
    return _show(campaign_id)


@bp.route("/campaigns/<int:campaign_id>/<any(activate, pause, end):action>", methods=["POST"])
def campaign_transition(campaign_id: int, action: str):
    reason = Form(form_data()).text("reason") or ""
    _act(transition, body={"reason": reason}, done=ACTIONS[action], campaign_id=campaign_id, action=action)
    return redirect(url_for("console.campaign", campaign_id=campaign_id))


@bp.route("/campaigns/<int:campaign_id>/rules", methods=["POST"])
def campaign_rules(campaign_id: int):
    data = form_data()
    form = Form(data)
    rules = form.json_object("rules", {})
    if form.problems:
        _refuse(form.problems)
    else:
        body = {"rules": rules, "reason": form.text("reason") or ""}
        done = "已保存新版本规则 · New rules version saved."
        if _act(replace_rules, body=body, done=done, campaign_id=campaign_id) is not None:
            return redirect(url_for("console.campaign", campaign_id=campaign_id))
    return _show(campaign_id, rules_text=data.get("rules", ""))


@bp.route("/campaigns/<int:campaign_id>/simulate", methods=["POST"])
def campaign_simulate(campaign_id: int):
    """The what-if replay (reads only; a POST because the draft rules are a body)."""
    data = form_data()
    form = Form(data)
    body = {
        "rules": form.json_object("what_if_rules", {}),
        "days": _or(form.integer("days"), 30),
        "budget_limit_fen": form.fen("budget_limit_yuan"),
    }
    result = None
    if form.problems:
        _refuse(form.problems)
    else:
        sent = {k: v for k, v in body.items() if v is not None}
        result = _act(simulate_rules, body=sent, inputs={"rules": "what_if_rules"}, campaign_id=campaign_id)
    what_if = {k: data.get(k, "") for k in ("what_if_rules", "days", "budget_limit_yuan")}
    return _show(campaign_id, what_if=what_if, result=result)
