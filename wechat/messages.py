"""Sending messages to a person: the mini-program subscribe message and the official account's template message.

``POST /cgi-bin/message/subscribe/send`` (one recorded consent = one send) and
``POST /cgi-bin/message/template/send`` (the person follows the OA), both with the shared access token
(``wechat.mp.call_with_token``: a token error drops the token and retries once). Neither has a query API:
after a lost answer nobody can tell whether the person got the message, so callers must not resend it.

Errors: 43101 (the person refused or their consent is used up) → :class:`WeChatConsentRefused`; 47003 (bad
data), 41030 (bad page), 40037 (bad template id), 40003 (bad openid), 43004 (not following) →
:class:`WeChatMessageRefused` (sending again would fail again); 45009 / 45011 (quota, frequency) →
``WeChatRateLimited``; -1, timeouts and 5xx → ``WeChatUnavailable``. No access token (its API refused or
failed: a wrong secret, an IP off the allow-list), or a shared token store that failed (a Redis timeout) →
``WeChatUnavailable`` retryable (the message was never sent).
"""

from __future__ import annotations

from typing import Any

import requests

from wechat.errors import WeChatBusinessError, WeChatError, WeChatRateLimited, WeChatTokenInvalid, WeChatUnavailable
from wechat.mp import API_BASE, AccessTokenStore, _request_json, call_with_token

SUBSCRIBE_PATH = "/cgi-bin/message/subscribe/send"
TEMPLATE_PATH = "/cgi-bin/message/template/send"
CUSTOM_PATH = "/cgi-bin/message/custom/send"  # customer-service message: within 48 h of the person's message
CUSTOM_TEXT_BYTES = 2048
MINIPROGRAM_STATES = ("formal", "trial", "developer")
REFUSED_CODES = frozenset({"47003", "41030", "40037", "40003", "43004", "41028", "41029", "45015"})
QUOTA_CODES = frozenset({"45009", "45011", "45047"})


class WeChatConsentRefused(WeChatBusinessError):
    """43101: the person refused this template, or has no consent left: do not send on it again."""

    default_code = "43101"


class WeChatMessageRefused(WeChatBusinessError):
    """A message WeChat will never take as it is (bad data / page / template / openid, not following)."""

    default_code = "47003"


def _mapped(exc: WeChatBusinessError) -> Exception:
    if exc.code == "43101":
        return WeChatConsentRefused(exc.message, code=exc.code)
    if exc.code in REFUSED_CODES:
        return WeChatMessageRefused(exc.message, code=exc.code)
    if exc.code in QUOTA_CODES:
        return WeChatRateLimited(exc.message, code=exc.code)
    return exc


class TokenStoreDown(WeChatError):
    """The shared access-token store (Redis) failed: no message call was made with what it should have held."""

    default_code = "TOKEN_STORE"


class _GuardedStore:
    """The token store, its failures (a Redis timeout, a refused connection) raised as :class:`TokenStoreDown`: every
    use of the store comes before a message call, or after WeChat refused the token, so the message is not sent."""

    def __init__(self, store: AccessTokenStore) -> None:
        self.store = store

    def _guarded(self, use, *args):
        try:
            return use(*args)
        except Exception as exc:  # noqa: BLE001 - the store's client raises its own errors (redis, a socket)
            raise TokenStoreDown(f"{exc.__class__.__name__}: {exc}"[:300]) from exc

    def get(self, key: str) -> str | None:
        return self._guarded(self.store.get, key)

    def set(self, key: str, value: str, ttl_s: int) -> None:
        self._guarded(self.store.set, key, value, ttl_s)

    def discard(self, key: str, value: str) -> None:
        self._guarded(self.store.discard, key, value)


class MessageClient:
    """One app's message sending (the mini-program's appid, or the official account's)."""

    def __init__(
        self,
        appid: str,
        secret: str,
        token_store: AccessTokenStore,
        api_base: str = API_BASE,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (3.05, 10),
    ) -> None:
        self.appid, self.secret, self.token_store = appid, secret, token_store
        self.api_base = api_base.rstrip("/")
        self.session = session or requests.Session()
        self.timeout = timeout

    def _post(self, path: str, body: dict[str, Any]) -> str:
        url = self.api_base + path
        answered: list[WeChatError] = []  # what the message API itself raised (else the access token failed)

        def call(token: str) -> dict[str, Any]:
            try:
                return _request_json(self.session, "POST", url, {"access_token": token}, self.timeout, body)
            except WeChatTokenInvalid:
                raise
            except WeChatError as exc:
                raised = _mapped(exc) if isinstance(exc, WeChatBusinessError) else exc
                answered.append(raised)
                if raised is exc:
                    raise
                raise raised from exc

        try:
            answer = call_with_token(
                _GuardedStore(self.token_store),
                self.appid,
                self.secret,
                call,
                self.api_base,
                self.session,
                self.timeout,
            )
        except WeChatError as exc:
            if answered and exc is answered[-1]:
                raise
            # No access token (its API refused or did not answer: a wrong secret, an IP not on the allow-list, its
            # own quota), a token refused twice, or the token store down: the message API never took the message,
            # so it is certainly not sent and may be tried again later; not a refusal of the message itself.
            raise WeChatUnavailable(
                f"access token: {exc.message}", code=f"TOKEN_{exc.code}", retryable=True, outcome_unknown=False
            ) from exc
        if not isinstance(answer, dict):
            raise WeChatUnavailable("answer is not an object", code="UNPARSEABLE_RESPONSE")
        return str(answer.get("msgid", ""))

    def send_subscribe(
        self,
        touser: str,
        template_id: str,
        data: dict[str, dict[str, str]],
        page: str | None = None,
        miniprogram_state: str = "formal",
        lang: str = "zh_CN",
    ) -> str:
        """A mini-program subscribe message; WeChat's msgid ("" when it gave none)."""
        if miniprogram_state not in MINIPROGRAM_STATES:
            raise ValueError(f"miniprogram_state is one of {', '.join(MINIPROGRAM_STATES)}")
        body: dict[str, Any] = {"touser": touser, "template_id": template_id, "data": data}
        if page:
            body["page"] = page
        body.update(miniprogram_state=miniprogram_state, lang=lang)
        return self._post(SUBSCRIBE_PATH, body)

    def send_template(
        self,
        touser: str,
        template_id: str,
        data: dict[str, dict[str, str]],
        miniprogram_appid: str | None = None,
        pagepath: str | None = None,
    ) -> str:
        """An official-account template message (opening the mini-program's page when given); WeChat's msgid."""
        body: dict[str, Any] = {"touser": touser, "template_id": template_id, "data": data}
        if miniprogram_appid:
            body["miniprogram"] = {"appid": miniprogram_appid, "pagepath": pagepath or ""}
        return self._post(TEMPLATE_PATH, body)

    def send_text(self, touser: str, content: str) -> str:
        """A customer-service text to an official-account openid (allowed within 48 h of their own message; 45015
        after that: refused). Content cut to 2,048 bytes."""
        data = content.encode("utf-8")
        if len(data) > CUSTOM_TEXT_BYTES:
            content = data[: CUSTOM_TEXT_BYTES - 3].decode("utf-8", "ignore") + "…"
        return self._post(CUSTOM_PATH, {"touser": touser, "msgtype": "text", "text": {"content": content}})
