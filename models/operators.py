"""Operators (named staff accounts with roles), their personal tokens, and the audit log.

An ``Actor`` is an operator at work (and the network address they act from): operations below the
shell take it explicitly to scope what they touch and to write the audit line with the action.
``create_operator`` keeps the scope rule (merchant staff belong to exactly one merchant, platform roles
to none) and issues the first personal token, in the caller's transaction.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, String, Text, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, UTCDateTime, db, utcnow
from models.people import Merchant


class OperatorRole(StrEnum):
    ADMIN = "admin"
    FINANCE = "finance"
    SUPPORT = "support"
    MERCHANT_STAFF = "merchant_staff"


# The sets of scripts a username may mix (Unicode TR 39's "highly restrictive" level): one script, or Latin with the
# scripts written beside Han. Digits, punctuation and marks belong to every script ("Common", "Inherited").
ALLOWED_SCRIPT_MIXES = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
_SCRIPT_OF_NAME = {"CJK": "HAN", "IDEOGRAPHIC": "HAN", "HALFWIDTH": None, "FULLWIDTH": None}


def _script(character: str) -> str | None:
    """The script of a letter as its Unicode name begins (``CYRILLIC SMALL LETTER A``: CYRILLIC); None for what
    every script writes (digits, punctuation, symbols, combining marks)."""
    if not unicodedata.category(character).startswith("L"):
        return None
    first = unicodedata.name(character, "").split(" ", 1)[0]
    return _SCRIPT_OF_NAME.get(first, first) or None


def mixed_scripts(username: str) -> list[str]:
    """The scripts of ``username`` (as read: compatibility forms folded) when they mix in a way a reader can be fooled
    by (``pаypal`` with a Cyrillic ``а``, Latin with Greek); empty when the name is of one script or of an allowed mix
    (Latin beside Han, kana, Bopomofo or Hangul)."""
    scripts = {s for s in map(_script, unicodedata.normalize("NFKC", username)) if s}
    if len(scripts) <= 1 or any(scripts <= allowed for allowed in ALLOWED_SCRIPT_MIXES):
        return []
    return sorted(scripts)


def username_key(username: str) -> str:
    """A username as people read it: compatibility forms folded (full-width letters), then case, and no invisible
    marks (a zero-width space)."""
    folded = unicodedata.normalize("NFKC", username).casefold()
    return "".join(c for c in folded if unicodedata.category(c) != "Cf")  # zero-width and other invisible marks


class Operator(Base):
    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    # The name as a reader of the audit log tells it apart (``username_key``): unique, so "Bob", "bob" and
    # "ｂｏｂ" are one name whichever database checks it (SQLite's lower() folds ASCII only).
    username_key: Mapped[str] = mapped_column(
        Text, default=lambda ctx: username_key(ctx.get_current_parameters()["username"])
    )
    display_name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    merchant_id: Mapped[int | None] = mapped_column(ForeignKey("merchants.id"))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Who created this operator (None: the command line, or before migration 0030). For the four-eyes rules
    # (``approval_refused_because``). No foreign key: SQLite cannot add one to a populated table in place
    # (operators are never deleted, so the id always names one).
    created_by_operator_id: Mapped[int | None]
    # An admin, finance or support account another admin made works once a second admin confirmed it
    # (``confirm_operator``); merchant staff (their own merchant's only) and the command line's (trusted) are
    # confirmed as they are made. None: made, not yet confirmed: its tokens are refused (403 operator_unconfirmed).
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_by_operator_id: Mapped[int | None]

    tokens: Mapped[list[OperatorToken]] = relationship(back_populates="operator")

    __table_args__ = (
        CheckConstraint("role in ('admin', 'finance', 'support', 'merchant_staff')", name="role"),
        # Merchant staff are scoped to exactly one merchant; platform roles to none.
        CheckConstraint("(role = 'merchant_staff') = (merchant_id is not null)", name="merchant_scope"),
        Index("uq_operators_username_key", "username_key", unique=True),
    )


class OperatorToken(Base):
    """A personal bearer token; only its SHA-256 is stored."""

    __tablename__ = "operator_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    operator: Mapped[Operator] = relationship(back_populates="tokens")


class AuditLog(Base):
    """Who did what, when and why. Written in the same transaction as the action."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    operator_id: Mapped[int | None] = mapped_column(ForeignKey("operators.id"), index=True)
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class ConsoleSession(Base):
    """A signed-in console session (web/console). The browser's cookie carries only ``id`` (random, signed
    by Flask) and its CSRF secret; the session itself lives here, so signing out, revoking the token the
    operator signed in with or disabling the operator ends it at once, wherever the cookie went."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # secrets.token_urlsafe(32)
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id"), index=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("operator_tokens.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(200))

    operator: Mapped[Operator] = relationship()
    token: Mapped[OperatorToken] = relationship()


@dataclass(frozen=True)
class Actor:
    """Who does an operator action, and from where."""

    operator: Operator
    ip: str | None = None

    @property
    def merchant_scope(self) -> int | None:
        """The one merchant a merchant-staff operator may see; None for platform roles."""
        return merchant_scope(self.operator)


def merchant_scope(operator: Operator) -> int | None:
    """The one merchant a merchant-staff operator may see; None for platform roles."""
    return operator.merchant_id if operator.role == OperatorRole.MERCHANT_STAFF else None


def audit(actor: Actor, action: str, target_type: str, target_id: object, reason: str | None = None, **details) -> None:
    """One audit line, written in the caller's transaction (so it commits or rolls back with the action)."""
    db.session.add(
        AuditLog(
            operator_id=actor.operator.id,
            action=action,
            target_type=target_type,
            target_id=str(target_id),
            reason=reason,
            details=details,
            ip=actor.ip,
        )
    )


class OperatorError(Exception):
    """A refused operator change; ``kind`` tells the web layer the status."""

    code, kind = "operator_error", "invalid"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code or self.code


class MerchantScopeError(OperatorError):
    code, kind = "merchant_scope", "invalid"


class LookalikeUsername(OperatorError):
    code, kind = "username_mixed_scripts", "invalid"


class InvisibleCharacters(OperatorError):
    code, kind = "username_invisible", "invalid"


# Control, format (zero-width, bidi override, BOM), surrogate, line and paragraph separators: in a name they make it
# read as another (the operators page, the audit log), or break the line it is shown on.
INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class DuplicateOperator(OperatorError):
    code, kind = "duplicate_operator", "conflict"


class MerchantNotFound(OperatorError):
    code, kind = "not_found", "not_found"


class OperatorNotFound(OperatorError):
    code, kind = "not_found", "not_found"


class OperatorStateError(OperatorError):
    code, kind = "operator_state", "conflict"


class OperatorForbidden(OperatorError):
    code, kind = "forbidden", "forbidden"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_operator_token(operator: Operator, label: str = "", ttl: timedelta | None = None) -> str:
    """A new personal token; only its digest is stored, the token is shown once."""
    token = "op_" + secrets.token_urlsafe(32)
    db.session.add(
        OperatorToken(
            operator_id=operator.id,
            token_sha256=token_digest(token),
            label=label,
            expires_at=utcnow() + ttl if ttl else None,
        )
    )
    db.session.flush()
    return token


# An account created this long before a proposal (or after it) is still its creator's hands for that proposal:
# creating a second account and approving one's own proposal with it is one person, not four eyes.
NEW_OPERATOR_COOLING = timedelta(hours=72)


def approval_refused_because(
    approver: Operator, proposer_id: int | None, proposed_at: datetime | None, now: datetime
) -> str | None:
    """Why ``approver`` may not approve what operator ``proposer_id`` proposed at ``proposed_at`` (None: they may).

    The proposer themselves never may; nor anyone of the proposer's own making: the approver and the proposer each
    stand for themselves and for whoever created them less than ``NEW_OPERATOR_COOLING`` before the proposal
    (or after it), up the line (A makes B, B makes C: C is A's). If the two lines meet, one person holds both pairs
    of eyes: the creator approving their new account's proposal, the new account approving its creator's, two
    accounts one admin made. Measured from the proposal, so waiting does not make a fresh account independent. Nor
    is what a since disabled account proposed (or an account it made) approved by anyone."""
    if proposer_id is None:
        return None
    if approver.id == proposer_id:
        return "you proposed it: another operator must approve"
    since = (proposed_at or now) - NEW_OPERATOR_COOLING
    proposer = db.session.get(Operator, proposer_id)
    if proposer is not None and not proposer.active:  # someone who left, a leaked token: their proposals go with them
        return (
            f"the proposer's account (operator {proposer_id}) was disabled: what it proposed is not approved; "
            "an active operator proposes it again if it is still wanted"
        )
    shared = _line(approver, since) & (_line(proposer, since) if proposer is not None else {proposer_id})
    if shared:
        hours = int(NEW_OPERATOR_COOLING.total_seconds() // 3600)
        return (
            f"operator {approver.username} and the proposer (operator {proposer_id}) are both of operator "
            f"{min(shared)}'s making (an account created less than {hours} h before the proposal, or after it): "
            "another operator must approve"
        )
    return None


def same_hands(operator: Operator, now: datetime) -> list[int]:
    """The operator and every account of the same making as of ``now`` (their lines of fresh creation meet, as
    ``approval_refused_because`` reads them): one person's hands, in id order. Only operators made less than
    ``NEW_OPERATOR_COOLING`` ago can join an older one's hands, so the read is of the few fresh accounts."""
    since = now - NEW_OPERATOR_COOLING
    mine = _line(operator, since)
    fresh = db.session.execute(select(Operator).where(Operator.created_at > since)).scalars()
    return sorted(mine | {other.id for other in fresh if _line(other, since) & mine})


def _line(operator: Operator, since: datetime) -> set[int]:
    """The operator and whoever created them, up the line while each was created after ``since``."""
    line = {operator.id}
    while operator.created_by_operator_id is not None and operator.created_at > since:
        creator = db.session.get(Operator, operator.created_by_operator_id)
        if creator is None or creator.id in line:
            break
        line.add(creator.id)
        operator = creator
    return line


def create_operator_record(
    username: str, display_name: str, role: str, merchant_id: int | None, created_by: int | None = None
) -> Operator:
    """The operator row alone (the command line's bootstrap; the database keeps the scope rule too). A username
    differing only in case (or in full-width letters) from another is the same name to a reader of the audit
    log: refused too, by the database's unique ``username_key`` as well. A username mixing scripts a reader cannot tell
    apart (a Cyrillic ``а`` among Latin letters: ``аdmin`` beside ``admin``) is refused (``mixed_scripts``), and so is
    a username or display name holding an invisible or control character (``\\u202enimda`` reads ``admin``)."""
    scripts = mixed_scripts(username)
    if scripts:
        raise LookalikeUsername(
            f"username {username!r} mixes the scripts {', '.join(scripts)}: it could pass for another name; "
            "write it in one script"
        )
    exists = db.session.execute(
        select(func.count()).where(Operator.username_key == username_key(username))
    ).scalar_one()
    if exists:
        raise DuplicateOperator(f"operator {username!r} exists")
    for field, text in (("username", username), ("display_name", display_name)):
        if any(unicodedata.category(c) in INVISIBLE for c in text):
            raise InvisibleCharacters(
                f"{field} {text!r} holds an invisible or control character (a bidi override shows "
                "'\\u202enimda' as 'admin'): it could pass for another name",
                code=f"{field}_invisible",
            )
    operator = Operator(
        username=username,
        display_name=display_name,
        role=role,
        merchant_id=merchant_id,
        created_by_operator_id=created_by,
    )
    db.session.add(operator)
    try:
        db.session.flush()
    except IntegrityError:  # a concurrent create won the race for the username
        raise DuplicateOperator(f"operator {username!r} exists") from None
    return operator


def create_operator(
    actor: Actor, username: str, display_name: str, role: str, merchant_id: int | None, reason: str
) -> tuple[Operator, str]:
    """A new operator and their first personal token (shown once), audited with the reason."""
    if (role == OperatorRole.MERCHANT_STAFF) != (merchant_id is not None):
        raise MerchantScopeError("merchant_id is required for merchant_staff and forbidden otherwise")
    scope = actor.merchant_scope
    if merchant_id is not None and (db.session.get(Merchant, merchant_id) is None or scope not in (None, merchant_id)):
        raise MerchantNotFound(f"merchant {merchant_id} not found")
    operator = create_operator_record(username, display_name, role, merchant_id, created_by=actor.operator.id)
    if role in CONFIRMED_ROLES:  # moves or approves money: a second admin confirms it before it works
        operator.confirmed_at = None
    token = issue_operator_token(operator, label="initial")
    audit(actor, "operator.create", "operator", operator.id, reason, role=role, merchant_id=merchant_id)
    return operator, token


# roles that move money or decide who gets it (support decides review cases: releases held rebates)
CONFIRMED_ROLES = (OperatorRole.ADMIN, OperatorRole.FINANCE, OperatorRole.SUPPORT)


def _locked_with_actor(actor: Actor, operator_id: int) -> Operator:
    """The account ``operator_id`` and the acting admin's own, locked in id order and read afresh: two admins
    disabling each other at once leave one of them working, and an admin disabled while their request ran acts on
    nobody (403 ``operator_disabled``). 404 when the account does not exist."""
    locked = db.session.execute(
        select(Operator)
        .where(Operator.id.in_((operator_id, actor.operator.id)))
        .order_by(Operator.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalars()
    found = {row.id: row for row in locked}
    if not found[actor.operator.id].active:
        raise OperatorForbidden("your account was disabled", code="operator_disabled")
    operator = found.get(operator_id)
    if operator is None:
        raise OperatorNotFound(f"operator {operator_id} not found")
    return operator


def confirm_operator(actor: Actor, operator_id: int, reason: str, now: datetime) -> Operator:
    """A second admin confirms an admin, finance or support account another admin made: from then on its tokens work.
    Not its creator, nor an account of the creator's making (``approval_refused_because``: a sock confirming a sock),
    once. The confirming admin's own row is locked and read afresh with it (as ``disable_operator`` reads it): an
    admin disabled while the request ran confirms nothing."""
    operator = _locked_with_actor(actor, operator_id)
    if operator.confirmed_at is not None:
        raise OperatorStateError("this account is confirmed already", code="operator_confirmed")
    if not operator.active:  # disabled before anyone confirmed it: it stays out
        raise OperatorStateError("this account is disabled: it is not confirmed any more", code="operator_disabled")
    if operator.created_by_operator_id == actor.operator.id:
        raise OperatorForbidden("the admin who made an account does not confirm it", code="same_operator")
    why = approval_refused_because(actor.operator, operator.created_by_operator_id, operator.created_at, now)
    if why:
        raise OperatorForbidden(why, code="approver_not_independent")
    operator.confirmed_at, operator.confirmed_by_operator_id = now, actor.operator.id
    audit(actor, "operator.confirm", "operator", operator.id, reason, role=operator.role)
    return operator


def disable_operator(actor: Actor, operator_id: int, reason: str, now: datetime) -> Operator:
    """Disable an account (someone left, a token leaked): every token of it is revoked and every console session it
    has open ends at once (``web.auth.operator_token``, ``web.console.auth``), audited with the reason. Not one's
    own account (another admin disables it: no admin locks the platform out by a slip). Again: the same answer,
    with nothing more written. There is no enabling again: a person back gets a new account, confirmed anew."""
    if operator_id == actor.operator.id:
        raise OperatorForbidden("an admin does not disable their own account: another admin does", code="own_account")
    operator = _locked_with_actor(actor, operator_id)
    revoked = db.session.execute(
        update(OperatorToken)
        .where(OperatorToken.operator_id == operator.id, OperatorToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    ended = db.session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.operator_id == operator.id, ConsoleSession.ended_at.is_(None))
        .values(ended_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if operator.active or revoked or ended:
        operator.active = False
        audit(actor, "operator.disable", "operator", operator.id, reason, role=operator.role, tokens_revoked=revoked)
    return operator
