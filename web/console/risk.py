"""The risk team's pages beside reviews and bans: rule sets with their backtest, and collusion communities.

* ``console.risk_rules``: the active platform rules and campaign overrides, a scope's versions, a new draft
  (rules as JSON, checked by the API's own parser) and a backtest of a draft or a stored version —
  ``web.risk_rules_api``.
* ``console.risk_rule_set``: one version, its activation (admins) and its backtest.
* ``console.communities`` / ``console.community``: what the collusion job found, with the review case each
  opened — ``web.communities_api``.

No query and no change here: every read and action is the admin API's own view (``read`` / ``act``).
"""

from __future__ import annotations

import json
import re

from flask import flash, g, redirect, request, url_for

from web.communities_api import get_community, list_communities
from web.console import act, allowed, bp, day_start, form_data, may, page_offset, read, render
from web.guards import day_in_range, form_json
from web.risk_rules_api import (
    activate_rule_set,
    active_rules,
    backtest,
    create_rule_set,
    deactivate_rule_set,
    get_rule_set,
    list_versions,
)

PAGE = 50
SCOPE = re.compile(r"^(platform|campaign:[1-9][0-9]{0,9})$")
LOCAL_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _offset() -> int:
    return page_offset()


def _scope(raw: str | None) -> str:
    raw = (raw or "platform").strip()
    return raw if SCOPE.fullmatch(raw) else "platform"


def _rules_json(text: str) -> object | None:
    """The draft's JSON, or None with the problem flashed beside the field (the API judges the rules)."""
    parsed, problem = form_json(text)
    if problem is not None:
        g.form_errors = {"rules": f"not JSON: {problem}"}
        flash("规则不是有效的 JSON The rules are not valid JSON", "error")
        return None
    return parsed


def _day(text: str, end: bool) -> str | None:
    """A date field (a Beijing day) as the window's edge: the day's start, or the next day's start."""
    text = text.strip()
    if not LOCAL_DAY.fullmatch(text):
        return None
    from datetime import date  # noqa: PLC0415

    try:
        day = day_in_range(date.fromisoformat(text))  # not one of 2000 to 2099: no edge (the day after 9999-12-31)
    except ValueError:
        return None
    return day_start(day, 1 if end else 0)


def _rules_page(status: int = 200, form: dict | None = None, result: dict | None = None):
    scope = _scope(request.args.get("scope") or (form or {}).get("scope"))
    offset = _offset()
    active = read(active_rules) if may(active_rules) else None
    versions = []  # merchant staff have no platform scope: only their campaigns' overrides (?scope=campaign:N)
    if active is not None or scope != "platform":
        versions = read(list_versions, query={"scope": scope, "limit": PAGE, "offset": offset})["items"]
    draft = (form or {}).get("rules")
    if draft is None:
        draft = json.dumps(active["rules"] if active else [], ensure_ascii=False, indent=2)
    body = render(
        "console/risk_rules.html",
        active=active,
        scope=scope,
        versions=versions,
        offset=offset,
        page=PAGE,
        form={**(form or {}), "rules": draft},
        result=result,
        may_propose=may(create_rule_set),
        may_backtest=may(backtest),
        may_activate=may(activate_rule_set),
    )
    return body, status


@bp.route("/risk/rules", methods=["GET", "POST"])
def risk_rules():
    if request.method == "GET":
        return _rules_page()
    allowed(create_rule_set)
    form = form_data()
    raw = {k: form.get(k, "") for k in ("scope", "rules", "note", "reason")}
    rules = _rules_json(raw["rules"])
    if rules is None:
        return _rules_page(422, form=raw)
    body = {"scope": raw["scope"].strip(), "rules": rules, "reason": raw["reason"].strip()}
    if raw["note"].strip():
        body["note"] = raw["note"].strip()
    created = act(create_rule_set, body=body)
    if created is None:
        return _rules_page(g.refused_status, form=raw)
    flash(f"草稿已保存 Draft saved: {created['scope']} v{created['version']} (#{created['id']}), not active yet", "ok")
    return redirect(url_for("console.risk_rule_set", rule_set_id=created["id"]))


@bp.route("/risk/rules/backtest", methods=["POST"])
def risk_backtest():
    allowed(backtest)
    form = form_data()
    raw = {k: form.get(k, "") for k in ("scope", "rules", "rule_set_id", "from", "to")}
    body: dict = {}
    if raw["rule_set_id"].strip():
        given = raw["rule_set_id"].strip()
        body["rule_set_id"] = int(given) if given.isdecimal() and len(given) <= 10 else given
    else:
        rules = _rules_json(raw["rules"])
        if rules is None:
            return _rules_page(422, form=raw)
        body["rules"], body["scope"] = rules, raw["scope"].strip()
    for name, end in (("from", False), ("to", True)):
        if raw[name].strip():
            body[name] = _day(raw[name], end) or raw[name].strip()
    result = act(backtest, body=body)
    if body.get("rule_set_id") and result is not None:
        return _rule_set_page(int(body["rule_set_id"]), result=result)
    return _rules_page(200 if result is not None else g.refused_status, form=raw, result=result)


def _rule_set_page(rule_set_id: int, status: int = 200, result: dict | None = None):
    rule_set = read(get_rule_set, rule_set_id=rule_set_id)
    body = render(
        "console/risk_rule_set.html",
        rs=rule_set,
        rules_text=json.dumps(rule_set["rules"], ensure_ascii=False, indent=2),
        result=result,
        may_backtest=may(backtest),
        may_activate=may(activate_rule_set),
    )
    return body, status


@bp.route("/risk/rules/<int:rule_set_id>")
def risk_rule_set(rule_set_id: int):
    return _rule_set_page(rule_set_id)


@bp.route("/risk/rules/<int:rule_set_id>/activate", methods=["POST"])
def risk_rule_set_activate(rule_set_id: int):
    allowed(activate_rule_set)
    reason = form_data().get("reason", "").strip()
    done = f"已启用 Activated: rule set #{rule_set_id} is now its scope's rules"
    if act(activate_rule_set, body={"reason": reason}, done=done, rule_set_id=rule_set_id) is None:
        return _rule_set_page(rule_set_id, g.refused_status)
    return redirect(url_for("console.risk_rule_set", rule_set_id=rule_set_id))


@bp.route("/risk/rules/deactivate", methods=["POST"])
def risk_rules_deactivate():
    allowed(deactivate_rule_set)
    form = form_data()
    scope = form.get("scope", "").strip()
    body = {"scope": scope, "reason": form.get("reason", "").strip()}
    if act(deactivate_rule_set, body=body, done=f"已停用 Deactivated: {scope} has no active rule set") is None:
        return _rules_page(g.refused_status)
    return redirect(url_for("console.risk_rules", scope=_scope(scope)))


@bp.route("/risk/communities")
def communities():
    suspicious = request.args.get("suspicious", "true").strip()
    offset = _offset()
    query = {"limit": PAGE, "offset": offset, "suspicious": suspicious if suspicious in ("true", "false") else ""}
    items = read(list_communities, query=query)["items"]
    return render("console/risk_communities.html", items=items, suspicious=suspicious, offset=offset, page=PAGE)


@bp.route("/risk/communities/<int:community_id>")
def community(community_id: int):
    return render("console/risk_community.html", c=read(get_community, community_id=community_id))
