"""Card-package coupons (微信卡券, docs/wechat-rules.md §6.4): handed over by the mini-program, not pushed.

WeChat has no server call that puts a card in a user's package: the mini-program
calls ``wx.addCard`` with a ``cardExt`` we sign with the card ``api_ticket``.
So ``send`` answers WAITING_USER_CONFIRM with that cardExt as ``package_info``,
signed ONCE and stored: the payout stays offered ("sent", costed at face value
from then on), is never re-signed, never cancelled unasked and never returns
its value by itself, since the card can still be added and redeemed.

WeChat tells us what happens to the card through the official account's message push
(``web.push`` records it, ``jobs.messages`` applies it here, :func:`apply_card_event`):
``user_get_card`` (its ``OuterStr`` is our external number with our HMAC tag: the cardExt's signature does
not cover ``outer_str``, so a person could otherwise name someone else's payout) decides the payout as delivered
(SUCCEEDED through ``record.apply_result``, the card's ``UserCardCode`` kept as ``wechat_ref``);
``user_consume_card`` records the redemption (``card_consumed_at``) and ``user_del_card`` the deletion
(``card_deleted_at``): neither moves money, except that either one for a card still offered proves it reached the
package (its ``user_get_card`` was lost) and decides the payout as delivered. Redeeming the code at the counter
(``/card/code/consume``, ``payouts.operations.settle_redeemed_card``) stays as the fallback when an event is lost:
whichever comes first decides the payout, the other finds it decided and moves nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select

from models import Payout, PayoutStatus, UserIdentity, alert_once, db
from models.payouts import TERMINAL, Rail
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings, apply_result
from wechat.errors import (
    WeChatError,
)
from wechat.mp import card_ext

USER_GET_CARD = "user_get_card"
OUTER_TAG_CHARS = 16  # base32 characters of HMAC-SHA256: 80 bits


def card_key(secret_key: str) -> bytes:
    """The key of our ``outer_str`` tags, derived from the app's SECRET_KEY (no new secret to manage)."""
    return hashlib.sha256(b"card outer_str\0" + secret_key.encode()).digest()


def outer_str(external_no: str, key: bytes) -> str:
    """What the cardExt carries as ``outer_str`` (WeChat echoes it as ``OuterStr``): our number and its tag."""
    digest = hmac.new(key, external_no.encode(), hashlib.sha256).digest()
    return f"{external_no}.{base64.b32encode(digest).decode()[:OUTER_TAG_CHARS].lower()}"


def external_no_of(outer: str, key: bytes) -> str | None:
    """Our number from an ``OuterStr`` we made, or None (not ours, or altered on the way)."""
    number = outer.rpartition(".")[0]
    return number if number and hmac.compare_digest(outer_str(number, key), outer) else None


class CardRail:
    name = Rail.CARD_COUPON

    def __init__(
        self,
        card_id: str,
        api_ticket_provider: Callable[[], str],
        *,
        rate_per_second: int = 50,
        openid_appid: str | None = None,
        face_value_fen: int | None = None,
        custom_code: bool = False,
        outer_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ):
        """``openid_appid``: set for a ``bind_openid`` card (the appid whose openid it is bound to).
        ``face_value_fen``: set to refuse amounts the card does not carry. ``custom_code``: a
        custom-code card (not deposit mode) gets our external number as its code."""
        if not card_id:
            raise ValueError("CardRail needs a card_id")
        self.card_id, self.api_ticket_provider, self.rate_per_second = card_id, api_ticket_provider, rate_per_second
        self.openid_appid, self.face_value_fen, self.custom_code = openid_appid, face_value_fen, custom_code
        self.clock, self.outer_key = clock, outer_key

    def build_request(self, payout: Payout, now: datetime) -> dict[str, Any] | RailResult:
        if self.face_value_fen is not None and payout.amount_fen != self.face_value_fen:
            why = f"the card is worth {self.face_value_fen} fen, not {payout.amount_fen}"
            return RailResult(Outcome.FALLBACK, "NO_CARD_FOR_AMOUNT", why)
        request: dict[str, Any] = {"card_id": self.card_id, "amount_fen": payout.amount_fen}
        if self.openid_appid:
            openid = db.session.execute(
                select(UserIdentity.openid)
                .where(UserIdentity.user_id == payout.user_id, UserIdentity.appid == self.openid_appid)
                .limit(1)
            ).scalar_one_or_none()
            if openid is None:
                return RailResult(Outcome.FALLBACK, "NO_OPENID", "the card is bound to an openid the user lacks")
            request["openid"] = openid
        return request

    def send(self, external_no: str, request: dict[str, Any]) -> RailResult:
        try:
            package_info = self.package_info(external_no, request)
        except WeChatError as exc:  # no ticket: nothing reached the user, sign again later
            return RailResult(Outcome.RETRY, exc.code, f"card api_ticket unavailable: {exc.message}")
        return RailResult(
            Outcome.WAITING_USER_CONFIRM, "WAIT_ADD_CARD", package_info=package_info, details={"card_id": self.card_id}
        )

    def query(self, external_no: str, request: dict[str, Any]) -> RailResult:
        # Nothing at WeChat tells whether the user added the card, and the cardExt is never signed again:
        # the one stored is kept (a payout with none yet is signed once by the dispatcher's send).
        return RailResult(Outcome.WAITING_USER_CONFIRM, "WAIT_ADD_CARD", "offered; decided at redemption")

    def package_info(self, external_no: str, request: dict[str, Any]) -> str:
        """The cardExt string for ``wx.addCard({cardList: [{cardId, cardExt}]})``; cardId is request["card_id"]."""
        ext = card_ext(
            self.api_ticket_provider(),
            request["card_id"],
            int(self.clock()),
            secrets.token_hex(16),
            code=external_no if self.custom_code else None,
            openid=request.get("openid"),
        )
        # not covered by the cardExt's signature: our tag makes it ours (echoed as OuterStr in the card events)
        ext["outer_str"] = outer_str(external_no, self.outer_key) if self.outer_key else external_no
        return json.dumps(ext, ensure_ascii=False, separators=(",", ":"))


def card_received(external_no: str, user_card_code: str | None = None) -> RailResult:
    """The user added the card (OA event ``user_get_card``): the result for the caller to apply."""
    return RailResult(
        Outcome.SUCCEEDED, USER_GET_CARD, f"card of {external_no} added by the user", wechat_ref=user_card_code
    )


USER_CONSUME_CARD = "user_consume_card"
USER_DEL_CARD = "user_del_card"
CARD_EVENTS = frozenset({USER_GET_CARD, USER_CONSUME_CARD, USER_DEL_CARD})


class CardEventOutcome:
    APPLIED = "applied"  # the payout moved, or the event was recorded on it
    ALREADY = "already"  # it was recorded before (or decided by a redemption): nothing moves
    UNKNOWN = "unknown"  # not a card payout of ours: nothing moves
    LATE = "late"  # the card was added after its payout was cancelled or failed: an operator is alerted


class CardPayoutBusy(Exception):
    """The payout is in a dispatcher's hands (sending): apply the event again later."""


def _card_payout(external_no: str | None, code: str | None) -> Payout | None:
    """The card payout an event is about, locked: by our number when the event carries it in OuterStr (only
    that one), else by its card code (the code recorded for it, or our number as a custom code)."""
    if external_no:
        key = Payout.external_no == external_no
    elif code:
        key = or_(Payout.wechat_ref == code, Payout.external_no == code)
    else:
        return None
    stmt = select(Payout).where(Payout.rail == Rail.CARD_COUPON, key).order_by(Payout.id).limit(1)
    return db.session.execute(stmt.with_for_update().execution_options(populate_existing=True)).scalars().first()


def apply_card_event(
    event: str,
    fields: dict[str, Any],
    now: datetime,
    settings: DispatchSettings,
    outer_key: bytes,
    holder_id: int | None = None,
) -> tuple[str, Payout | None]:
    """One card event pushed by WeChat, applied to its payout once. Flushes only.

    ``fields``: the push's fields (``OuterStr``, ``UserCardCode``, ``CardId``, ``IsGiveByFriend`` …). A card
    given on by a friend (``IsGiveByFriend=1``) was delivered to the first person already: nothing moves.
    ``OuterStr`` must carry our tag (``outer_key``); the card must be the payout's card; and when the
    holder's openid is a person we know (``holder_id``), that person must be the payout's: otherwise an
    operator is alerted and nothing moves.
    """
    if event not in CARD_EVENTS:
        raise ValueError(f"not a card event: {event}")
    outer, code = str(fields.get("OuterStr") or "") or None, str(fields.get("UserCardCode") or "") or None
    if event == USER_GET_CARD and str(fields.get("IsGiveByFriend") or "0") == "1":
        return CardEventOutcome.UNKNOWN, None
    external_no = external_no_of(outer, outer_key) if outer else None
    if outer and external_no is None:
        alert_once("card_event_forged", outer[:64], f"a {event} event names {outer[:64]!r}, which is not ours")
        return CardEventOutcome.UNKNOWN, None
    payout = _card_payout(external_no, code)
    if payout is None:
        return CardEventOutcome.UNKNOWN, None
    card_id = str(fields.get("CardId") or "")
    ours = (payout.request or {}).get("card_id")
    if (card_id and ours and card_id != ours) or (holder_id is not None and holder_id != payout.user_id):
        alert_once(
            "card_event_mismatch",
            f"{payout.external_no}:{event}",
            f"a {event} event for payout {payout.external_no} came with card {card_id or '?'} from person "
            f"{holder_id if holder_id is not None else '?'}: not its card or not its person; nothing moved",
        )
        return CardEventOutcome.UNKNOWN, None
    if event == USER_GET_CARD:
        return _received(payout, code, now, settings), payout
    if payout.status not in TERMINAL:
        # its user_get_card was lost: a redemption, or a deletion from the package, proves delivery (a payout an
        # operator or a query has yet to decide included; one a dispatcher holds is applied again later)
        _received(payout, code, now, settings)
    column = "card_consumed_at" if event == USER_CONSUME_CARD else "card_deleted_at"
    if getattr(payout, column) is not None:
        return CardEventOutcome.ALREADY, payout
    setattr(payout, column, now)
    if event == USER_CONSUME_CARD and payout.status in TERMINAL and payout.status != PayoutStatus.SUCCEEDED:
        # a card cannot be recalled: redeemed after its payout's money went back (an operator's cancel), the value
        # was given twice, and its user_get_card (which would have alerted) may have been lost. Nothing moves here.
        alert_once(
            "card_consumed_late",
            payout.external_no,
            f"the card of payout {payout.external_no} was redeemed, but the payout is {payout.status} and its "
            f"{payout.amount_fen} fen went back: check the card and the money",
        )
        return CardEventOutcome.LATE, payout
    return CardEventOutcome.APPLIED, payout


def _received(payout: Payout, code: str | None, now: datetime, settings: DispatchSettings) -> str:
    if code:
        _code_elsewhere(payout, code)
    if payout.status == PayoutStatus.SUCCEEDED:
        if code and payout.wechat_ref is None:
            payout.wechat_ref = code
        return CardEventOutcome.ALREADY
    if payout.status in TERMINAL:
        alert_once(
            "card_added_late",
            payout.external_no,
            f"the user added the card of payout {payout.external_no}, which is {payout.status}: check the card",
        )
        return CardEventOutcome.LATE
    if payout.status not in (PayoutStatus.WAITING_USER_CONFIRM, PayoutStatus.UNKNOWN, PayoutStatus.NEEDS_OPERATOR):
        raise CardPayoutBusy(f"payout {payout.external_no} is {payout.status}")
    apply_result(payout, card_received(payout.external_no, code), now, settings)
    return CardEventOutcome.APPLIED


def _code_elsewhere(payout: Payout, code: str) -> None:
    """WeChat's event gives this payout's card the code ``code``; one of our other card payouts of the same card that
    carries it was given it by a person's own ``/card-code`` (a code of this card, not of that payout's): an operator
    is told once (redeeming the code decides the older payout)."""
    others = db.session.execute(
        select(Payout.external_no, Payout.request).where(
            Payout.rail == Rail.CARD_COUPON, Payout.id != payout.id, Payout.wechat_ref == code
        )
    ).all()
    card = (payout.request or {}).get("card_id")
    clash = [no for no, request in others if (request or {}).get("card_id") in (None, card) or card is None]
    if clash:
        alert_once(
            "card_code_on_two_payouts",
            f"{code}:{payout.external_no}",
            f"WeChat gave the card of payout {payout.external_no} the code recorded for payout(s) {', '.join(clash)}: "
            "check which payout the card belongs to",
        )
