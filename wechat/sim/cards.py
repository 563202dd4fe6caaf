"""Simulated card package (卡券, docs/wechat-rules.md §6.4): what ``wx.addCard`` does on the phone, and the
server calls ``/card/code/decrypt`` and ``/card/code/consume``; each step the person takes is pushed to the
official account's push URL as WeChat does (``user_get_card``, ``user_consume_card``, ``user_del_card``).

A card payout's cardExt is signed by our app with the simulator's api_ticket; ``add_card`` checks that
signature as WeChat does, issues the code (the custom code in the cardExt, else a code of its own) and
answers it encrypted, like the ``wx.addCard`` success callback. Encrypted codes are the simulator's own
reversible encryption (AES-GCM under the card key of its shared material); only codes it issued decrypt.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wechat.mp import card_signature
from wechat.sim.errors import SimError
from wechat.sim.store import Collection

CARD_TICKET = "sim-ticket-wx_card"  # what the simulator's /cgi-bin/ticket/getticket?type=wx_card answers
NONCE_BYTES = 12


class CardMixin:
    card_event: Any  # PushMixin.card_event: tells the official account's push URL

    def __init__(self, card_key: bytes | None = None) -> None:
        self._card_key = AESGCM(card_key or AESGCM.generate_key(bit_length=256))

    @property
    def card_codes(self) -> Collection:
        """code → card_id, openid, custom, status."""
        return self.store.collection("card_codes")

    def add_card(self, card_id: str, card_ext: str | dict[str, Any], openid: str) -> dict[str, Any]:
        """``wx.addCard({cardList: [{cardId, cardExt}]})`` accepted by the user: the card enters their package."""
        ext = json.loads(card_ext) if isinstance(card_ext, str) else card_ext
        if not isinstance(ext, dict):
            raise SimError(200, "40080", "invalid card ext: not a JSON object")
        expected = card_signature(
            CARD_TICKET, ext.get("timestamp"), ext.get("nonce_str"), card_id, ext.get("code"), ext.get("openid")
        )
        if not card_id or ext.get("signature") != expected:
            raise SimError(200, "40080", "invalid card ext")
        if ext.get("openid") and ext["openid"] != openid:
            raise SimError(200, "40080", "invalid card ext: the card is bound to another openid")
        with self.lock:
            code = ext.get("code") or "".join(secrets.choice("0123456789") for _ in range(12))
            existing = self.card_codes.get(code)
            if existing is not None and existing["card_id"] != card_id:
                raise SimError(200, "40056", "invalid serial code")
            if existing is None:
                card = {
                    "card_id": card_id,
                    "openid": openid,
                    "custom": bool(ext.get("code")),
                    "status": "NORMAL",
                    "outer_str": ext.get("outer_str", ""),
                }
                self.card_codes[code] = card
                self.card_event("user_get_card", code, card, IsGiveByFriend=0)  # WeChat tells the OA
        return {"cardId": card_id, "code": self.encrypt_card_code(code), "isSuccess": True}

    def encrypt_card_code(self, code: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return base64.b64encode(nonce + self._card_key.encrypt(nonce, code.encode(), b"card-code")).decode()

    def decrypt_card_code(self, encrypt_code: Any) -> dict[str, Any]:
        """``POST /card/code/decrypt {"encrypt_code"}``."""
        if not isinstance(encrypt_code, str) or not encrypt_code:
            raise SimError(200, "41011", "missing encrypt_code")
        try:
            raw = base64.b64decode(encrypt_code, validate=True)
            code = self._card_key.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], b"card-code").decode()
        except (ValueError, binascii.Error, InvalidTag):
            raise SimError(200, "40075", "invalid encrypt code") from None
        with self.lock:
            if code not in self.card_codes:
                raise SimError(200, "40056", "invalid serial code")
        return {"errcode": 0, "errmsg": "ok", "code": code}

    def consume_card_code(self, code: Any, card_id: Any) -> dict[str, Any]:
        """``POST /card/code/consume {code, card_id?}``: once; again → 40099."""
        with self.lock:
            card = self.card_codes.get(code) if isinstance(code, str) else None
            if card is None or (card_id and card_id != card["card_id"]):
                raise SimError(200, "40056", "invalid serial code")
            if card["custom"] and not card_id:
                raise SimError(200, "41012", "missing card_id: required for a custom-code card")
            if card["status"] == "CONSUMED":
                raise SimError(200, "40099", "invalid code, this code has consumed.")
            card["status"] = "CONSUMED"
            self.card_event("user_consume_card", code, dict(card), ConsumeSource="FROM_API")
            return {"errcode": 0, "errmsg": "ok", "openid": card["openid"], "card": {"card_id": card["card_id"]}}

    def delete_card(self, code: Any) -> dict[str, Any]:
        """The person deletes the card from their package (the phone's card page)."""
        with self.lock:
            card = self.card_codes.get(code) if isinstance(code, str) else None
            if card is None or card["status"] == "DELETED":
                raise SimError(200, "40056", "invalid serial code")
            card["status"] = "DELETED"
            self.card_event("user_del_card", code, dict(card))
            return {"errcode": 0, "errmsg": "ok"}
