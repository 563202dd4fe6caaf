"""Stakes in the ledger: joining reserves one (held → stake), settlement releases or spends it.

A stake moves only between the person's own accounts until settlement: ``user_cash`` → ``user_stake`` (a
balance stake) or ``user_points`` → ``user_point_stake`` (points). The reservation locks the person's row
first, so two joins racing for one balance take turns and the second sees what the first left (SQLite's
``BEGIN IMMEDIATE`` serialises them anyway). Every movement has a key naming the challenge and the person.
"""

from __future__ import annotations

from sqlalchemy import select

from challenges.errors import StakeAboveHeld
from ledger import AccountRef, Leg, balance, post, ref
from models import AccountKind, StakeSource, User, db
from money import format_yuan


def held_ref(source: str, user_id: int) -> AccountRef:
    kind = AccountKind.USER_POINTS if source == StakeSource.POINTS else AccountKind.USER_CASH
    return ref(kind, "user", user_id)


def stake_ref(source: str, user_id: int) -> AccountRef:
    kind = AccountKind.USER_POINT_STAKE if source == StakeSource.POINTS else AccountKind.USER_STAKE
    return ref(kind, "user", user_id)


def lock_person(user_id: int) -> User:
    """The person's row, locked: every debit of their balance or points (a stake, a withdrawal) takes turns."""
    return db.session.execute(select(User).where(User.id == user_id).with_for_update()).scalar_one()


def reserve(challenge_id: int, source: str, user_id: int, amount: int) -> None:
    """Move ``amount`` from what the person holds into their stake, or refuse with nothing changed."""
    lock_person(user_id)
    held = balance(held_ref(source, user_id))
    if held < amount:
        need, have = _amount(source, amount), _amount(source, max(held, 0))
        raise StakeAboveHeld(
            f"the stake is {need[1]} and you hold {have[1]}",
            zh=f"挑战金 {need[0]}，你现有 {have[0]}，不足",
        )
    post(
        f"challenge:{challenge_id}:stake:{user_id}",
        f"challenge {challenge_id}: stake of user {user_id} reserved",
        [Leg(held_ref(source, user_id), -amount), Leg(stake_ref(source, user_id), amount)],
    )


def _amount(source: str, amount: int) -> tuple[str, str]:
    """An amount in the stake's own unit, in Chinese and in English: ``5.00元`` / ``50积分``."""
    if source == StakeSource.POINTS:
        return f"{amount}积分", f"{amount} points"
    return f"{format_yuan(amount)}元", f"{format_yuan(amount)} yuan"


def release(challenge_id: int, source: str, user_id: int, amount: int, why: str) -> None:
    """Give (part of) a stake back to what the person holds; once per (challenge, person, why)."""
    if amount <= 0:
        return
    post(
        f"challenge:{challenge_id}:release:{user_id}:{why}",
        f"challenge {challenge_id}: stake of user {user_id} released ({why})",
        [Leg(stake_ref(source, user_id), -amount), Leg(held_ref(source, user_id), amount)],
    )


def transfer_points(challenge_id: int, payer_id: int, payee_id: int, amount: int) -> None:
    """A points stake's prize: the payer's staked points go to the payee's points (no packet: points buy nothing
    at a merchant). Once per (challenge, payer, payee)."""
    post(
        f"challenge:{challenge_id}:prize:{payer_id}:{payee_id}",
        f"challenge {challenge_id}: {amount} staked points from user {payer_id} to user {payee_id}",
        [Leg(stake_ref(StakeSource.POINTS, payer_id), -amount), Leg(held_ref(StakeSource.POINTS, payee_id), amount)],
    )
