"""Typed words: rails, forms and triggers are enums / value types, never strings typed out again.

``Form`` (rebate/rules.py) is how a rebate is paid, ``Rail`` (models/payouts.py) how money leaves
through WeChat, ``InApp`` where a payout's money lands when it stays with us, ``Trigger`` what issues a
campaign's packets (parsed from the stored JSON, whose format is unchanged).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from sqlalchemy import text

from config import SETTINGS
from models import Campaign, db
from models.payouts import InApp, Rail
from models.triggers import PLATFORM_WIDE, StreakBonus, Trigger, TriggerError, TriggerKind
from payouts.outbox import PREFIX
from rebate.awards import KIND_OF_FORM, RAIL_OF_FORM
from rebate.rules import CASH_FORMS, Form, RuleError, parse_rules

ROOT = Path(__file__).resolve().parent.parent
APPLICATION = ["money.py", "models", "ledger", "notices", "payouts", "risk", "rebate", "challenges", "insights"]
APPLICATION += ["web", "jobs"]
WORDS = {f.value for f in Form} | {r.value for r in Rail} | {p.value for p in InApp}
# Where the enum is the vocabulary itself.
DEFINITIONS = {("rebate/rules.py", "Form"), ("models/payouts.py", "Rail"), ("models/payouts.py", "InApp")}
# The same letters meaning something else: (file, word) -> how many times, and why.
OTHER_MEANINGS = {
    ("notices/watch.py", "points"): (1, "a notice's fact: the points a fallback credited"),
    ("rebate/tell.py", "points"): (
        3,
        "a notice's fact: the points credited, taken back, or an order's points returned",
    ),
    ("web/user_api.py", "points"): (1, "the wallet's JSON key for the points balance"),
    ("web/views.py", "points"): (1, "a rebate's JSON key for the points it gave"),
    ("insights/trace.py", "points"): (2, "JSON keys: the points a rebate gave, a risk feature's points"),
    ("rebate/awards.py", "points"): (5, "the receivable kind (cash | points | credit | coupon)"),
    ("rebate/clawbacks.py", "points"): (2, "the receivable kind (where a clawback came from, and its words)"),
    ("risk/scoring.py", "points"): (4, "what a risk feature adds to the score (0-100), not the points form"),
    ("ledger/check.py", "points"): (1, "the receivable kind of a points account"),
    ("notices/events.py", "points"): (
        3,
        "a notice's fact: the points a challenge gave or gave back, an order's points returned",
    ),
    ("challenges/settle.py", "points"): (1, "a notice's fact: the points a challenge gave or gave back"),
    ("notices/templates.py", "points"): (
        2,
        "a notice's fact: an order's points returned, a rebate's points taken back",
    ),
}


def application_files() -> list[Path]:
    files = []
    for name in APPLICATION:
        path = ROOT / name
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return files


def literals_outside_enums(path: Path, rel: str) -> list[tuple[int, str]]:
    """String constants that are a rail or form name, except inside the defining enums and ``__all__``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        is_definition = isinstance(node, ast.ClassDef) and (rel, node.name) in DEFINITIONS
        is_all = isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
        if is_definition or is_all:
            skipped |= {id(n) for n in ast.walk(node)}
    return sorted(
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in WORDS and id(node) not in skipped
    )


def test_no_rail_or_form_name_is_typed_out_in_application_code():
    found: dict[tuple[str, str], list[int]] = {}
    for path in application_files():
        rel = path.relative_to(ROOT).as_posix()
        for lineno, word in literals_outside_enums(path, rel):
            found.setdefault((rel, word), []).append(lineno)
    unexplained = {
        f"{where}:{lines} {word!r}"
        for (where, word), lines in found.items()
        if len(lines) != OTHER_MEANINGS.get((where, word), (0, ""))[0]
    }
    assert not unexplained, "use Rail.X / Form.X / InApp.X, or explain the word in OTHER_MEANINGS"


def test_the_scan_sees_a_typed_out_rail(tmp_path):
    module = tmp_path / "payouts.py"
    module.write_text('class Rail:\n    X = "wechat_change"\n\nRAIL = "wechat_change"\n__all__ = ["balance"]\n')
    assert literals_outside_enums(module, "models/payouts.py") == [(4, "wechat_change")]
    assert literals_outside_enums(module, "payouts/thing.py") == [(2, "wechat_change"), (4, "wechat_change")]


def test_the_vocabularies_agree():
    # profit sharing is the one rail no rule names: the fund flow picks it for a merchant-funded cash rebate
    # (rebate.awards.cash_rail), and its job sends one request per order, not one call per payout (no rate)
    ruled = set(Rail) - {Rail.PROFIT_SHARING}
    assert {r.value for r in ruled} | {p.value for p in InApp} | {Form.MERCHANT_CREDIT.value} == {f.value for f in Form}
    assert set(RAIL_OF_FORM.values()) == ruled and set(KIND_OF_FORM) == set(Form)
    assert set(PREFIX) == set(Rail)
    [rates] = [s for s in SETTINGS if s.name == "PAYOUT_RATE_LIMITS"]
    assert set(rates.default) == {r.value for r in ruled}  # config imports nothing of ours: it spells them out
    assert {Form.WECHAT_CHANGE, Form.CASH_RED_PACKET, Form.BALANCE} == CASH_FORMS


def test_parsed_rules_carry_forms_and_refuse_an_unknown_one():
    raw = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "points", "fallback_form": "balance"}]}
    [rule] = parse_rules(raw, budgeted=False).roles
    assert (rule.form, rule.fallback_form) == (Form.POINTS, Form.BALANCE)
    assert type(rule.form) is Form
    for bad in ("cash", ["points"], None, 5):
        with pytest.raises(RuleError, match="form must be one of"):
            parse_rules({"roles": [{"role": "consumer", "rate_bps": 500, "form": bad}]}, budgeted=False)


# --- triggers ---------------------------------------------------------------------------------------


def test_stored_triggers_parse_into_values():
    assert Trigger.parse({}) == Trigger(TriggerKind.MANUAL) == Trigger.parse(None)
    assert Trigger.parse({"kind": "order_paid", "min_order_fen": 200_00, "first_order_only": True}) == Trigger(
        TriggerKind.ORDER_PAID, min_order_fen=200_00, first_order_only=True
    )
    streak = Trigger.parse({"kind": "daily_sign_in", "streak_bonus": [{"days": 7, "amount_fen": 5_00}]})
    assert streak.streak_bonus == (StreakBonus(7, 5_00),)
    assert Trigger.parse({"kind": "share", "sharer_reward_fen": 2_00}).sharer_reward_fen == 2_00
    # what the admin API stores (pydantic's dump, defaults included) reads back
    dumped = {"kind": "claim", "min_order_fen": 0, "first_order_only": False, "streak_bonus": []}
    assert Trigger.parse(dumped) == Trigger(TriggerKind.CLAIM)
    assert {TriggerKind.REGISTRATION, TriggerKind.DAILY_SIGN_IN, TriggerKind.REFERRAL_BIND} == PLATFORM_WIDE


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ([], "a trigger is an object, not list"),
        ({"kind": "order-paid"}, "trigger kind 'order-paid' is not one of"),
        ({"kind": 3}, "trigger kind 3 is not one of"),
        ({"kind": "order_paid", "min_order": 100}, "unknown trigger field(s) ['min_order']"),
        ({"kind": "order_paid", "min_order_fen": -1}, "trigger min_order_fen must be a whole number of fen"),
        ({"kind": "order_paid", "min_order_fen": "200"}, "trigger min_order_fen must be a whole number of fen"),
        ({"kind": "order_paid", "min_order_fen": None}, "trigger min_order_fen must be a whole number of fen"),
        ({"kind": "order_paid", "first_order_only": "yes"}, "trigger first_order_only must be true or false"),
        ({"kind": "share", "sharer_reward_fen": 0}, "trigger sharer_reward_fen must be a whole number of fen"),
        ({"kind": "daily_sign_in", "streak_bonus": {"days": 7}}, "streak_bonus must be a list"),
        ({"kind": "daily_sign_in", "streak_bonus": [{"days": 0, "amount_fen": 1}]}, "days must be a whole number"),
        ({"kind": "daily_sign_in", "streak_bonus": [{"days": 7}]}, "each streak bonus is {days, amount_fen}"),
        ({"kind": "daily_sign_in", "streak_bonus": [{"days": 7, "amount_fen": 1.5}]}, "amount_fen must be"),
    ],
)
def test_a_bad_trigger_is_refused_with_a_clear_error(raw, says):
    with pytest.raises(TriggerError) as refused:
        Trigger.parse(raw)
    assert says in str(refused.value)


def test_a_bad_trigger_is_never_written_through_the_model(app):
    with pytest.raises(TriggerError, match="trigger kind 'sometimes' is not one of"):
        Campaign(name="bad", issuer_type="platform", funder_type="platform_fund", trigger={"kind": "sometimes"})


def test_a_bad_stored_trigger_is_refused_when_read(make_campaign):
    # given: a campaign whose stored trigger was broken behind the app's back
    campaign = make_campaign({"roles": [{"role": "consumer", "rate_bps": 100, "form": "balance"}]})
    assert campaign.issue_trigger == Trigger(TriggerKind.MANUAL)
    db.session.execute(
        text("UPDATE campaigns SET trigger = :t WHERE id = :id"), {"t": '{"kind": 7}', "id": campaign.id}
    )
    db.session.commit()
    db.session.expire_all()

    # when / then: reading it names the campaign and what is wrong
    with pytest.raises(TriggerError, match=rf"campaign {campaign.id}: trigger kind 7 is not one of"):
        campaign.issue_trigger  # noqa: B018
