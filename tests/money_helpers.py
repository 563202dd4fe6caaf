"""Money set-ups shared by the payout tests: the app's money settings, a balance funded, a payout queued from it."""

from __future__ import annotations

from flask import current_app

from ledger import Leg, account, post_entry
from models import AccountKind, Payout, User, db
from payouts import MoneySettings
from payouts.outbox import enqueue_payout


def app_money() -> MoneySettings:
    """The money settings the shell would pass in, built from the current app's configuration."""
    return MoneySettings.from_config(current_app.config)


def queue_from_balance(
    user: User,
    amount_fen: int,
    rail: str = "wechat_change",
    tag: str = "q",
    *,
    number_prefix: str | None = None,
    fallback: str | None = None,
) -> Payout:
    """Fund ``user``'s cash balance from the platform fund, queue a payout of it on ``rail`` (falling back to
    ``fallback``; numbered with ``number_prefix``, by default the app's), commit."""
    cash = account(AccountKind.USER_CASH, "user", user.id)
    post_entry(
        f"fund:{user.id}",
        "rebate",
        [Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -amount_fen), Leg(cash, amount_fen)],
    )
    payout = enqueue_payout(
        rail=rail,
        user_id=user.id,
        amount_fen=amount_fen,
        source=cash,
        key=f"{tag}:{user.id}",
        memo=tag,
        number_prefix=app_money().number_prefix if number_prefix is None else number_prefix,
    )
    payout.fallback_rail = fallback
    db.session.commit()
    return payout
