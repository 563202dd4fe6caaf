"""A person's choice of rebate form, where a campaign's rule allows several (``RoleRule.forms``).

The choice is stored per person (``UserPreference``) and checked when it is made: a form the person can
never receive (a merchant's marketing credit), or one paid through WeChat under an appid they have no
openid for, or through a rail that is not switched on, is refused with the reason. At award time
``preferred_forms`` hands the payment each user beneficiary's choice; ``rebate.rules.evaluate`` takes it
when the side's rule allows that form and keeps the rule's default otherwise. A choice is not re-checked
at award time: a rail that refuses later (no openid any more) falls back as every payout does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import Integer, String, bindparam, select, text

from models import User, UserPreference, db, utcnow
from rebate.errors import Invalid, StateConflict
from rebate.rules import Form

PERSON_FORMS = tuple(f for f in Form if f != Form.MERCHANT_CREDIT)  # what a person may ask for
IN_APP_FORMS = frozenset({Form.BALANCE, Form.POINTS})  # credited here: anyone can receive them


@dataclass(frozen=True)
class Reach:
    """How the platform reaches people through WeChat, from the shell's settings.

    ``rails_on``: the WeChat forms whose rail is configured; ``appids``: for a form paid to an openid, the
    appid that openid must be under (a transfer or coupon: the mini-program's; a cash red packet: the
    official account's)."""

    rails_on: frozenset[Form] = frozenset()
    appids: Mapping[Form, str | None] = field(default_factory=dict)


IN_WORDS = {  # what a person reads: never a form's internal name, nor "rail"
    Form.WECHAT_CHANGE: "WeChat change (零钱)",
    Form.CASH_RED_PACKET: "WeChat cash red packets",
    Form.WECHAT_COUPON: "WeChat Pay coupons",
    Form.CARD_COUPON: "WeChat card coupons",
    Form.BALANCE: "your balance here",
    Form.POINTS: "your points here",
    Form.MERCHANT_CREDIT: "merchant credit",
}


def unreachable_because(user: User, form: Form, reach: Reach) -> str | None:
    """Why ``user`` cannot receive rebates as ``form``, or None when they can: in words the person can act on."""
    if form == Form.MERCHANT_CREDIT:
        return "merchant credit is a merchant's, not a person's"
    if form in IN_APP_FORMS:
        return None
    if form not in reach.rails_on:
        return f"paying rebates as {IN_WORDS[form]} is not switched on here yet: choose another way"
    appid = reach.appids.get(form)
    if appid is not None and user.identity_for(appid) is None:
        where = "the official account" if form == Form.CASH_RED_PACKET else "the mini-program"
        return (
            f"rebates as {IN_WORDS[form]} go to your WeChat account as {where} knows it, and you have not signed "
            f"in through {where} yet: sign in there once, then choose again"
        )
    return None


def choices(user: User, reach: Reach) -> list[dict]:
    """Every form a person may ask for, and whether this person can receive it (and why not)."""
    result = []
    for form in PERSON_FORMS:
        why = unreachable_because(user, form, reach)
        result.append({"form": form.value, "available": why is None, "why_not": why})
    return result


def rebate_form_of(user_id: int) -> Form | None:
    row = db.session.get(UserPreference, user_id)
    return Form(row.rebate_form) if row is not None and row.rebate_form else None


def set_rebate_form(user: User, form: Form | str | None, reach: Reach) -> UserPreference:
    """Store the person's choice (None: the rules' defaults again); a form they cannot receive is refused
    and nothing changes. Flushes only."""
    if form is not None:
        if form not in PERSON_FORMS:
            raise Invalid(f"rebate_form must be one of {tuple(f.value for f in PERSON_FORMS)}", code="rebate_form")
        form = Form(form)
        why = unreachable_because(user, form, reach)
        if why is not None:
            raise StateConflict(
                f"you cannot receive rebates as {IN_WORDS[form]}: {why}", code="rebate_form_unavailable"
            )
    db.session.execute(_UPSERT, {"user_id": user.id, "form": form.value if form else None, "at": utcnow()})
    return db.session.get(UserPreference, user.id, populate_existing=True)


# One statement whether or not the person chose before: two first choices at once cannot both INSERT (the
# later one wins, as two updates would). The same SQL on PostgreSQL and SQLite.
_UPSERT = text(
    "INSERT INTO user_preferences (user_id, rebate_form, updated_at) VALUES (:user_id, :form, :at) "
    "ON CONFLICT (user_id) DO UPDATE SET rebate_form = excluded.rebate_form, updated_at = excluded.updated_at"
).bindparams(
    bindparam("user_id", type_=Integer),
    bindparam("form", type_=String),
    bindparam("at", type_=UserPreference.__table__.c.updated_at.type),
)


def preferred_forms(who: Mapping[str, object | None]) -> dict[str, Form]:
    """Each role's beneficiary's chosen form, for the people among them (one SELECT; merchants have none).

    ``who``: role -> a beneficiary with ``type`` ("user" | "merchant") and ``id``, or None."""
    users = {role: b.id for role, b in who.items() if b is not None and getattr(b, "type", None) == "user"}
    if not users:
        return {}
    stmt = select(UserPreference.user_id, UserPreference.rebate_form).where(
        UserPreference.user_id.in_(set(users.values())), UserPreference.rebate_form.is_not(None)
    )
    chosen = dict(db.session.execute(stmt).tuples().all())
    return {role: Form(chosen[uid]) for role, uid in users.items() if uid in chosen}
