"""Versioned, audited rule sets: ``platform`` for every order, ``campaign:<id>`` for a campaign's overrides.

Each scope numbers its versions 1, 2, 3…; a version is created as a ``draft`` (validated by ``parse_rules``,
stored as given, never edited afterwards), becomes ``active`` when activated — the scope's previous active
version becoming ``superseded`` in the same transaction — and a scope can be deactivated (the platform back
to ``DEFAULT_RULES``, a campaign back to no overrides). A superseded version may be activated again (a
roll-back is one more audited activation). Activation and deactivation lock the scope's rows (id order), so
two at once end with exactly one active; a partial unique index makes any other outcome impossible.

Merchant staff may read and propose drafts for their own campaigns' overrides only (another merchant's
campaign is "not found"); activating is the platform admin's (the web layer's roles). Every create,
activate and deactivate writes an audit line with its reason in the caller's transaction. Operations flush;
the shell commits.
"""

from __future__ import annotations

from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError

from models import Campaign, RiskRuleSet, RuleSetStatus, db, utcnow
from models.operators import Actor, audit
from risk.rules import Rule, campaign_scope, forget_rules, parse_rules, parse_scope, platform_scope, readable_rules

CREATE_ATTEMPTS = 3  # a version number taken by a concurrent create is taken again, this many times


class RuleSetError(Exception):
    code, kind = "risk_rule_set_error", "invalid"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class RuleSetNotFound(RuleSetError):
    code, kind = "not_found", "not_found"


class RuleSetForbidden(RuleSetError):
    code, kind = "forbidden", "forbidden"


class RuleSetConflict(RuleSetError):
    code, kind = "risk_rule_set_conflict", "conflict"


def rule_set_json(rs: RiskRuleSet) -> dict:
    return {
        "id": rs.id,
        "scope": rs.scope,
        "version": rs.version,
        "status": rs.status,
        "rules": rs.rules,
        "note": rs.note,
        "created_by": rs.created_by,
        "created_at": rs.created_at.isoformat(),
        "activated_at": rs.activated_at.isoformat() if rs.activated_at else None,
    }


def visible_scope(actor: Actor, scope: object) -> int | None:
    """The scope's campaign id (None: the platform), if the actor may see it: a campaign must exist and, for
    merchant staff, be funded by their merchant (else not found); merchant staff have no platform scope."""
    campaign_id = parse_scope(scope)
    merchant = actor.merchant_scope
    if campaign_id is None:
        if merchant is not None:
            raise RuleSetForbidden("merchant staff read and propose only their own campaigns' overrides")
        return None
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None or (merchant is not None and campaign.funder_merchant_id != merchant):
        raise RuleSetNotFound(f"campaign {campaign_id} not found")
    return campaign_id


def visible_rule_set(actor: Actor, rule_set_id: int) -> RiskRuleSet:
    rs = db.session.get(RiskRuleSet, rule_set_id)
    if rs is None:
        raise RuleSetNotFound(f"rule set {rule_set_id} not found")
    try:
        visible_scope(actor, rs.scope)
    except (RuleSetNotFound, RuleSetForbidden):
        raise RuleSetNotFound(f"rule set {rule_set_id} not found") from None
    return rs


def create_rule_set(actor: Actor, scope: object, raw_rules: object, note: str | None, reason: str) -> RiskRuleSet:
    """A new draft version of the scope's rules (``RulesError`` naming what is wrong, nothing stored)."""
    campaign_id = visible_scope(actor, scope)
    rules = parse_rules(raw_rules, overrides=campaign_id is not None)
    for _ in range(CREATE_ATTEMPTS):
        version = (
            db.session.execute(select(func.max(RiskRuleSet.version)).where(RiskRuleSet.scope == scope)).scalar() or 0
        ) + 1
        rs = RiskRuleSet(
            scope=scope,
            version=version,
            rules=raw_rules,
            status=RuleSetStatus.DRAFT,
            note=note,
            created_by=actor.operator.id,
        )
        try:
            with db.session.begin_nested():  # a version taken meanwhile undoes only this insert
                db.session.add(rs)
                db.session.flush()
            break
        except IntegrityError:
            continue
    else:
        raise RuleSetConflict(f"other versions of {scope} were being created at the same time; try again")
    audit(
        actor,
        "risk_rules.create",
        "risk_rule_set",
        rs.id,
        reason,
        scope=scope,
        version=version,
        rules=[r.name for r in rules],
        note=note,
    )
    return rs


def _lock_scope(scope: str) -> list[RiskRuleSet]:
    """Every version of the scope, row-locked in id order and read as committed now (SQLite: BEGIN IMMEDIATE
    already serialises writers)."""
    stmt = (
        select(RiskRuleSet)
        .where(RiskRuleSet.scope == scope)
        .order_by(RiskRuleSet.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return list(db.session.execute(stmt).scalars())


def _forget_everywhere_here() -> None:
    """This process forgets its cached rules now and again when the caller commits (a request in between
    would otherwise cache the old set for ``RULES_CACHE_SECONDS``)."""
    forget_rules()
    event.listen(db.session(), "after_commit", lambda _session: forget_rules(), once=True)


def activate(actor: Actor, rule_set_id: int, reason: str) -> RiskRuleSet:
    """Make a version the scope's active rules; the scope's active one becomes superseded."""
    rs = visible_rule_set(actor, rule_set_id)
    scope = rs.scope
    versions = _lock_scope(scope)
    target = next(v for v in versions if v.id == rule_set_id)
    if target.status == RuleSetStatus.ACTIVE:
        raise RuleSetConflict(f"{scope} version {target.version} is already active", code="already_active")
    parse_rules(target.rules, overrides=scope != platform_scope())  # stored valid; still, never activate junk
    superseded = [v for v in versions if v.status == RuleSetStatus.ACTIVE]
    for v in superseded:
        v.status = RuleSetStatus.SUPERSEDED
    db.session.flush()  # before the new one: one active per scope holds at every statement
    target.status = RuleSetStatus.ACTIVE
    target.activated_at = utcnow()
    db.session.flush()
    audit(
        actor,
        "risk_rules.activate",
        "risk_rule_set",
        target.id,
        reason,
        scope=scope,
        version=target.version,
        superseded=[v.id for v in superseded],
    )
    _forget_everywhere_here()
    return target


def deactivate(actor: Actor, scope: object, reason: str) -> RiskRuleSet:
    """No active rules for the scope: the platform back to the defaults, a campaign back to no overrides."""
    visible_scope(actor, scope)
    active = [v for v in _lock_scope(scope) if v.status == RuleSetStatus.ACTIVE]
    if not active:
        raise RuleSetConflict(f"{scope} has no active rules", code="no_active_rules")
    [was] = active
    was.status = RuleSetStatus.SUPERSEDED
    db.session.flush()
    audit(actor, "risk_rules.deactivate", "risk_rule_set", was.id, reason, scope=scope, version=was.version)
    _forget_everywhere_here()
    return was


def versions(actor: Actor, scope: object, limit: int = 50, offset: int = 0) -> list[RiskRuleSet]:
    """The scope's versions, newest first."""
    visible_scope(actor, scope)
    stmt = (
        select(RiskRuleSet)
        .where(RiskRuleSet.scope == scope)
        .order_by(RiskRuleSet.version.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(db.session.execute(stmt).scalars())


def active_rule_sets() -> dict[str, RiskRuleSet]:
    """Every scope's active version, read now (not the per-process cache)."""
    rows = db.session.execute(select(RiskRuleSet).where(RiskRuleSet.status == RuleSetStatus.ACTIVE)).scalars()
    return {rs.scope: rs for rs in rows}


def active_rules_now() -> dict[str, tuple[Rule, ...]]:
    """Every scope's active rules, parsed, read now (rules that cannot be read: as payments decide with them,
    ``risk.rules.readable_rules``)."""
    return {scope: readable_rules(scope, rs.rules) for scope, rs in active_rule_sets().items()}


__all__ = [
    "RuleSetConflict",
    "RuleSetError",
    "RuleSetForbidden",
    "RuleSetNotFound",
    "activate",
    "active_rule_sets",
    "active_rules_now",
    "campaign_scope",
    "create_rule_set",
    "deactivate",
    "rule_set_json",
    "versions",
    "visible_rule_set",
    "visible_scope",
]
