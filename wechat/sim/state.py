"""The local WeChat simulator's state: its records live in a :mod:`wechat.sim.store`.

Business logic lives in the mixins of :mod:`wechat.sim.pay`, :mod:`wechat.sim.payouts`
and :mod:`wechat.sim.cards`; this module holds keys, identity, fault injection and
notification building/delivery. ``with self.lock`` is one store transaction: every
read-check-write of a record happens inside one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from wechat import crypto
from wechat.sim.cards import CardMixin
from wechat.sim.delivery import WECHAT_RETRY_SCHEDULE_S, Delivery, NotificationDispatcher, Transport
from wechat.sim.errors import SimError
from wechat.sim.keys import SimulatorKeys
from wechat.sim.messages import MessagesMixin
from wechat.sim.partner import PartnerMixin
from wechat.sim.pay import PayMixin
from wechat.sim.payouts import PayoutMixin, beijing_now_iso
from wechat.sim.profitsharing import ProfitSharingMixin
from wechat.sim.push import PushMixin
from wechat.sim.robot import RobotMixin
from wechat.sim.store import Collection, MemoryStore, Store
from wechat.text import json_text

# A person's name fits every identifier the simulator makes of it within WeChat's 64 characters (the longest
# prefix: ``sim-oa-openid-``); a ``code-<name>`` with a longer name is a code WeChat never issued (40029).
MAX_NAME = 64 - len("sim-oa-openid-")

EVENT_SUMMARIES = {
    "TRANSACTION.SUCCESS": "支付成功",
    "REFUND.SUCCESS": "退款成功",
    "REFUND.ABNORMAL": "退款异常",
    "REFUND.CLOSED": "退款关闭",
    "MCHTRANSFER.BILL.FINISHED": "商家转账单据终态通知",
}


@dataclass
class Fault:
    path_prefix: str
    status: int
    code: str
    message: str
    times: int
    after: bool = False  # act first, then lose the answer: WeChat holds what the caller never heard of


class SimulatorState(
    PartnerMixin, PayMixin, PayoutMixin, CardMixin, PushMixin, MessagesMixin, RobotMixin, ProfitSharingMixin
):
    """Everything the simulated WeChat remembers, plus its keys."""

    def __init__(
        self,
        *,
        mchid: str,
        apiv3_key: str,
        merchant_public_key: rsa.RSAPublicKey | None = None,
        api_v2_key: str = "",
        app_secrets: dict[str, str] | None = None,
        keys: SimulatorKeys | None = None,
        key_mode: str = "public_key",
        notify_transport: Transport | None = None,
        notify_initial_delay_s: float = 0.2,
        notify_retry_schedule_s: tuple[float, ...] = WECHAT_RETRY_SCHEDULE_S,
        notify_time_scale: float = 0.01,
        max_clock_skew_s: int = 300,
        pay_base_url: str | None = None,
        store: Store | None = None,
        card_key: bytes | None = None,
    ) -> None:
        self.mchid, self.apiv3_key, self.api_v2_key = mchid, apiv3_key, api_v2_key
        self.merchant_public_key = merchant_public_key
        self.app_secrets = dict(app_secrets or {})
        self.keys = keys or SimulatorKeys()
        self.key_mode = key_mode  # the merchant account's mode: public_key | certificate | random (migrating)
        self.max_clock_skew_s = max_clock_skew_s
        self.pay_base_url = pay_base_url.rstrip("/") if pay_base_url else None
        self.store = store or MemoryStore()
        self.lock = self.store.lock
        self.dispatcher = NotificationDispatcher(
            self._sign_notification,
            notify_transport,
            notify_initial_delay_s,
            notify_retry_schedule_s,
            notify_time_scale,
        )
        PayMixin.__init__(self)
        CardMixin.__init__(self, card_key)
        PushMixin.__init__(self, notify_transport, notify_time_scale)

    # -- what is remembered (shared by every process using the same store) ------------
    @property
    def faults(self) -> Collection:
        return self.store.collection("faults")

    @property
    def oauth_codes(self) -> Collection:
        return self.store.collection("oauth_codes")

    @property
    def oauth_scopes(self) -> Collection:
        """OAuth code → the scope the person agreed to (``snsapi_base`` only: a code without one is userinfo's)."""
        return self.store.collection("oauth_scopes")

    @property
    def used_codes(self) -> Collection:
        return self.store.collection("used_codes")

    @property
    def access_tokens(self) -> Collection:
        """appid → [stable token, expires at]."""
        return self.store.collection("access_tokens")

    @property
    def token_calls(self) -> int:
        return self.store.get("counters", "token_calls") or 0

    # -- faults ------------------------------------------------------------------
    def inject_fault(
        self, path_prefix: str, status: int, code: str, message: str = "", times: int = 1, *, after: bool = False
    ) -> None:
        """The next ``times`` calls under ``path_prefix`` answer this error instead.

        ``after``: the call is carried out first and only its answer is replaced (a 500 or 429 after acting);
        status 0 drops the connection instead of answering, code ``LATE_ANSWER`` answers after the caller's
        timeout (see ``LOST_ANSWER_HEADER``).
        """
        with self.lock:
            number = self.store.increment("counters", "faults")
            self.faults[f"{number:09d}"] = asdict(Fault(path_prefix, status, code, message or code, times, after))

    def take_fault(self, path: str) -> Fault | None:
        # Every request asks; almost always none is set. A lock-free look first, so a request with no
        # fault to take does not queue behind every other simulator step for the answer "none".
        if not any(path.startswith(f["path_prefix"]) and f["times"] > 0 for _, f in self.store.peek("faults")):
            return None
        with self.lock:
            for _, fault in self.faults.items():  # in the order they were injected
                if path.startswith(fault["path_prefix"]) and fault["times"] > 0:
                    fault["times"] -= 1
                    return Fault(**fault)
        return None

    # -- identity ----------------------------------------------------------------
    def check_app(self, appid: str, secret: str) -> None:
        expected = self.app_secrets.get(appid)
        if expected is not None and expected != secret:
            raise SimError(200, "40125", "invalid appsecret")

    def login_name(self, code: str, single_use: bool = True) -> str:
        """``code-<name>`` → name; a code issued by the consent page → its name."""
        with self.lock:
            if code in self.used_codes:
                raise SimError(200, "40163", "code been used")
            if code.startswith("code-") and 5 < len(code) <= 5 + MAX_NAME:
                return code[5:]
            name = self.oauth_codes.pop(code, None)
            if name is None:
                raise SimError(200, "40029", "invalid code")
            if single_use:
                self.used_codes[code] = True
            return name

    def issue_oauth_code(self, name: str, scope: str = "snsapi_userinfo") -> str:
        code = "oauth-" + secrets.token_hex(8)
        with self.lock:
            self.oauth_codes[code] = name
            if scope == "snsapi_base":
                self.oauth_scopes[code] = scope
        return code

    def oauth_grant(self, code: str) -> tuple[str, str]:
        """An OAuth code → (name, the scope it was given under); single use, as ``login_name``."""
        name = self.login_name(code)
        with self.lock:
            return name, self.oauth_scopes.pop(code, None) or "snsapi_userinfo"

    @staticmethod
    def session_key(name: str) -> str:
        return base64.b64encode(hashlib.sha256(f"session-{name}".encode()).digest()[:16]).decode()

    def new_access_token(self) -> str:
        return f"sim-token-{self.store.increment('counters', 'token_calls')}-{secrets.token_hex(4)}"

    def stable_access_token(self, appid: str, force_refresh: bool, ttl_s: int = 7200) -> tuple[str, int]:
        """``/cgi-bin/stable_token``: the current token while valid (normal mode), a new one when forced."""
        with self.lock:
            token, expires_at = self.access_tokens.get(appid, ("", 0.0))
            now = time.time()
            if force_refresh or expires_at <= now:
                token, expires_at = self.new_access_token(), now + ttl_s
                self.access_tokens[appid] = [token, expires_at]
            return token, int(expires_at - now)

    def revoke_access_tokens(self) -> None:
        """Every stable token stops working (as after an AppSecret reset): calls answer 40001."""
        with self.lock:
            for appid in list(self.access_tokens):
                del self.access_tokens[appid]

    def check_access_token(self, token: str) -> None:
        with self.lock:
            valid = any(t == token and exp > time.time() for t, exp in self.access_tokens.values())
        if not valid:
            raise SimError(200, "40001", "invalid credential, access_token is invalid or not latest")

    # -- request authentication ----------------------------------------------------
    def check_authorization(self, method: str, canonical_url: str, header: str, body: bytes) -> None:
        """Verify the merchant's ``Authorization`` like WeChat: 401 SIGN_ERROR otherwise."""
        if self.merchant_public_key is None:
            raise SimError(401, "SIGN_ERROR", "simulator has no merchant public key")
        try:
            items = crypto.parse_authorization(header or "")
            ts = int(items["timestamp"])
        except ValueError as exc:
            raise SimError(401, "SIGN_ERROR", f"bad Authorization: {exc}") from exc
        if items["mchid"] != self.mchid:
            raise SimError(401, "SIGN_ERROR", "mchid does not match")
        if abs(time.time() - ts) > self.max_clock_skew_s:
            raise SimError(401, "SIGN_ERROR", "timestamp out of window")
        message = f"{method}\n{canonical_url}\n{ts}\n{items['nonce_str']}\n".encode() + body + b"\n"
        if not crypto.verify_rsa(message, items["signature"], self.merchant_public_key):
            raise SimError(401, "SIGN_ERROR", "signature does not verify")

    # -- notifications -----------------------------------------------------------
    def build_notification(
        self,
        event_type: str,
        resource: dict[str, Any],
        original_type: str,
        timestamp: int | None = None,
        serial: str | None = None,
        notification_id: str | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """A signed, AES-GCM encrypted callback exactly as WeChat sends it."""
        body = self.notification_body(event_type, resource, original_type, notification_id)
        headers = {"Content-Type": "application/json", **self._sign_notification(body, timestamp, serial)}
        return headers, body

    def notification_body(
        self, event_type: str, resource: dict[str, Any], original_type: str, notification_id: str | None = None
    ) -> bytes:
        nonce = secrets.token_hex(6)
        plaintext = json_text(resource)
        envelope = {
            "id": notification_id or f"EV-{uuid.uuid4()}",
            "create_time": beijing_now_iso(),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": EVENT_SUMMARIES.get(event_type, event_type),
            "resource": {
                "original_type": original_type,
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": crypto.aes_gcm_encrypt(self.apiv3_key, nonce, plaintext, original_type),
                "associated_data": original_type,
                "nonce": nonce,
            },
        }
        return json_text(envelope).encode("utf-8")

    def _sign_notification(
        self, body: bytes, timestamp: int | None = None, serial: str | None = None
    ) -> dict[str, str]:
        return self.keys.sign_headers(body, serial=serial or self.default_serial(), timestamp=timestamp)

    def default_serial(self) -> str:
        """The key WeChat uses when the merchant named none (``key_mode``; random while migrating)."""
        mode = self.key_mode
        if mode == "random":
            mode = secrets.choice(["public_key", "certificate"])
        return self.keys.platform_serial if mode == "certificate" else self.keys.public_key_id

    def sign_answer(self, body: bytes, requested_serial: str | None) -> dict[str, str]:
        """Answers follow the ``Wechatpay-Serial`` the merchant sent, else ``key_mode``."""
        known = (self.keys.public_key_id, self.keys.platform_serial)
        return self.keys.sign_headers(
            body, serial=requested_serial if requested_serial in known else self.default_serial()
        )

    def notify(self, url: str, event_type: str, resource: dict[str, Any], original_type: str) -> Delivery | None:
        """Queue a callback; it is POSTed once the step is committed and the request has finished."""
        if not url:
            return None
        body = self.notification_body(event_type, resource, original_type)
        event_id = json.loads(body)["id"]
        delivery = Delivery(url=url, body=body, event_type=event_type, notification_id=event_id)
        self.store.after_commit(lambda: self.dispatcher.schedule(delivery))
        return delivery
