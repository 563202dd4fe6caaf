"""Card-package coupons (微信卡券, docs/wechat-rules.md §6.4): handed over by the mini-program, not pushed.

WeChat has no server call that puts a card in a user's package: the mini-program
calls ``wx.addCard`` with a ``cardExt`` we sign with the card ``api_ticket``.
So ``send`` answers WAITING_USER_CONFIRM with that cardExt as ``package_info``,
signed ONCE and stored: the payout stays offered ("sent", costed at face value
from then on), is never re-signed, never cancelled unasked and never returns
its value by itself, since the card can still be added and redeemed. Until the
OA message channel exists (the ``user_get_card`` event, its ``OuterStr`` our
external number, applied through :func:`card_received`), a card payout is decided
at redemption: ``/card/code/consume`` of its code (see ``payouts.operations``).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from models import Payout, UserIdentity, db
from models.payouts import Rail
from payouts.rails import Outcome, RailResult
from wechat.errors import (
    WeChatError,
)
from wechat.mp import card_ext

USER_GET_CARD = "user_get_card"


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
        clock: Callable[[], float] = time.time,
    ):
        """``openid_appid``: set for a ``bind_openid`` card (the appid whose openid it is bound to).
        ``face_value_fen``: set to refuse amounts the card does not carry. ``custom_code``: a
        custom-code card (not deposit mode) gets our external number as its code."""
        if not card_id:
            raise ValueError("CardRail needs a card_id")
        self.card_id, self.api_ticket_provider, self.rate_per_second = card_id, api_ticket_provider, rate_per_second
        self.openid_appid, self.face_value_fen, self.custom_code = openid_appid, face_value_fen, custom_code
        self.clock = clock

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
        ext["outer_str"] = external_no  # not signed; echoed as OuterStr in the user_get_card event
        return json.dumps(ext, ensure_ascii=False, separators=(",", ":"))


def card_received(external_no: str, user_card_code: str | None = None) -> RailResult:
    """The user added the card (OA event ``user_get_card``): the result for the caller to apply."""
    return RailResult(
        Outcome.SUCCEEDED, USER_GET_CARD, f"card of {external_no} added by the user", wechat_ref=user_card_code
    )
