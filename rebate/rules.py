"""Pure rebate rules: facts and ``now`` in, decisions out. Imports only ``money``.

A rule set is data (validated JSON stored per campaign version), parsed here
into frozen dataclasses. ``evaluate`` returns one ``Decision`` per role, each
with its amount (possibly 0) and the reasons in words, so the trace can say
why every rule did or did not pay. Rounding is always down; an award never
exceeds its cap, the budget left, or (for cash forms) what the consumer paid.

A side may allow several forms (``forms``, the default ``form`` among them): the person's stored
preference picks one when the rule allows it (``evaluate(..., forms=)``), else the default. A side may
give rates per product category (``category_bps``) over the order's lines: the base (``order_total``
or ``paid``) is allotted to the lines in proportion to their value, each category's part rounded
down, and the lines of no listed category earn the whole-order rate (``rate_bps`` or its tier).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum

from money import MAX_FEN, format_yuan, share

ROLES = ("issuer", "consumer", "inviter")
BASES = ("paid", "order_total")
APPLIES_TO = ("packet", "referral")


class Form(StrEnum):
    """How a rebate is paid. The first four leave through WeChat (the words of ``models.payouts.Rail``)."""

    WECHAT_CHANGE = "wechat_change"
    CASH_RED_PACKET = "cash_red_packet"
    WECHAT_COUPON = "wechat_coupon"
    CARD_COUPON = "card_coupon"
    BALANCE = "balance"  # the user's in-app cash balance
    POINTS = "points"  # the user's points (their own unit ledger)
    MERCHANT_CREDIT = "merchant_credit"  # a merchant issuer's marketing credit


CASH_FORMS = frozenset({Form.WECHAT_CHANGE, Form.CASH_RED_PACKET, Form.BALANCE})  # capped by what the buyer paid
SHAREABLE_FORMS = (Form.WECHAT_CHANGE, Form.CASH_RED_PACKET)  # what profit sharing can carry to a person
FORMS = tuple(f.value for f in Form)  # every form name, in order (for messages and schemas)
CATEGORY_PATTERN = r"^[\w\-]{1,32}$"  # a product category, as products name them (web.schemas.Category)
MAX_CATEGORY_RATES = 20


class RuleError(ValueError):
    """A rule set that cannot be evaluated safely; the message says why."""

    code = "invalid_rules"
    kind = "invalid"


@dataclass(frozen=True)
class Tier:
    min_order_fen: int
    rate_bps: int


@dataclass(frozen=True)
class Window:
    starts_at: datetime
    ends_at: datetime
    factor_bps: int  # 20000 = double


@dataclass(frozen=True)
class Condition:
    """The award waits for milestones reported by the merchant (lessons done, test passed, feedback)."""

    milestones: tuple[str, ...]
    window_days: int
    release: str = "all"  # "all": when every milestone is met; "parts": an equal part per milestone
    quality_scaled: bool = False  # the "feedback" milestone's quality (0-100) scales what is released


@dataclass(frozen=True)
class RoleRule:
    role: str
    rate_bps: int
    form: Form
    base: str = "paid"
    min_order_fen: int = 0
    cap_fen: int | None = None
    fallback_form: Form | None = None
    tiers: tuple[Tier, ...] = ()
    windows: tuple[Window, ...] = ()
    condition: Condition | None = None
    # Every form the person may choose, ``form`` (the default) among them; None: ``form`` only.
    forms: tuple[Form, ...] | None = None
    # Rates per product category, (category, bps) sorted by category; None: the whole-order rate for all lines.
    category_bps: tuple[tuple[str, int], ...] | None = None

    @property
    def allowed_forms(self) -> tuple[Form, ...]:
        return self.forms or (self.form,)

    def form_for(self, preferred: Form | str | None) -> Form:
        """The person's preferred form when this side allows it, else the default."""
        return Form(preferred) if preferred in self.allowed_forms else self.form


@dataclass(frozen=True)
class RuleSet:
    roles: tuple[RoleRule, ...]
    applies_to: str = "packet"
    referral_days: int | None = None  # inviter earns for this many days after binding
    attribution_days: int | None = None  # the issuer also earns on the buyer's later orders for this long

    def role(self, name: str) -> RoleRule | None:
        return next((r for r in self.roles if r.role == name), None)

    @property
    def offers_forms(self) -> bool:
        """Some side lets the person choose the form (the payment then reads their preference)."""
        return any(r.forms for r in self.roles)

    @property
    def by_category(self) -> bool:
        """Some side has rates per product category (the payment then reads the order's lines)."""
        return any(r.category_bps for r in self.roles)

    def max_award_fen(self) -> int | None:
        """The most one order can cost in rebates, or None when some role has no cap."""
        caps = [r.cap_fen for r in self.roles]
        return None if any(c is None for c in caps) else sum(caps)


@dataclass(frozen=True)
class Line:
    """One order line as the rules see it: its product category and its goods value."""

    category: str
    total_fen: int


@dataclass(frozen=True)
class OrderFacts:
    order_total_fen: int  # goods value before any packet
    paid_fen: int  # what the consumer paid (WeChat's payer_total), net of refunds
    paid_at: datetime
    has_issuer: bool = True  # the packet's issuer can receive (platform issuers cannot)
    has_inviter: bool = False
    # The order's lines at their original value (a refund does not name lines: their shares stay the same and
    # the base shrinks, so a category's part shrinks in proportion). Empty: the whole-order rate applies.
    lines: tuple[Line, ...] = ()


@dataclass(frozen=True)
class Decision:
    role: str
    amount_fen: int
    form: Form
    reason_code: str  # "awarded", "below_minimum", "cap_reached", ...
    reasons: tuple[str, ...] = field(default_factory=tuple)
    condition: Condition | None = None  # held until the condition is met
    fallback_form: Form | None = None

    @property
    def awarded(self) -> bool:
        return self.amount_fen > 0

    @property
    def pays_cash(self) -> bool:
        return _pays_cash(self.form, self.fallback_form)


def evaluate(
    rules: RuleSet,
    facts: OrderFacts,
    *,
    budget_left_fen: int | None = None,
    cash_room_fen: int | None = None,
    deposit_left_fen: int | None = None,
    forms: Mapping[str, Form | None] | None = None,
) -> list[Decision]:
    """Decide every role's rebate for one order. ``None`` limits mean unlimited.

    ``deposit_left_fen`` is what a merchant-funded campaign's deposit still holds. ``forms``: the form
    each role's beneficiary prefers (a role absent or a form its rule does not allow: the rule's default).
    """
    budget, deposit = budget_left_fen, deposit_left_fen
    cash_room = facts.paid_fen if cash_room_fen is None else min(cash_room_fen, facts.paid_fen)
    decisions = []
    for rule in rules.roles:
        form = rule.form_for((forms or {}).get(rule.role))
        decision = _decide(rule, form, facts, budget, cash_room, deposit)
        decisions.append(decision)
        if budget is not None:
            budget -= decision.amount_fen
        if deposit is not None:
            deposit -= decision.amount_fen
        if decision.pays_cash:
            cash_room -= decision.amount_fen
    return decisions


def _decide(
    rule: RoleRule, form: Form, facts: OrderFacts, budget: int | None, cash_room: int, deposit: int | None
) -> Decision:
    def no(code: str, why: str) -> Decision:
        return Decision(rule.role, 0, form, code, (why,))

    if rule.role == "issuer" and not facts.has_issuer:
        return no("no_beneficiary", "the packet's issuer does not receive rebates")
    if rule.role == "inviter" and not facts.has_inviter:
        return no("no_beneficiary", "the buyer has no inviter")
    base_fen = facts.order_total_fen if rule.base == "order_total" else facts.paid_fen
    if base_fen < rule.min_order_fen:
        return no(
            "below_minimum",
            f"order {format_yuan(base_fen)} yuan is below the minimum of {format_yuan(rule.min_order_fen)} yuan",
        )
    rate_bps, factor_bps, reasons = _rate(rule, base_fen, facts.paid_at)
    amount = 0
    for what, part_fen, part_bps in _parts(rule, facts.lines, base_fen, rate_bps, factor_bps):
        earned = share(part_fen, part_bps)
        amount += earned
        reasons.append(
            f"{part_bps / 100:g}% of {format_yuan(part_fen)} yuan ({what}{rule.base}) = {format_yuan(earned)} yuan"
        )
    if form != rule.form:
        reasons.append(f"paid as {form}, the form the person chose")
    code = "awarded"
    amount, code = _limit(amount, code, reasons, rule.cap_fen, "cap_reached", "capped at the rule's cap")
    amount, code = _limit(amount, code, reasons, budget, "budget_exhausted", "limited by the campaign budget left")
    amount, code = _limit(amount, code, reasons, deposit, "deposit_exhausted", "limited by what the deposit holds")
    if _pays_cash(form, rule.fallback_form):
        amount, code = _limit(
            amount, code, reasons, cash_room, "paid_cap", "cash rebates cannot exceed what the buyer paid"
        )
    if amount == 0 and code == "awarded":
        code = "zero_amount"
        reasons.append("rounds down to 0")
    if amount and rule.condition is not None:
        reasons.append(f"held until {', '.join(rule.condition.milestones)} within {rule.condition.window_days} days")
    return Decision(rule.role, amount, form, code, tuple(reasons), rule.condition, rule.fallback_form)


def _pays_cash(form: Form, fallback_form: Form | None) -> bool:
    """Cash now, or cash when its rail refuses (a coupon falling back to balance is cash too)."""
    return form in CASH_FORMS or fallback_form in CASH_FORMS


def _limit(amount: int, code: str, reasons: list[str], limit: int | None, limit_code: str, why: str):
    if limit is None or amount <= limit:
        return amount, code
    limit = max(0, limit)
    reasons.append(f"{why}: {format_yuan(limit)} yuan")
    return limit, limit_code


def _rate(rule: RoleRule, base_fen: int, at: datetime) -> tuple[int, int, list[str]]:
    """The whole-order rate (its tier, times the multiplier window), the window's factor, and why."""
    rate, factor = rule.rate_bps, 10_000
    reasons: list[str] = []
    tier = next((t for t in sorted(rule.tiers, key=lambda t: -t.min_order_fen) if base_fen >= t.min_order_fen), None)
    if tier is not None:
        rate = tier.rate_bps
        whole = "the lines of no listed category" if rule.category_bps else "the whole amount"
        reasons.append(f"tier from {format_yuan(tier.min_order_fen)} yuan applies to {whole}")
    for window in rule.windows:
        if window.starts_at <= at < window.ends_at:
            factor = window.factor_bps
            rate = rate * factor // 10_000
            reasons.append(f"multiplier ×{window.factor_bps / 10_000:g} window")
            break
    return rate, factor, reasons


def allot(base_fen: int, lines: tuple[Line, ...], categories: set[str]) -> tuple[dict[str, int], int]:
    """The base allotted to ``categories`` and to the other lines, in proportion to the lines' value.

    Each part is ``base × its lines' value ÷ all lines' value``, rounded down: the parts never add up to
    more than the base (a fen or two of it may be allotted to nobody). Returns (per category present, the
    other lines' part); no lines of any value: nothing per category, the whole base to the others.
    """
    whole = sum(line.total_fen for line in lines if line.total_fen > 0)
    if whole <= 0:
        return {}, base_fen
    value: dict[str, int] = {}
    for line in lines:
        if line.total_fen > 0 and line.category in categories:
            value[line.category] = value.get(line.category, 0) + line.total_fen
    others = whole - sum(value.values())
    return {c: base_fen * v // whole for c, v in sorted(value.items())}, base_fen * others // whole


def _parts(rule: RoleRule, lines: tuple[Line, ...], base_fen: int, rate_bps: int, factor_bps: int):
    """(words, base part, rate) for each category rate that applies, then the other lines at ``rate_bps``."""
    if not rule.category_bps:
        return [("", base_fen, rate_bps)]
    rates = dict(rule.category_bps)
    by_category, others = allot(base_fen, lines, set(rates))
    parts = [(f"{c} lines' share of ", part, rates[c] * factor_bps // 10_000) for c, part in by_category.items()]
    if others or not parts:
        parts.append(("other lines' share of " if parts else "", others, rate_bps))
    return parts


def entitlement_after_refund(
    rules: RuleSet, facts: OrderFacts, role: str, awarded_fen: int, form: Form | str | None = None
) -> int:
    """What a role is entitled to on the order's new net amounts: never more than already awarded.

    Budget and cash room only ever lowered the original award, so they are not
    applied again; the result is min(rule on net amounts, awarded). ``form``: the form the rebate was
    paid in (the person's choice, when the rule allowed it), so a cash choice stays within what was paid.
    Category rates apply as at payment: ``facts.lines`` keep their original value and the net base is
    allotted to them in the same proportions.
    """
    for decision in evaluate(rules, facts, forms={role: form} if form else None):
        if decision.role == role:
            return min(decision.amount_fen, awarded_fen)
    return 0


def parse_rules(data: dict, *, budgeted: bool) -> RuleSet:
    """Turn stored JSON into a RuleSet, refusing anything unsafe with the reason."""
    if not isinstance(data, dict):
        raise RuleError("rules must be an object")
    applies_to = data.get("applies_to", "packet")
    if applies_to not in APPLIES_TO:
        raise RuleError(f"applies_to must be one of {APPLIES_TO}")
    raw_roles = data.get("roles")
    if not isinstance(raw_roles, list) or not raw_roles:
        raise RuleError("roles: rules need at least one role")
    _check_shape(data, RULES_SCHEMA, "")
    roles = tuple(_parse_role_at(i, r, budgeted) for i, r in enumerate(raw_roles))
    seen: dict[str, int] = {}
    for i, rule in enumerate(roles):
        if rule.role in seen:
            raise RuleError(
                f"roles[{i}].role: {rule.role} appears twice (roles[{seen[rule.role]}] too): each role may appear once"
            )
        seen[rule.role] = i
    _refuse_overpaying(roles)
    days = {k: _int(data, k, low=1, high=3650) for k in ("referral_days", "attribution_days")}
    return RuleSet(roles=roles, applies_to=applies_to, **days)


def max_rate_bps(rule: RoleRule) -> int:
    """The most the rule can pay, in basis points of its base: tiers, categories and multiplier windows."""
    return _max_rate_bps(rule)


def _max_rate_bps(rule: RoleRule) -> int:
    rate = max([rule.rate_bps, *(t.rate_bps for t in rule.tiers), *(bps for _, bps in rule.category_bps or ())])
    factor = max([10_000, *(w.factor_bps for w in rule.windows)])
    return rate * factor // 10_000


def _refuse_overpaying(roles: tuple[RoleRule, ...]) -> None:
    """No combination of tiers and multiplier windows may pay out more than the order."""
    total = sum(_max_rate_bps(r) for r in roles)
    if total > 10_000:
        raise RuleError(
            f"roles: at their highest (tiers × multiplier windows) the rules pay {total / 100:g}% of the "
            "order, more than the order itself"
        )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(raw: dict, key: str, default=None, *, low=0, high=10**13):
    value = raw.get(key, default)
    if value is None:
        return None
    if not _is_int(value) or not low <= value <= high:
        raise RuleError(f"{key} must be an integer from {low} to {high}")
    return value


def _parse_role_at(index: int, raw: dict, budgeted: bool) -> RoleRule:
    """``_parse_role``, its refusal naming the field: ``roles[1].tiers: …`` (a message naming its own path
    ``roles[…]`` already, as the shape's do, is kept as it is)."""
    try:
        return _parse_role(raw, budgeted)
    except RuleError as exc:
        words = str(exc)
        if words.startswith("roles["):
            raise
        role = raw.get("role") if isinstance(raw, dict) else None
        if isinstance(role, str) and words.startswith(f"{role}: "):  # "consumer: form must be …"
            words = words.removeprefix(f"{role}: ")
        field = re.match(r"[a-z_]+", words)
        if field is not None and field.group(0) in RULES_SCHEMA["properties"]["roles"]["items"]["properties"]:
            raise RuleError(f"roles[{index}].{words}") from None
        raise RuleError(f"roles[{index}]: {words}") from None


def _parse_role(raw: dict, budgeted: bool) -> RoleRule:
    if not isinstance(raw, dict):
        raise RuleError("each role rule must be an object")
    role, form, base = raw.get("role"), raw.get("form"), raw.get("base", "paid")
    if role not in ROLES:
        raise RuleError(f"role must be one of {ROLES}")
    if not _is_form(form) or not (raw.get("fallback_form") is None or _is_form(raw.get("fallback_form"))):
        raise RuleError(f"{role}: form must be one of {FORMS}")
    if base not in BASES:
        raise RuleError(f"{role}: base must be one of {BASES}")
    if form == Form.MERCHANT_CREDIT and role != "issuer":
        raise RuleError(f"{role}: form: merchant_credit is for a merchant issuer only")
    cap = _int(raw, "cap_fen", low=1)
    if budgeted and cap is None:
        raise RuleError(
            f"{role}: cap_fen: a rule in a budgeted campaign needs cap_fen, or the budget cannot be reserved"
        )
    forms = _parse_forms(role, Form(form), raw.get("forms"))
    return RoleRule(
        role=role,
        rate_bps=_int(raw, "rate_bps", 0, high=10_000),
        form=Form(form),
        base=base,
        min_order_fen=_int(raw, "min_order_fen", 0),
        cap_fen=cap,
        fallback_form=None if raw.get("fallback_form") is None else Form(raw["fallback_form"]),
        tiers=_parse_tiers(raw.get("tiers", [])),
        windows=_parse_windows(raw.get("windows", [])),
        condition=_parse_condition(raw.get("condition")),
        forms=forms,
        category_bps=_parse_category_bps(role, raw.get("category_bps")),
    )


def _parse_forms(role: str, default: Form, raw) -> tuple[Form, ...] | None:
    """The forms a person may choose for this side: distinct, known, the default among them.

    One cap covers them all (a budgeted campaign reserves it whichever is chosen): every form costs the
    campaign the award's value in fen, and a non-cash one is only ever the larger (not held to what was paid).
    """
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(_is_form(f) for f in raw):
        raise RuleError(f"{role}: forms must be a list of forms from {FORMS}")
    if len(set(raw)) != len(raw):
        raise RuleError(f"{role}: forms names a form twice")
    if default not in raw:
        raise RuleError(f"{role}: forms must include the default form {default}")
    if Form.MERCHANT_CREDIT in raw and (role != "issuer" or len(raw) > 1):
        raise RuleError(f"{role}: forms: merchant_credit is a merchant issuer's only form, not one to choose")
    return tuple(Form(f) for f in raw) if len(raw) > 1 else None


def _parse_category_bps(role: str, raw) -> tuple[tuple[str, int], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not 0 < len(raw) <= MAX_CATEGORY_RATES:
        raise RuleError(f"{role}: category_bps must map 1 to {MAX_CATEGORY_RATES} categories to rates")
    for category, bps in raw.items():
        if not isinstance(category, str) or not re.fullmatch(CATEGORY_PATTERN, category):
            raise RuleError(f"{role}: category_bps: {category!r} is no product category")
        if not _is_int(bps) or not 0 <= bps <= 10_000:
            raise RuleError(f"{role}: category_bps.{category} must be an integer from 0 to 10000")
    return tuple(sorted(raw.items()))


def _is_form(value: object) -> bool:
    return isinstance(value, str) and value in FORMS


def _parse_condition(raw) -> Condition | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RuleError("condition must be an object")
    milestones = raw.get("milestones")
    names_ok = isinstance(milestones, list) and all(isinstance(m, str) and 0 < len(m) <= 32 for m in milestones)
    if not names_ok or not milestones or len(set(milestones)) != len(milestones):
        raise RuleError("condition.milestones must be a list of distinct names")
    release = raw.get("release", "all")
    if release not in ("all", "parts"):
        raise RuleError("condition.release must be all or parts")
    quality = raw.get("quality_scaled", False)
    if not isinstance(quality, bool) or (quality and "feedback" not in milestones):
        raise RuleError("condition.quality_scaled needs a feedback milestone")
    return Condition(tuple(milestones), _int(raw, "window_days", 90, low=1, high=3650), release, quality)


def _parse_tiers(raw) -> tuple[Tier, ...]:
    if not isinstance(raw, list):
        raise RuleError("tiers must be a list")
    tiers = tuple(Tier(_int(t, "min_order_fen", 0), _int(t, "rate_bps", 0, high=10_000)) for t in raw)
    if len({t.min_order_fen for t in tiers}) != len(tiers):
        raise RuleError("tiers: two tiers start at the same amount")
    return tiers


def _parse_windows(raw) -> tuple[Window, ...]:
    if not isinstance(raw, list):
        raise RuleError("windows must be a list")
    windows = []
    for k, w in enumerate(raw):
        try:
            starts, ends = datetime.fromisoformat(w["starts_at"]), datetime.fromisoformat(w["ends_at"])
        except (KeyError, TypeError, ValueError):
            raise RuleError(f"windows[{k}]: a window needs ISO-8601 starts_at and ends_at with a UTC offset") from None
        if starts.tzinfo is None or ends.tzinfo is None or ends <= starts:
            raise RuleError(f"windows[{k}]: a window needs timezone-aware starts_at before ends_at")
        windows.append(Window(starts, ends, _int(w, "factor_bps", 20_000, low=10_000, high=50_000)))
    return tuple(windows)


# --- the rule set's shape: one JSON schema, checked by parse_rules and published in /openapi.json ------


def _integer(low: int, high: int, *, null: bool = False, **more) -> dict:
    return {"type": ["integer", "null"] if null else "integer", "minimum": low, "maximum": high, **more}


def _array(items: dict, max_items: int, min_items: int = 0) -> dict:
    return {"type": "array", "items": items, "minItems": min_items, "maxItems": max_items}


def _object(required: list[str], properties: dict, *, null: bool = False) -> dict:
    kind = ["object", "null"] if null else "object"
    return {"type": kind, "required": required, "properties": properties, "additionalProperties": False}


FALLBACK_FORMS = (Form.WECHAT_CHANGE, Form.CASH_RED_PACKET, Form.BALANCE, Form.POINTS)  # what a refused coupon becomes
RULES_SCHEMA = _object(
    ["roles"],
    {
        "roles": _array(
            _object(
                ["role", "rate_bps", "form"],
                {
                    "role": {"enum": list(ROLES)},
                    "rate_bps": _integer(0, 10_000),
                    "form": {"enum": list(FORMS)},
                    "base": {"enum": list(BASES), "default": "paid"},
                    "min_order_fen": _integer(0, MAX_FEN, default=0),
                    "cap_fen": _integer(1, MAX_FEN, null=True),
                    "fallback_form": {"enum": [*FALLBACK_FORMS, None]},
                    "forms": {**_array({"enum": list(FORMS)}, len(FORMS), 1), "type": ["array", "null"]},
                    "category_bps": {
                        "type": ["object", "null"],
                        "propertyNames": {"pattern": CATEGORY_PATTERN},
                        "additionalProperties": _integer(0, 10_000),
                        "minProperties": 1,
                        "maxProperties": MAX_CATEGORY_RATES,
                    },
                    "tiers": _array(
                        _object(
                            ["min_order_fen", "rate_bps"],
                            {
                                "min_order_fen": _integer(0, MAX_FEN),
                                "rate_bps": _integer(0, 10_000),
                            },
                        ),
                        20,
                    ),
                    "windows": _array(
                        _object(
                            ["starts_at", "ends_at"],
                            {
                                "starts_at": {"type": "string", "format": "date-time"},
                                "ends_at": {"type": "string", "format": "date-time"},
                                "factor_bps": _integer(10_000, 50_000, default=20_000),
                            },
                        ),
                        20,
                    ),
                    "condition": _object(
                        ["milestones"],
                        {
                            "milestones": _array({"type": "string", "pattern": "^[a-z0-9_]{1,32}$"}, 10, 1),
                            "window_days": _integer(1, 3650, default=90),
                            "release": {"enum": ["all", "parts"], "default": "all"},
                            "quality_scaled": {"type": "boolean", "default": False},
                        },
                        null=True,
                    ),
                },
            ),
            len(ROLES),
            1,
        ),
        "applies_to": {"enum": list(APPLIES_TO), "default": "packet"},
        "referral_days": _integer(1, 3650, null=True),
        "attribution_days": _integer(1, 3650, null=True),
    },
)


def check_shape(data) -> None:
    """The rule set's shape alone (``RULES_SCHEMA``), before the campaign (budgeted or not) is known."""
    _check_shape(data, RULES_SCHEMA, "")


def _check_shape(value, schema: dict, path: str) -> None:
    """Refuse what ``RULES_SCHEMA`` does not describe, naming the field (``roles[0].rate_bps``)."""
    where = path or "rules"
    kinds = schema.get("type", [])
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if value is None and ("null" in kinds or None in schema.get("enum", ())):
        return
    if "enum" in schema and value not in schema["enum"]:
        raise RuleError(f"{where} must be one of {tuple(e for e in schema['enum'] if e is not None)}")
    kind = next((k for k in kinds if k != "null"), None)
    if kind == "integer" and not (_is_int(value) and schema["minimum"] <= value <= schema["maximum"]):
        raise RuleError(f"{where} must be an integer from {schema['minimum']} to {schema['maximum']}")
    if kind == "boolean" and not isinstance(value, bool):
        raise RuleError(f"{where} must be true or false")
    if kind == "string" and not (isinstance(value, str) and re.fullmatch(schema.get("pattern", ".*"), value)):
        raise RuleError(f"{where} must be a string" + (f" matching {schema['pattern']}" if "pattern" in schema else ""))
    if kind == "array":
        if not isinstance(value, list) or not schema["minItems"] <= len(value) <= schema["maxItems"]:
            raise RuleError(f"{where} must be a list of {schema['minItems']} to {schema['maxItems']} items")
        for i, item in enumerate(value):
            _check_shape(item, schema["items"], f"{where}[{i}]")
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):  # a map, e.g. category_bps
        if not isinstance(value, dict) or not schema["minProperties"] <= len(value) <= schema["maxProperties"]:
            raise RuleError(f"{where} must be an object of {schema['minProperties']} to {schema['maxProperties']} keys")
        for name, item in value.items():
            if not (isinstance(name, str) and re.fullmatch(schema["propertyNames"]["pattern"], name)):
                raise RuleError(f"{where}: {name!r} must match {schema['propertyNames']['pattern']}")
            _check_shape(item, schema["additionalProperties"], f"{where}.{name}")
        return
    if kind == "object":
        if not isinstance(value, dict):
            raise RuleError(f"{where} must be an object")
        prefix = f"{path}." if path else ""
        for name in value:
            if name not in schema["properties"]:
                raise RuleError(f"{where}: unknown field {name!r}")
        for name in schema["required"]:
            if name not in value:
                raise RuleError(f"{prefix}{name} is required")
        for name, item in value.items():
            _check_shape(item, schema["properties"][name], f"{prefix}{name}")


def rules_json(rules: RuleSet) -> dict:
    """A parsed rule set as the JSON stored per campaign version, every default written out."""

    def plain(value):
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if v is not None}
        return value

    stored = plain(asdict(rules))
    for role in stored["roles"]:
        if "category_bps" in role:
            role["category_bps"] = dict(role["category_bps"])
    return stored
