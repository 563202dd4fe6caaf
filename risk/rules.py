"""Risk rules: allow / block / review conditions over the score and named features, Radar's precedence.

A rule is ``{"name": str, "action": "allow" | "block" | "review", "when": [[field, op, value], ...]}``:
it matches when every condition holds (a condition on a feature unknown for the order never holds).
Precedence as in Stripe Radar: any matching allow rule allows; else any matching block rule blocks;
else any matching review rule sends to review; else allow. Rules live in versioned sets per scope:
``platform`` for every order, ``campaign:<id>`` for a campaign's overrides — a campaign's rule of the
same name replaces the platform's (an override with ``"off": true`` removes it), others add to them.

``parse_rules`` is the one definition of a valid rule set (the admin API and the rule-set operations
use it); ``decide`` evaluates; ``effective_rules`` merges a campaign's overrides onto the platform's.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from dataclasses import dataclass

from sqlalchemy import select

from models import RiskRuleSet, RuleSetStatus, alert_once, db
from risk.catalogue import FEATURES, FIELDS

log = logging.getLogger(__name__)

ACTIONS = ("allow", "block", "review")
OPS = ("<", "<=", ">", ">=", "==", "!=")
MAX_RULES = 50
MAX_CONDITIONS = 8
NAME_MAX = 48
_NAME = re.compile(f"[A-Za-z0-9_]{{1,{NAME_MAX}}}")

# The defaults, used while no platform rule set is active: chosen on the seeded simulation
# (``flask risk simulate``), where they meet precision >= 0.9 and recall >= 0.8.
DEFAULT_RULES: tuple[dict, ...] = (
    {"name": "block_very_high_score", "action": "block", "when": [["score", ">=", 90]]},
    {"name": "review_high_score", "action": "review", "when": [["score", ">=", 60]]},
)


# The shape of a rule set, published in /openapi.json; ``parse_rules`` is what decides validity.
RULES_SCHEMA: dict = {
    "type": "array",
    "maxItems": MAX_RULES,
    "items": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": f"^[A-Za-z0-9_]{{1,{NAME_MAX}}}$"},
            "action": {"enum": list(ACTIONS)},
            "when": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_CONDITIONS,
                "items": {
                    "type": "array",
                    "minItems": 3,
                    "maxItems": 3,
                    "description": "[field, op, value]: a field of the catalogue, one of < <= > >= == !=, "
                    "a number (or true / false for a yes-no field)",
                },
            },
            "off": {"type": "boolean", "description": "a campaign's override switching the platform's rule off"},
        },
    },
}


class RulesError(ValueError):
    """A rule set we cannot evaluate; the message names the rule and the field."""

    code = "invalid_risk_rules"
    kind = "invalid"


@dataclass(frozen=True)
class Rule:
    name: str
    action: str
    when: tuple[tuple[str, str, float | bool], ...]
    off: bool = False

    def matches(self, values: dict) -> bool:
        return all(_holds(values.get(field), op, value) for field, op, value in self.when)

    def to_json(self) -> dict:
        raw: dict = {"name": self.name, "action": self.action, "when": [list(c) for c in self.when]}
        if self.off:
            raw["off"] = True
        return raw

    def words(self) -> str:
        said = " and ".join(f"{f} {op} {_say(v)}" for f, op, v in self.when)
        return f"rule {self.name} ({self.action} when {said})"


@dataclass(frozen=True)
class Verdict:
    action: str  # allow | block | review
    rule: str | None  # the rule that decided (None: no rule matched, allowed)
    words: str

    def to_json(self) -> dict:
        return {"action": self.action, "rule": self.rule, "words": self.words}


def _say(value) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def _holds(actual, op: str, value) -> bool:
    if actual is None:
        return False
    if op == "<":
        return actual < value
    if op == "<=":
        return actual <= value
    if op == ">":
        return actual > value
    if op == ">=":
        return actual >= value
    if op == "==":
        return actual == value
    return actual != value


def parse_rules(raw: object, *, overrides: bool = False, stored: bool = False) -> tuple[Rule, ...]:
    """The JSON as rules, or ``RulesError`` naming what is wrong. ``overrides``: a campaign's (may switch off).

    ``stored``: rules read back from an active rule set, which an earlier release may have saved under looser checks
    (a name of any letters, 大额订单; a switch-off carrying an action or conditions, read as switched off then): read
    as they were then, never as unreadable (that holds every order of the scope for review). What is saved or
    activated now meets the strict checks."""
    if not isinstance(raw, list):
        raise RulesError(f"rules is a list of rules, not {type(raw).__name__}")
    if len(raw) > MAX_RULES:
        raise RulesError(f"at most {MAX_RULES} rules, not {len(raw)}")
    rules, names = [], set()
    for i, item in enumerate(raw):
        rule = _parse_rule(item, f"rules[{i}]", overrides, stored)
        if rule.name in names:
            raise RulesError(f"rules[{i}].name {rule.name!r} is used twice")
        names.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _parse_rule(item: object, where: str, overrides: bool, stored: bool = False) -> Rule:
    if not isinstance(item, dict):
        raise RulesError(f"{where} is an object with name, action and when")
    unknown = set(item) - {"name", "action", "when", "off"}
    if unknown:
        raise RulesError(f"{where} has unknown fields {sorted(unknown)}")
    name = item.get("name")
    if not isinstance(name, str) or not (_NAME.fullmatch(name) or (stored and _older_name(name))):
        raise RulesError(f"{where}.name is 1-{NAME_MAX} letters, digits or _")  # ASCII, as RULES_SCHEMA publishes
    off = item.get("off", False)
    if not isinstance(off, bool) or (off and not overrides):
        raise RulesError(f"{where}.off is true or false, and only a campaign's override switches a rule off")
    if off:
        if set(item) != {"name", "off"} and not stored:  # its conditions would be dropped: switched off whatever
            raise RulesError(f"{where} switches {name} off: it has only name and off (no action, no when)")
        return Rule(name, "allow", (), off=True)
    action = item.get("action")
    if action not in ACTIONS:
        raise RulesError(f"{where}.action is one of {', '.join(ACTIONS)}")
    when = item.get("when")
    if not isinstance(when, list) or not when or len(when) > MAX_CONDITIONS:
        raise RulesError(f"{where}.when is a list of 1 to {MAX_CONDITIONS} conditions [field, op, value]")
    return Rule(name, action, tuple(_parse_condition(c, f"{where}.when[{j}]") for j, c in enumerate(when)))


def _older_name(name: str) -> bool:
    """A name the checks before ASCII-only names let through (any letters or digits, and _)."""
    return 0 < len(name) <= NAME_MAX and name.replace("_", "").isalnum()


def _parse_condition(raw: object, where: str) -> tuple[str, str, float | bool]:
    if not isinstance(raw, list) or len(raw) != 3:
        raise RulesError(f"{where} is [field, op, value]")
    field, op, value = raw
    if not isinstance(field, str) or field not in FIELDS:
        raise RulesError(f"{where}: unknown field {field!r}; fields are score and {', '.join(sorted(FIELDS))}")
    if op not in OPS:
        raise RulesError(f"{where}: op is one of {' '.join(OPS)}")
    kind = FIELDS[field]
    if kind == "bool":
        if not isinstance(value, bool) or op not in ("==", "!="):
            raise RulesError(f"{where}: {field} is true or false, compared with == or !=")
    elif isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise RulesError(f"{where}: {field} is compared with a number")
    elif kind == "ratio" and not 0 <= value <= 1:
        raise RulesError(f"{where}: {field} is a ratio from 0 to 1")
    elif field == "score" and not 0 <= value <= 100:
        raise RulesError(f"{where}: score is 0 to 100")
    return field, op, value


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float: no feature is ever that large
        return False


def effective_rules(platform: tuple[Rule, ...], overrides: tuple[Rule, ...] = ()) -> tuple[Rule, ...]:
    """The platform's rules with a campaign's overrides: same name replaces (or ``off`` removes), others add.

    Overrides that cannot be read (``readable_rules``: ``UNREADABLE_RULE`` alone) hold every order for review: the
    platform's allow rules are left out (one the unread overrides may have switched off would win over the review),
    its blocks kept (a block still beats the review)."""
    if len(overrides) == 1 and overrides[0] is UNREADABLE_RULE:  # the marker itself, not a set naming its rule
        return (*(rule for rule in platform if rule.action != "allow"), *overrides)
    by_name = {rule.name: rule for rule in platform}
    for rule in overrides:
        by_name[rule.name] = rule
    return tuple(rule for rule in by_name.values() if not rule.off)


def decide(rules: tuple[Rule, ...], values: dict) -> Verdict:
    """Allow → block → review, the first matching rule of the first action that has one decides."""
    for action in ACTIONS:
        for rule in rules:
            if rule.action == action and rule.matches(values):
                return Verdict(action, rule.name, rule.words())
    return Verdict("allow", None, "no rule matched")


@functools.cache
def default_rules() -> tuple[Rule, ...]:
    return parse_rules([dict(r) for r in DEFAULT_RULES])


# Active rule sets, per process, for ``RULES_CACHE_SECONDS``: a payment reads them from memory. Activating a
# rule set here forgets the cache at once (``forget_rules``); other processes see it within the period.
RULES_CACHE_SECONDS = 5.0
_cache: dict = {"at": None, "engine": None, "sets": {}}


def platform_scope() -> str:
    return "platform"


def campaign_scope(campaign_id: int) -> str:
    return f"campaign:{campaign_id}"


_SCOPE = re.compile(r"platform|campaign:([1-9][0-9]{0,9})")


class ScopeError(RulesError):
    code = "invalid_risk_scope"


def parse_scope(scope: object) -> int | None:
    """``platform`` → None, ``campaign:<id>`` → the id; anything else is a ``ScopeError``."""
    found = _SCOPE.fullmatch(scope) if isinstance(scope, str) else None
    if found is None or (found.group(1) and int(found.group(1)) > 2**31 - 1):
        raise ScopeError(f"scope is platform or campaign:<id>, not {scope!r}")
    return int(found.group(1)) if found.group(1) else None


# How severe a verdict is: an order touching several campaigns is as severe as its most severe decision.
SEVERITY = {"allow": 0, "review": 1, "block": 2}


def most_severe(actions) -> str:
    return max(actions, key=SEVERITY.__getitem__, default="allow")


def fields() -> list[dict]:
    """What a condition may name, with its kind and meaning (for the admin API)."""
    meanings = {"score": ("int", "the order's risk score, 0 (nothing seen) to 100")} | FEATURES
    return [{"name": name, "kind": kind, "meaning": meaning} for name, (kind, meaning) in meanings.items()]


def forget_rules() -> None:
    _cache["at"] = None


def _active_sets() -> dict[str, tuple[Rule, ...]]:
    engine = db.session.get_bind()
    at = _cache["at"]
    if at is not None and _cache["engine"] is engine and time.monotonic() - at < RULES_CACHE_SECONDS:
        return _cache["sets"]
    rows = db.session.execute(
        select(RiskRuleSet.scope, RiskRuleSet.rules).where(RiskRuleSet.status == RuleSetStatus.ACTIVE)
    ).all()
    sets = {scope: readable_rules(scope, raw) for scope, raw in rows}
    for scope in sorted(scope for scope, rules in sets.items() if rules == (UNREADABLE_RULE,)):
        # in the payment's transaction: an operator told once (while the alert is open), with the payment
        alert_once(
            "risk_rules_unreadable",
            scope,
            text=f"the active risk rules of {scope} cannot be read: every order they decide is held for review "
            "until readable rules are activated",
        )
    _cache.update(at=time.monotonic(), engine=engine, sets=sets)
    return sets


# What a scope's active rules become when they cannot be read (stored before a field was renamed or a bound
# tightened, or written to the table by hand): the payment goes on and the scope's orders are held for review, so
# nothing is paid that those rules might have held; the payment that finds them raises an alert
# (``risk_rules_unreadable``, once while open) and every process logs it at each reload until an admin activates
# readable rules.
UNREADABLE_RULE = Rule("active_rules_unreadable", "review", (("score", ">=", 0),))


def readable_rules(scope: str, raw: object) -> tuple[Rule, ...]:
    try:
        return parse_rules(raw, overrides=scope != platform_scope(), stored=True)
    except (RulesError, TypeError, ValueError) as exc:
        log.error(
            "active risk rules of %s cannot be read: every order they decide is held for review",
            scope,
            extra={"scope": scope, "error": str(exc)},
        )
        return (UNREADABLE_RULE,)


def platform_rules(sets: dict[str, tuple[Rule, ...]]) -> tuple[Rule, ...]:
    """The platform's active rules among ``sets``, else ``DEFAULT_RULES``. An active set with no rules is the
    admin's choice (every order allowed), listed as active: not the defaults, which only stand in for no set."""
    found = sets.get(platform_scope())
    return default_rules() if found is None else found


def rules_for(campaign_ids) -> dict[int | None, tuple[Rule, ...]]:
    """The effective rules: under ``None`` the platform's (its active set, else ``DEFAULT_RULES``), and under
    each campaign id the platform's with that campaign's active overrides."""
    sets = _active_sets()
    platform = platform_rules(sets)
    found: dict[int | None, tuple[Rule, ...]] = {None: platform}
    for campaign_id in campaign_ids:
        found[campaign_id] = effective_rules(platform, sets.get(campaign_scope(campaign_id), ()))
    return found
