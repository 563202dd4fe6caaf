"""Linking a chat speaker to a user: one-time codes asked for in a private chat, confirmed in the mini-program.

The only way a speaker (a WeCom member, an official-account openid, a chat-tool group_openid) acts as one
of our users: names can be copied, a code shown only in a 1:1 chat cannot be seen by the group. A code is
8 characters of an unambiguous alphabet (32^8 ≈ 10^12), valid ``ttl`` (minutes), stored as an HMAC with
the app's secret, used once (the conditional UPDATE decides between two confirmations), and asking again
voids the speaker's earlier ones. Wrong codes count per signed-in person: after ``max_failures`` in the
window further attempts are refused (429) until it passes. Operations flush only; the caller commits (and
commits the failure record before answering a wrong code).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from models import ChatBinding, ChatBindingCode, ChatBindingFailure, Transport, User, db
from models.sql import one_at_a_time

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud and typed on a phone
CODE_CHARS = 8
FAILURE_WINDOW = timedelta(minutes=15)


class BindingError(Exception):
    """A refused binding step: ``code`` is stable, the message safe to show."""

    kind = "invalid"
    code = "binding_refused"

    def __init__(self, message: str, *, code: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.code, self.kind = code or self.code, kind or self.kind


@dataclass(frozen=True)
class Speaker:
    """Who said something, on which transport: ``scope`` is the robot / app / group the id is unique in."""

    transport: Transport
    scope: str
    external_id: str


@dataclass(frozen=True)
class BindingSettings:
    secret: bytes  # the HMAC key for stored codes
    ttl: timedelta = timedelta(minutes=10)
    max_failures: int = 5


def normalized_code(text: str) -> str:
    """What a person typed: spaces, dashes and case forgiven."""
    return "".join(c for c in str(text).upper() if c.isalnum())[: CODE_CHARS * 2]


def code_hash(settings: BindingSettings, code: str) -> str:
    return hmac.new(settings.secret, normalized_code(code).encode(), hashlib.sha256).hexdigest()


def shown(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


def request_code(settings: BindingSettings, speaker: Speaker, now: datetime) -> str:
    """A new code for ``speaker`` (earlier unused ones void); the caller shows it in the PRIVATE chat only.

    One speaker's requests take turns until each commits (``one_at_a_time``): a twin sent at the same moment sees
    the other's new code and voids it, so only the newest code is ever live."""
    one_at_a_time(f"chat_binding_code:{speaker.transport}:{speaker.scope}:{speaker.external_id}")
    db.session.execute(
        update(ChatBindingCode)
        .where(
            ChatBindingCode.transport == speaker.transport,
            ChatBindingCode.scope == speaker.scope,
            ChatBindingCode.external_id == speaker.external_id,
            ChatBindingCode.used_at.is_(None),
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    code = "".join(secrets.choice(ALPHABET) for _ in range(CODE_CHARS))
    db.session.add(
        ChatBindingCode(
            code_hash=code_hash(settings, code),
            transport=speaker.transport,
            scope=speaker.scope,
            external_id=speaker.external_id,
            created_at=now,
            expires_at=now + settings.ttl,
        )
    )
    db.session.flush()
    return shown(code)


def recent_failures(user_id: int, now: datetime) -> int:
    return db.session.execute(
        select(func.count())
        .select_from(ChatBindingFailure)
        .where(ChatBindingFailure.user_id == user_id, ChatBindingFailure.at > now - FAILURE_WINDOW)
    ).scalar_one()


def record_failure(user_id: int, now: datetime) -> None:
    db.session.add(ChatBindingFailure(user_id=user_id, at=now))
    db.session.flush()


def confirm_code(settings: BindingSettings, user_id: int, code: str, now: datetime) -> ChatBinding:
    """Bind the code's speaker to ``user_id``. BindingError: too many tries (429), a wrong, used or expired code
    (``wrong_code``: the caller records the failure, in this transaction: nothing is written before it is raised),
    the speaker or this user already bound (409).

    The person's row is locked first, so their guesses are counted one at a time: many wrong codes sent at once
    cannot all pass the count before any of them is recorded (the lock is held until the failure commits)."""
    db.session.execute(select(User.id).where(User.id == user_id).with_for_update()).scalar_one()
    if recent_failures(user_id, now) >= settings.max_failures:
        raise BindingError("too many wrong codes: try again in 15 minutes", code="too_many_attempts", kind="limited")
    if len(normalized_code(code)) != CODE_CHARS:
        raise BindingError("a binding code is 8 letters and digits", code="wrong_code")
    row = db.session.execute(
        select(ChatBindingCode).where(ChatBindingCode.code_hash == code_hash(settings, code))
    ).scalar_one_or_none()
    if row is None or row.used_at is not None or row.expires_at <= now:
        # one answer for unknown, used and expired: a guesser learns nothing from which
        raise BindingError("this code is wrong, used or expired: ask the bot for a new one", code="wrong_code")
    taken = db.session.execute(
        update(ChatBindingCode)
        .where(ChatBindingCode.id == row.id, ChatBindingCode.used_at.is_(None))
        .values(used_at=now, used_by=user_id)
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken != 1:  # another confirmation took it first
        raise BindingError("this code is wrong, used or expired: ask the bot for a new one", code="wrong_code")
    speaker = Speaker(Transport(row.transport), row.scope, row.external_id)
    existing = bound_user(speaker)
    if existing is not None:
        message = (
            "this chat account is already bound to you"
            if existing == user_id
            else ("this chat account is bound to someone else: they must unbind it first")
        )
        raise BindingError(message, code="already_bound", kind="conflict")
    mine = db.session.execute(
        select(ChatBinding.id).where(
            ChatBinding.user_id == user_id, ChatBinding.transport == row.transport, ChatBinding.scope == row.scope
        )
    ).scalar_one_or_none()
    if mine is not None:
        raise BindingError(
            "you already have a binding on this bot: remove it first", code="already_bound", kind="conflict"
        )
    binding = ChatBinding(
        user_id=user_id, transport=row.transport, scope=row.scope, external_id=row.external_id, created_at=now
    )
    try:
        with db.session.begin_nested():  # two confirmations racing for one speaker or one user: one wins
            db.session.add(binding)
    except IntegrityError:
        raise BindingError("bound meanwhile: refresh and try again", code="already_bound", kind="conflict") from None
    return binding


def bound_user(speaker: Speaker) -> int | None:
    """The user a speaker is bound to, or None."""
    return db.session.execute(
        select(ChatBinding.user_id).where(
            ChatBinding.transport == speaker.transport,
            ChatBinding.scope == speaker.scope,
            ChatBinding.external_id == speaker.external_id,
        )
    ).scalar_one_or_none()


def bindings_of(user_id: int) -> list[ChatBinding]:
    return list(
        db.session.execute(select(ChatBinding).where(ChatBinding.user_id == user_id).order_by(ChatBinding.id)).scalars()
    )


def remove_binding(user_id: int, binding_id: int) -> bool:
    """Unbind one of the caller's own bindings; False when it is not theirs (or gone)."""
    removed = db.session.execute(
        delete(ChatBinding)
        .where(ChatBinding.id == binding_id, ChatBinding.user_id == user_id)
        .execution_options(synchronize_session=False)
    ).rowcount
    return removed == 1


def bind_own_group_identity(user_id: int, opengid: str, group_openid: str, now: datetime) -> ChatBinding:
    """The chat tool: the signed-in person's own ``group_openid`` in group ``opengid``, read from data WeChat
    encrypted with their session key (no code needed: the mini-program session is the proof). Idempotent;
    a group_openid bound to someone else is refused (409)."""
    speaker = Speaker(Transport.CHAT_TOOL, opengid, group_openid)
    for _ in range(2):  # a twin request (a double tap) that bound it meanwhile: decided again on what is there now
        owner = bound_user(speaker)
        if owner is not None and owner != user_id:
            raise BindingError("this group identity is bound to someone else", code="already_bound", kind="conflict")
        existing = db.session.execute(
            select(ChatBinding).where(
                ChatBinding.user_id == user_id,
                ChatBinding.transport == Transport.CHAT_TOOL,
                ChatBinding.scope == opengid,
            )
        ).scalar_one_or_none()
        if existing is not None:
            return existing
        binding = ChatBinding(
            user_id=user_id, transport=Transport.CHAT_TOOL, scope=opengid, external_id=group_openid, created_at=now
        )
        try:
            with db.session.begin_nested():  # the unique speaker and (person, group) decide between twins
                db.session.add(binding)
        except IntegrityError:
            continue
        return binding
    why = "this group identity was bound at the same moment; try again"
    raise BindingError(why, code="already_bound", kind="conflict")
