"""Admin API for risk rules: the active set, versions, drafts, activation and the backtest.

Roles: admins write (create, activate, deactivate); admins, finance and support read and backtest. Merchant
staff may read the versions of, and propose drafts for, their own campaigns' overrides (scope
``campaign:<id>`` of a campaign their merchant funds; another merchant's answers 404), never the platform's
rules, never activate, never backtest (a backtest shows labels: who was judged a fraud). A bad rule set
answers 422 ``invalid_risk_rules`` with ``parse_rules``' message, and nothing is stored.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from flask import Blueprint
from pydantic import AfterValidator, Field, StringConstraints, WithJsonSchema, model_validator

from models import OperatorRole, utcnow
from models.text import shown_text
from risk import backtest as backtests
from risk import rulesets
from risk.rules import (
    ACTIONS,
    DEFAULT_RULES,
    MAX_CONDITIONS,
    MAX_RULES,
    OPS,
    RULES_SCHEMA,
    fields,
    parse_rules,
    parse_scope,
    platform_scope,
)
from web.admin import ANY_OPERATOR, PLATFORM, actor, long_reads
from web.api import endpoint
from web.errors import ValidationFailed
from web.schemas import Id, Instant, Model, Page, Reason

bp = Blueprint("risk_rules", __name__, url_prefix="/admin/api/risk/rules")

WRITERS = (OperatorRole.ADMIN,)
READERS = PLATFORM
PROPOSERS = (OperatorRole.ADMIN, OperatorRole.MERCHANT_STAFF)
BACKTEST_DAYS = 30  # the default window: the last 30 days of payments

Scope = Annotated[
    str,
    StringConstraints(max_length=24),
    WithJsonSchema({"type": "string", "pattern": "^(platform|campaign:[1-9][0-9]{0,9})$", "maxLength": 24}),
]
# Any JSON: ``parse_rules`` judges it, so a bad rule set is refused with its message naming the rule.
RulesIn = Annotated[Any, WithJsonSchema(RULES_SCHEMA)]
DraftIn = Annotated[Any, WithJsonSchema({"anyOf": [RULES_SCHEMA, {"type": "null"}]})]
# one line operators read (an empty one: no note)
Note = Annotated[
    str, StringConstraints(max_length=500, strip_whitespace=True), AfterValidator(lambda v: shown_text(v) if v else v)
]


class NewRuleSet(Model):
    scope: Scope
    rules: RulesIn
    note: Note | None = None
    reason: Reason


class RuleSetActivation(Model):
    reason: Reason


class RuleSetDeactivation(Model):
    scope: Scope
    reason: Reason


class VersionsQuery(Page):
    scope: Scope = "platform"


class BacktestIn(Model):
    rules: DraftIn = None
    rule_set_id: Id | None = None
    scope: Scope | None = None
    from_: Instant | None = Field(None, alias="from")
    to: Instant | None = None
    limit: int = Field(backtests.MAX_ORDERS, ge=1, le=backtests.MAX_ORDERS)

    @model_validator(mode="after")
    def one_source(self) -> BacktestIn:
        if (self.rules is None) == (self.rule_set_id is None):
            raise ValueError("send either rules (a draft) or rule_set_id")
        return self


@endpoint(bp, "", auth="operator", roles=READERS)
def active_rules():
    """The platform's active rules (or the defaults, marked), the campaigns' active overrides, the fields."""
    active = rulesets.active_rule_sets()
    platform = active.get(platform_scope())
    return {
        "scope": platform_scope(),
        "defaults": platform is None,
        "rule_set": rulesets.rule_set_json(platform) if platform else None,
        "rules": platform.rules if platform else [dict(rule) for rule in DEFAULT_RULES],
        "overrides": [
            {"id": rs.id, "scope": scope, "version": rs.version, "rules": rs.rules}
            for scope, rs in sorted(active.items())
            if scope != platform_scope()
        ],
        "fields": fields(),
        "actions": list(ACTIONS),
        "ops": list(OPS),
        "max_rules": MAX_RULES,
        "max_conditions": MAX_CONDITIONS,
    }


@endpoint(bp, "/versions", auth="operator", roles=ANY_OPERATOR, query=VersionsQuery)
def list_versions(query: VersionsQuery):
    """A scope's versions, newest first (merchant staff: their own campaigns' overrides)."""
    found = rulesets.versions(actor(), query.scope, query.limit, query.offset)
    return {"scope": query.scope, "items": [rulesets.rule_set_json(rs) for rs in found]}


@endpoint(bp, "/<int:rule_set_id>", auth="operator", roles=ANY_OPERATOR)
def get_rule_set(rule_set_id: int):
    """One version of a scope's rules."""
    return rulesets.rule_set_json(rulesets.visible_rule_set(actor(), rule_set_id))


@endpoint(bp, "", methods=["POST"], auth="operator", roles=PROPOSERS, body=NewRuleSet, idempotent=True, status=201)
def create_rule_set(body: NewRuleSet):
    """A draft version of a scope's rules (the platform's, or a campaign's overrides); activate it apart."""
    rs = rulesets.create_rule_set(actor(), body.scope, body.rules, body.note, body.reason)
    return rulesets.rule_set_json(rs), 201


@endpoint(bp, "/<int:rule_set_id>/activate", methods=["POST"], auth="operator", roles=WRITERS, body=RuleSetActivation)
def activate_rule_set(rule_set_id: int, body: RuleSetActivation):
    """Make a version its scope's active rules; the one active before is superseded."""
    return rulesets.rule_set_json(rulesets.activate(actor(), rule_set_id, body.reason))


@endpoint(bp, "/deactivate", methods=["POST"], auth="operator", roles=WRITERS, body=RuleSetDeactivation)
def deactivate_rule_set(body: RuleSetDeactivation):
    """No active rules for a scope: the platform back to the default rules, a campaign to no overrides."""
    was = rulesets.deactivate(actor(), body.scope, body.reason)
    return {"scope": body.scope, "deactivated": rulesets.rule_set_json(was)}


@endpoint(bp, "/backtest", methods=["POST"], auth="operator", roles=READERS, body=BacktestIn, reads=True)
def backtest(body: BacktestIn):
    """Replay a draft (or a stored version) over past paid orders and labels; writes nothing."""
    until = body.to or utcnow()
    since = body.from_ or until - timedelta(days=BACKTEST_DAYS)
    if since >= until:
        raise ValidationFailed("from must be before to", code="invalid_window")
    if body.rule_set_id is not None:
        rs = rulesets.visible_rule_set(actor(), body.rule_set_id)
        if body.scope is not None and body.scope != rs.scope:
            raise ValidationFailed(f"rule set {rs.id} is of scope {rs.scope}, not {body.scope}", code="scope_mismatch")
        scope, raw = rs.scope, rs.rules
    else:
        scope, raw = body.scope or platform_scope(), body.rules
        rulesets.visible_scope(actor(), scope)  # a stored version's scope was checked with it
    rules = parse_rules(raw, overrides=parse_scope(scope) is not None)
    # a read only: the orders are read apart from the request's transaction (on SQLite it holds the one write lock)
    with long_reads():  # one at a time per operator, LONG_READS_AT_ONCE in all
        return backtests.backtest(rules, scope, since, until, body.limit, rule_set_id=body.rule_set_id, apart=True)


__all__ = ["bp"]
