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
        raise StakeAboveHeld(
            f"the stake is {amount} and you hold {max(held, 0)}",
            zh=f"挑战金 {amount}，你现有 {max(held, 0)}，不足",
        )
    post(
        f"challenge:{challenge_id}:stake:{user_id}",
        f"challenge {challenge_id}: stake of user {user_id} reserved",
        [Leg(held_ref(source, user_id), -amount), Leg(stake_ref(source, user_id), amount)],
    )


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
