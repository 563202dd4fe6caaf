"""Mini-program login, OA web OAuth2, shared access token / card api_ticket, and
the ``wx.addCard`` cardExt signature.

Written on ``requests`` rather than wechatpy: wechatpy's ``WeChatClient`` adds an
access-token round trip to ``jscode2session`` and ``WeChatOAuth`` keeps one
user's token on the object with no timeout. Hosts are constructor arguments.

The access token comes from ``POST /cgi-bin/stable_token`` in normal mode
(``force_refresh=false``): every process asking while a token is valid gets the
same one, so processes never invalidate each other's tokens. A call that WeChat
answers with a token error (40001 / 40014 / 42001) drops the cached token (only
if it is still the one that failed) and is retried once with a fresh token.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote

import requests

from wechat.errors import (
    WeChatBusinessError,
    WeChatCardCodeConsumed,
    WeChatCardCodeInvalid,
    WeChatError,
    WeChatInvalidRequest,
    WeChatLoginCodeInvalid,
    WeChatRateLimited,
    WeChatSnapshotUser,
    WeChatTokenInvalid,
    WeChatUnavailable,
    WeChatUserBlocked,
)

API_BASE = "https://api.weixin.qq.com"
OPEN_BASE = "https://open.weixin.qq.com"
TOKEN_EARLY_EXPIRY_S = 300
WHOLE_SECONDS = re.compile(r"[0-9]{1,9}")
# invalid credential / invalid access_token / access_token expired: the cached token is no good
TOKEN_ERRCODES = frozenset({40001, 40014, 42001})
# invalid card code (40056, 40116), invalid encrypt_code (40075), card deleted or given away (40127)
CARD_CODE_ERRCODES = frozenset({40056, 40075, 40116, 40127})
CARD_CODE_CONSUMED = 40099


def _error_for(errcode: int, errmsg: str) -> WeChatError:
    code = str(errcode)
    if errcode in (40029, 40163):
        return WeChatLoginCodeInvalid(errmsg, code=code)
    if errcode == 45011:
        return WeChatRateLimited(errmsg, code=code)
    if errcode == 40226:
        return WeChatUserBlocked(errmsg, code=code)
    if errcode == -1:
        return WeChatUnavailable(errmsg, code=code)
    if errcode in TOKEN_ERRCODES:
        return WeChatTokenInvalid(errmsg, code=code)
    if errcode in CARD_CODE_ERRCODES:
        return WeChatCardCodeInvalid(errmsg, code=code)
    if errcode == CARD_CODE_CONSUMED:
        return WeChatCardCodeConsumed(errmsg, code=code)
    return WeChatBusinessError(errmsg, code=code)


def _get_json(
    session: requests.Session, url: str, params: dict[str, str], timeout: tuple[float, float]
) -> dict[str, Any]:
    """One GET; transport, HTTP and errcode failures become typed errors."""
    return _request_json(session, "GET", url, params, timeout)


def _request_json(
    session: requests.Session,
    method: str,
    url: str,
    params: dict[str, str],
    timeout: tuple[float, float],
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One call to api.weixin.qq.com; transport, HTTP and errcode failures become typed errors."""
    extra: dict[str, Any] = {}
    if body is not None:
        extra = {"data": json.dumps(body, ensure_ascii=False).encode(), "headers": {"Content-Type": "application/json"}}
    try:
        # never followed: a redirect led the call, its access_token or secret in the query, to any host (wechat.http)
        resp = session.request(method, url, params=params, timeout=timeout, allow_redirects=False, **extra)
    except (requests.ConnectTimeout, requests.ConnectionError) as exc:
        # No connection made (refused, unresolved, connect timeout): the request never reached WeChat.
        # A connection dropped after the request went out may have been acted on: outcome unknown.
        reason = getattr(exc.args[0], "reason", None) if exc.args else None  # urllib3's, named (not imported)
        never_connected = type(reason).__name__ in ("NewConnectionError", "NameResolutionError")
        sent = not isinstance(exc, requests.ConnectTimeout) and not never_connected
        code = "NETWORK_ERROR" if sent else "CONNECT_ERROR"
        raise WeChatUnavailable(f"{method} {url}: {exc.__class__.__name__}", code=code, outcome_unknown=sent) from exc
    except requests.RequestException as exc:
        raise WeChatUnavailable(f"{method} {url}: {exc.__class__.__name__}", code="NETWORK_ERROR") from exc
    if resp.status_code != 200:
        raise WeChatUnavailable(
            f"HTTP {resp.status_code}", code=f"HTTP_{resp.status_code}", http_status=resp.status_code
        )
    try:
        data = json.loads(resp.content.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise WeChatUnavailable("answer is not JSON", code="UNPARSEABLE_RESPONSE") from None
    if not isinstance(data, dict):
        raise WeChatUnavailable("answer is not an object", code="UNPARSEABLE_RESPONSE")
    errcode = _errcode(data.get("errcode"))
    if errcode:
        raise _error_for(errcode, str(data.get("errmsg", "")))
    return data


ERRCODE = re.compile(r"-?[1-9][0-9]{0,8}|0")  # a whole number as WeChat writes one: no sign on 0, no leading zero


def _errcode(value: Any) -> int:
    """An answer's ``errcode`` as a number, 0 for success: absent, ``0`` or ``"0"`` (some answers write it as text).

    Anything else that is no whole number written plainly (``true``, ``0.0``, ``1.5``, ``"00"``, ``" 0"``, a list)
    is an answer we cannot read (``false`` and ``0.0`` had passed as success, ``"0"`` as a refusal)."""
    if value is None:
        return 0
    if type(value) is int:
        return value
    if isinstance(value, str) and ERRCODE.fullmatch(value):
        return int(value)
    raise WeChatUnavailable(f"answer's errcode is not a number: {value!r:.40}", code="UNPARSEABLE_RESPONSE")


IDENTIFIER_MOST = 64  # user_identities.openid, users.unionid
# WeChat's openids and unionids are 28 letters, digits, ``-`` and ``_``. Any other text (a blank ``" "``, ``"o-1 "``
# beside ``"o-1"``, a fullwidth look-alike) is no identifier: every answer carrying the same one would be one person.
IDENTIFIER = re.compile(rf"[A-Za-z0-9_-]{{1,{IDENTIFIER_MOST}}}")


def _identifier(value: Any) -> bool:
    """An openid / unionid we can store and compare: 1 to 64 letters, digits, ``-`` or ``_``."""
    return isinstance(value, str) and IDENTIFIER.fullmatch(value) is not None


def _check_identity(data: dict[str, Any], secret_field: str, call: str) -> None:
    """``openid`` (and ``unionid`` when given) are identifiers and ``secret_field`` is text, or the answer is not
    one we can act on: refused before anything is written (a 500 in the driver, or a mangled key, otherwise)."""
    if not _identifier(data.get("openid")) or not isinstance(data.get(secret_field), str) or not data[secret_field]:
        raise WeChatUnavailable(f"{call} answer lacks a usable openid or {secret_field}", code="UNPARSEABLE_RESPONSE")
    if data.get("unionid") is not None and not _identifier(data["unionid"]):
        raise WeChatUnavailable(f"{call} answer has an unusable unionid", code="UNPARSEABLE_RESPONSE")


def _refuse_snapshot_user(data: dict[str, Any]) -> None:
    """A snapshot-page (朋友圈 single-page mode) visitor is a virtual account, not a person.

    WeChat marks it ``is_snapshotuser=1``; its openid is not the user's real one, it
    cannot pay and must not receive packets or money, so it is refused here.
    """
    if str(data.get("is_snapshotuser", "0")) == "1":
        raise WeChatSnapshotUser("a snapshot-mode virtual account cannot sign in", code="SNAPSHOT_USER")


class MiniProgramClient:
    def __init__(
        self,
        appid: str,
        secret: str,
        api_base: str = API_BASE,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (3.05, 10),
    ) -> None:
        self.appid, self.secret = appid, secret
        self.api_base = api_base.rstrip("/")
        self.session = session or requests.Session()
        self.timeout = timeout

    def code_to_session(self, js_code: str) -> dict[str, Any]:
        """``wx.login`` code → {openid, session_key, unionid?}; exactly one GET."""
        params = {"appid": self.appid, "secret": self.secret, "js_code": js_code, "grant_type": "authorization_code"}
        data = _get_json(self.session, f"{self.api_base}/sns/jscode2session", params, self.timeout)
        _refuse_snapshot_user(data)
        _check_identity(data, "session_key", "jscode2session")
        return data


class OAuthClient:
    """OA web authorization (snsapi_base / snsapi_userinfo)."""

    def __init__(
        self,
        appid: str,
        secret: str,
        api_base: str = API_BASE,
        open_base: str = OPEN_BASE,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (3.05, 10),
    ) -> None:
        self.appid, self.secret = appid, secret
        self.api_base, self.open_base = api_base.rstrip("/"), open_base.rstrip("/")
        self.session = session or requests.Session()
        self.timeout = timeout

    def authorize_url(self, redirect_uri: str, scope: str = "snsapi_base", state: str = "") -> str:
        query = (
            f"appid={quote(self.appid, safe='')}&redirect_uri={quote(redirect_uri, safe='')}"
            f"&response_type=code&scope={quote(scope, safe='')}&state={quote(state, safe='')}"
        )
        return f"{self.open_base}/connect/oauth2/authorize?{query}#wechat_redirect"

    def exchange_code(self, code: str) -> dict[str, Any]:
        """code → {openid, unionid?, scope, access_token, refresh_token, expires_in}."""
        params = {"appid": self.appid, "secret": self.secret, "code": code, "grant_type": "authorization_code"}
        data = _get_json(self.session, f"{self.api_base}/sns/oauth2/access_token", params, self.timeout)
        _refuse_snapshot_user(data)
        _check_identity(data, "access_token", "oauth")
        return data

    def fetch_userinfo(self, access_token: str, openid: str, lang: str = "zh_CN") -> dict[str, Any]:
        params = {"access_token": access_token, "openid": openid, "lang": lang}
        data = _get_json(self.session, f"{self.api_base}/sns/userinfo", params, self.timeout)
        # about the openid asked for, or its unionid would join that openid to whoever holds the unionid
        if data.get("openid") != openid:
            raise WeChatUnavailable("userinfo answer is about another openid", code="UNPARSEABLE_RESPONSE")
        if data.get("unionid") is not None and not _identifier(data["unionid"]):
            raise WeChatUnavailable("userinfo answer has an unusable unionid", code="UNPARSEABLE_RESPONSE")
        return data


class AccessTokenStore(Protocol):
    def get(self, key: str) -> str | None: ...
    def set(self, key: str, value: str, ttl_s: int) -> None: ...
    def discard(self, key: str, value: str) -> None: ...


class MemoryTokenStore:
    """Single-process store; use :class:`RedisTokenStore` with several processes."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._items: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def get(self, key: str) -> str | None:
        with self._lock:
            item = self._items.get(key)
            if item is None or item[1] <= self._clock():
                return None
            return item[0]

    def set(self, key: str, value: str, ttl_s: int) -> None:
        with self._lock:
            self._items[key] = (value, self._clock() + ttl_s)

    def discard(self, key: str, value: str) -> None:
        """Forget ``key`` only while it still holds ``value`` (a newer token stays)."""
        with self._lock:
            if self._items.get(key, ("",))[0] == value:
                del self._items[key]


# Compare-and-delete in one step, so a process never deletes the fresh token another one just stored.
_DISCARD_IF_EQUAL = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class RedisTokenStore:
    def __init__(self, redis_client: Any, prefix: str = "wechat:") -> None:
        self.redis = redis_client
        self.prefix = prefix

    def get(self, key: str) -> str | None:
        value = self.redis.get(self.prefix + key)
        return value.decode() if isinstance(value, bytes) else value

    def set(self, key: str, value: str, ttl_s: int) -> None:
        self.redis.set(self.prefix + key, value, ex=max(1, int(ttl_s)))

    def discard(self, key: str, value: str) -> None:
        self.redis.eval(_DISCARD_IF_EQUAL, 1, self.prefix + key, value)


def _token_key(appid: str) -> str:
    return f"access_token:{appid}"


def get_access_token(
    store: AccessTokenStore,
    appid: str,
    secret: str,
    api_base: str = API_BASE,
    session: requests.Session | None = None,
    timeout: tuple[float, float] = (3.05, 10),
) -> str:
    """The shared access_token; ``POST /cgi-bin/stable_token`` is called only when the store has none.

    Normal mode (``force_refresh=false``): WeChat answers the current token while it is
    valid, so several processes fetching at once all get the same one.
    """
    body = {"grant_type": "client_credential", "appid": appid, "secret": secret, "force_refresh": False}
    url = f"{api_base.rstrip('/')}/cgi-bin/stable_token"
    return _cached(
        store,
        _token_key(appid),
        "access_token",
        lambda: _request_json(session or requests.Session(), "POST", url, {}, timeout, body),
    )


def call_with_token(
    store: AccessTokenStore,
    appid: str,
    secret: str,
    call: Callable[[str], dict[str, Any]],
    api_base: str = API_BASE,
    session: requests.Session | None = None,
    timeout: tuple[float, float] = (3.05, 10),
) -> dict[str, Any]:
    """``call(access_token)``; on 40001 / 40014 / 42001 drop that token and call once more with a fresh one."""
    token = get_access_token(store, appid, secret, api_base, session, timeout)
    try:
        return call(token)
    except WeChatTokenInvalid:
        store.discard(_token_key(appid), token)
    return call(get_access_token(store, appid, secret, api_base, session, timeout))


def _cached(store: AccessTokenStore, key: str, field: str, fetch) -> str:
    """A value from the shared store, fetched (and stored until shortly before it expires) when missing."""
    cached = store.get(key)
    if cached:
        return cached
    data = fetch()
    if not data.get(field):
        raise WeChatUnavailable(f"answer lacks {field}", code="UNPARSEABLE_RESPONSE")
    value = str(data[field])
    store.set(key, value, _keep_for(data.get("expires_in", 7200)))
    return value


def _keep_for(expires_in: Any) -> int:
    """How long a token is kept: until ``TOKEN_EARLY_EXPIRY_S`` before it expires; one with less life than that
    left (``stable_token`` hands out the current token with what remains of its two hours) for half of what is left
    (it had been kept for no time at all: every call in a token's last five minutes asked WeChat again). A lifetime
    that is no whole number of seconds is an answer we cannot read (it had raised a ValueError: a 500)."""
    if (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, (int, str))
        or not WHOLE_SECONDS.fullmatch(str(expires_in))
    ):
        raise WeChatUnavailable(
            f"answer has an unreadable expires_in: {str(expires_in)[:40]!r}", code="UNPARSEABLE_RESPONSE"
        )
    seconds = int(expires_in)
    return seconds - TOKEN_EARLY_EXPIRY_S if seconds > 2 * TOKEN_EARLY_EXPIRY_S else max(1, seconds // 2)


def get_api_ticket(
    store: AccessTokenStore,
    appid: str,
    secret: str,
    api_base: str = API_BASE,
    session: requests.Session | None = None,
    timeout: tuple[float, float] = (3.05, 10),
) -> str:
    """The card ``api_ticket`` (type=wx_card), cached in the shared store."""
    session = session or requests.Session()
    url = f"{api_base.rstrip('/')}/cgi-bin/ticket/getticket"

    def fetch() -> dict:
        return call_with_token(
            store,
            appid,
            secret,
            lambda token: _get_json(session, url, {"access_token": token, "type": "wx_card"}, timeout),
            api_base,
            session,
            timeout,
        )

    return _cached(store, f"card_ticket:{appid}", "ticket", fetch)


def card_signature(*values: str | int | None) -> str:
    """SHA-1 of the lexicographically sorted, concatenated non-empty values."""
    parts = sorted(str(v) for v in values if v not in (None, ""))
    return hashlib.sha1("".join(parts).encode("utf-8")).hexdigest()  # noqa: S324 - WeChat protocol


def card_ext(
    api_ticket: str,
    card_id: str,
    timestamp: int,
    nonce_str: str,
    code: str | None = None,
    openid: str | None = None,
) -> dict[str, Any]:
    """The ``cardExt`` object for ``wx.addCard`` (JSON.stringify it on the client)."""
    ext: dict[str, Any] = {"timestamp": int(timestamp), "nonce_str": nonce_str}
    if code:
        ext["code"] = code
    if openid:
        ext["openid"] = openid
    ext["signature"] = card_signature(api_ticket, int(timestamp), nonce_str, card_id, code, openid)
    return ext


def consume_card_code(
    session: requests.Session,
    code: str,
    card_id: str | None,
    *,
    token_store: AccessTokenStore,
    appid: str,
    secret: str,
    api_base: str = API_BASE,
    timeout: tuple[float, float] = (3.05, 10),
) -> dict[str, Any]:
    """Redeem a card code (``POST /card/code/consume``) with the shared access token.

    ``card_id`` is required for custom-code cards. Returns WeChat's answer (``openid``,
    ``card.card_id``). Not idempotent: after an unknown outcome a retry answers errcode
    40099 (code already consumed), which the caller should check with ``/card/code/get``.
    """
    if not code:
        raise WeChatInvalidRequest("a card code is required")
    body = {"code": code, **({"card_id": card_id} if card_id else {})}
    url = f"{api_base.rstrip('/')}/card/code/consume"
    # A token error means WeChat did not look at the code, so the one retry cannot consume it twice.
    return call_with_token(
        token_store,
        appid,
        secret,
        lambda token: _request_json(session, "POST", url, {"access_token": token}, timeout, body),
        api_base,
        session,
        timeout,
    )


def decrypt_card_code(
    session: requests.Session,
    encrypt_code: str,
    *,
    token_store: AccessTokenStore,
    appid: str,
    secret: str,
    api_base: str = API_BASE,
    timeout: tuple[float, float] = (3.05, 10),
) -> str:
    """The real card code behind an ``encrypt_code`` (``POST /card/code/decrypt``).

    The mini-program gets encrypted codes only (the ``wx.addCard`` success callback,
    ``wx.openCard``, the card package page). Read-only at WeChat, so a retry is always safe;
    an unknown or undecryptable code raises :class:`WeChatCardCodeInvalid`.
    """
    if not encrypt_code:
        raise WeChatInvalidRequest("an encrypt_code is required")
    url = f"{api_base.rstrip('/')}/card/code/decrypt"
    data = call_with_token(
        token_store,
        appid,
        secret,
        lambda token: _request_json(
            session, "POST", url, {"access_token": token}, timeout, {"encrypt_code": encrypt_code}
        ),
        api_base,
        session,
        timeout,
    )
    code = data.get("code")
    if not isinstance(code, str) or not code:
        raise WeChatUnavailable("decrypt answer lacks code", code="UNPARSEABLE_RESPONSE")
    return code


def fetch_oa_user_info(
    session: requests.Session,
    openid: str,
    *,
    token_store: AccessTokenStore,
    appid: str,
    secret: str,
    api_base: str = API_BASE,
    timeout: tuple[float, float] = (3.05, 10),
) -> dict[str, Any]:
    """An official-account follower's basic information (``GET /cgi-bin/user/info``) with the shared token.

    Answers ``subscribe`` (1 while the person follows), ``openid`` and, when the OA is bound to an open
    platform account, ``unionid``. Read-only at WeChat: a retry is always safe.
    """
    if not openid:
        raise WeChatInvalidRequest("an openid is required")
    url = f"{api_base.rstrip('/')}/cgi-bin/user/info"
    data = call_with_token(
        token_store,
        appid,
        secret,
        lambda token: _get_json(session, url, {"access_token": token, "openid": openid, "lang": "zh_CN"}, timeout),
        api_base,
        session,
        timeout,
    )
    if data.get("openid") not in (None, openid):
        raise WeChatUnavailable("user info answer is about another openid", code="UNPARSEABLE_RESPONSE")
    return data
