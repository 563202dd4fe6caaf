"""WeChat Pay APIv3 client: one session, one ``_request`` that signs, times out,
verifies and maps errors to typed :mod:`wechat.errors`.

The JSON body is serialized once; the same bytes are signed and sent. With a
backup host configured (``api2.mch.weixin.qq.com``), a call that could not
connect to the main host (refused, reset, DNS, connect timeout, dropped
connection) is sent once more to the backup with the very same body, so the
same out_trade_no / out_bill_no / out_request_no, WeChat's idempotency keys,
and a fresh signature. An HTTP answer of any status, or a read timeout (WeChat
may still be working on it), is never re-sent elsewhere: the caller decides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlencode

import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from wechat import bills, crypto
from wechat.bills import UNZIP_STEP, check_bill_hash, check_hash_type, decompress_bill
from wechat.errors import (
    WeChatBusinessError,
    WeChatConfigError,
    WeChatError,
    WeChatInvalidRequest,
    WeChatNotFound,
    WeChatRateLimited,
    WeChatSignatureError,
    WeChatUnavailable,
)
from wechat.keys import ApiV3Keys, VerifierKeys, download_platform_certificates
from wechat.notifications import verify_response
from wechat.partner import SubMerchant, mchid_fields, payee_fields, payer_field, sub_fields, transactions_path
from wechat.transfers import build_transfer_body

USER_AGENT = "rebate-redpack-wechat/1.0 (+requests)"

# Definitive codes (WeChat did not act). Value = safe to retry with the same key.
BUSINESS_CODES: dict[str, bool] = {
    "PARAM_ERROR": False,
    "INVALID_REQUEST": False,
    "SIGN_ERROR": False,
    "NO_AUTH": False,
    "APPID_MCHID_NOT_MATCH": False,
    "MCH_NOT_EXISTS": False,
    "OUT_TRADE_NO_USED": False,
    "ORDER_CLOSED": False,
    "ORDERPAID": False,
    "USER_ACCOUNT_ABNORMAL": False,
    "RULE_LIMIT": False,
    "NOT_ENOUGH": True,
    "USER_PAYING": True,
}
# A transfer-bill create answered 400 with these codes: WeChat refused the request itself (nothing exists).
DEFINITE_TRANSFER_REFUSALS = frozenset({"PARAM_ERROR", "INVALID_REQUEST"})
NOT_FOUND_CODES = frozenset({"ORDER_NOT_EXIST", "RESOURCE_NOT_EXISTS", "NOT_FOUND"})


@dataclass
class PayConfig:
    mchid: str
    appid: str
    private_key: rsa.RSAPrivateKey
    cert_serial: str
    apiv3_key: ApiV3Keys | str
    keys: VerifierKeys
    api_base: str = "https://api.mch.weixin.qq.com"
    timeout: tuple[float, float] = (3.05, 10)
    backup_base: str = ""  # empty: no failover

    def __post_init__(self) -> None:
        self.api_base = self.api_base.rstrip("/")
        self.backup_base = (self.backup_base or "").rstrip("/")
        self.apiv3_key = ApiV3Keys.of(self.apiv3_key)
        if any(len(k.encode()) != 32 for k in (self.apiv3_key.current, self.apiv3_key.previous) if k is not None):
            raise WeChatConfigError("the APIv3 key must be 32 bytes", code="BAD_APIV3_KEY")

    @property
    def bases(self) -> list[str]:
        """The main host, then the backup host when one is configured."""
        return [self.api_base, self.backup_base] if self.backup_base else [self.api_base]


@dataclass
class PayResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    data: Any = field(default=None)


class PayClient:
    """Typed calls to WeChat Pay APIv3 for one direct merchant."""

    def __init__(self, config: PayConfig, session: requests.Session | None = None) -> None:
        self.config = config
        self.session = session or requests.Session()

    # -- transport ---------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> PayResponse:
        """Public alias of :meth:`_request` (used by key download helpers)."""
        return self._request(method, path, **kwargs)

    def _request(
        self,
        method: str,
        path: str,
        json_body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        verify: bool = True,
        extra_headers: dict[str, str] | None = None,
        parse_json: bool = True,
        raw_body: str | None = None,
    ) -> PayResponse:
        """``raw_body``: an already serialized JSON body, sent (and signed) byte for byte."""
        canonical = path + ("?" + urlencode(params) if params else "")
        body = raw_body if raw_body is not None else _serialize(json_body)
        return self._handle(self._send(method, canonical, body, extra_headers), verify, parse_json)

    def _send(
        self, method: str, canonical: str, body: str, extra_headers: dict[str, str] | None, stream: bool = False
    ) -> requests.Response:
        """The one request, on the main host then (connection failures only) the backup: same body bytes.
        ``stream``: the answer's body is left to the caller to read (``_read_bill``)."""
        bases = self.config.bases
        for n, base in enumerate(bases):
            try:
                return self.session.request(
                    method,
                    base + canonical,
                    data=body.encode("utf-8") if body else None,
                    headers=self._headers(method, canonical, body, extra_headers),
                    timeout=self.config.timeout,
                    stream=stream,
                    # APIv3 never redirects: followed, a redirect led a call (the bill's download, checked to be on
                    # this host) to any host; unfollowed, it is an answer we cannot use (``_handle``)
                    allow_redirects=False,
                )
            except requests.ConnectionError as exc:
                if n + 1 < len(bases):
                    continue  # nothing was answered: the backup host gets the identical request
                raise _network_error(method, canonical, exc) from exc
            except requests.RequestException as exc:
                raise _network_error(method, canonical, exc) from exc
        raise AssertionError("unreachable")

    def _headers(self, method: str, canonical: str, body: str, extra: dict[str, str] | None) -> dict[str, str]:
        cfg = self.config
        headers = {
            "Authorization": crypto.build_authorization(
                method, canonical, body, cfg.mchid, cfg.cert_serial, cfg.private_key
            ),
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if body:
            headers["Content-Type"] = "application/json"
        serial = cfg.keys.request_serial()
        if serial:
            headers["Wechatpay-Serial"] = serial
        headers.update(extra or {})
        return headers

    def _handle(
        self, raw: requests.Response, verify: bool, parse_json: bool, body: bytes | bytearray | None = None
    ) -> PayResponse:
        """``body``: the answer's body when the caller read it itself (a streamed answer), else ``raw.content``."""
        resp = PayResponse(raw.status_code, dict(raw.headers), raw.content if body is None else body)
        signed = any(k.lower() == "wechatpay-signature" for k in resp.headers)
        if verify and (200 <= resp.status < 300 or signed):
            verify_response(resp.headers, resp.body, self.config.keys)
        if 200 <= resp.status < 300:
            resp.data = _parse_success(resp) if parse_json else None
            return resp
        error = _map_error(resp)
        if verify and not signed and isinstance(error, WeChatBusinessError):
            raise _unsigned_refusal(resp, error) from error
        raise error

    # -- orders ------------------------------------------------------------------
    def jsapi_prepay(
        self,
        out_trade_no: str,
        description: str,
        amount_fen: int,
        payer_openid: str,
        notify_url: str,
        time_expire: datetime,
        attach: str | None = None,
        *,
        sub: SubMerchant | None = None,
        sub_openid: bool = False,
        profit_sharing: bool = False,
    ) -> str:
        """Create (or re-obtain, with identical params) a JSAPI order; returns prepay_id.

        ``sub``: paid to that sub-merchant through the partner JSAPI (``wechat.partner``); ``sub_openid``: the
        payer's openid is under ``sub.sub_appid``; ``profit_sharing``: ``settle_info.profit_sharing`` (the
        money stays frozen at the merchant until shared or unfrozen).
        """
        _require_positive(amount_fen, "amount_fen")
        body: dict[str, Any] = {
            **payee_fields(self.config.appid, self.config.mchid, sub),
            "description": description,
            "out_trade_no": out_trade_no,
            "time_expire": rfc3339(time_expire),
            "notify_url": notify_url,
            "amount": {"total": amount_fen, "currency": "CNY"},
            "payer": payer_field(payer_openid, sub, sub_openid),
        }
        if attach is not None:
            body["attach"] = attach
        if profit_sharing:
            body["settle_info"] = {"profit_sharing": True}
        data = self._request("POST", transactions_path(sub) + "/jsapi", json_body=body).data
        return _field(data, "prepay_id")

    def query_order(self, out_trade_no: str, *, sub: SubMerchant | None = None) -> dict[str, Any]:
        path = f"{transactions_path(sub)}/out-trade-no/{_seg(out_trade_no)}"
        return self._request("GET", path, params=mchid_fields(self.config.mchid, sub)).data

    def close_order(self, out_trade_no: str, *, sub: SubMerchant | None = None) -> None:
        path = f"{transactions_path(sub)}/out-trade-no/{_seg(out_trade_no)}/close"
        self._request("POST", path, json_body=mchid_fields(self.config.mchid, sub))

    def jsapi_pay_params(self, prepay_id: str, appid: str | None = None) -> dict[str, str]:
        """``wx.requestPayment`` parameters, signed with our merchant key for the app that calls it: ours, or
        (a sub_openid payer in partner mode) the sub-merchant's ``sub_appid``."""
        return crypto.jsapi_pay_params(appid or self.config.appid, prepay_id, self.config.private_key)

    # -- refunds -----------------------------------------------------------------
    def refund(
        self,
        out_trade_no: str,
        out_refund_no: str,
        refund_fen: int,
        total_fen: int,
        notify_url: str,
        reason: str | None = None,
        *,
        sub: SubMerchant | None = None,
    ) -> dict[str, Any]:
        """``sub``: a partner order's refund names its sub-merchant (``sub_mchid``), same endpoint."""
        _require_positive(refund_fen, "refund_fen")
        if refund_fen > total_fen:
            raise _invalid("refund_fen exceeds total_fen")
        body: dict[str, Any] = {
            **sub_fields(sub),
            "out_trade_no": out_trade_no,
            "out_refund_no": out_refund_no,
            "notify_url": notify_url,
            "amount": {"refund": refund_fen, "total": total_fen, "currency": "CNY"},
        }
        if reason:
            body["reason"] = reason
        return self._request("POST", "/v3/refund/domestic/refunds", json_body=body).data

    def query_refund(self, out_refund_no: str, *, sub: SubMerchant | None = None) -> dict[str, Any]:
        path = f"/v3/refund/domestic/refunds/{_seg(out_refund_no)}"
        return self._request("GET", path, params=sub_fields(sub) or None).data

    # -- bills -------------------------------------------------------------------
    def trade_bill(
        self, bill_date: str, bill_type: str = "ALL", tar_type: str | None = None, *, sub: SubMerchant | None = None
    ) -> dict[str, Any]:
        """``sub``: one sub-merchant's bill (partner mode); without it, the bill of our own merchant number."""
        params = {"bill_date": bill_date, "bill_type": bill_type, **sub_fields(sub)}
        if tar_type:
            params["tar_type"] = tar_type
        return self._request("GET", "/v3/bill/tradebill", params=params).data

    def fundflow_bill(self, bill_date: str, account_type: str = "BASIC", tar_type: str | None = None) -> dict[str, Any]:
        params = {"bill_date": bill_date, "account_type": account_type}
        if tar_type:
            params["tar_type"] = tar_type
        return self._request("GET", "/v3/bill/fundflowbill", params=params).data

    def download_bill(self, url: str, hash_value: str, hash_type: str) -> bytes | bytearray:
        """Download a bill (unsigned answer) and check its announced hash over the decompressed content.

        ``hash_type`` is the bill answer's own field: one WeChat does not document is refused
        before anything is downloaded.
        """
        check_hash_type(hash_type)
        if not isinstance(url, str) or not isinstance(hash_value, str):
            raise WeChatUnavailable(
                "the bill answer's download_url or hash_value is not a string", code="UNPARSEABLE_RESPONSE"
            )
        base = next((b for b in self.config.bases if url.startswith(b + "/")), None)
        if base is None:
            raise WeChatConfigError(
                "download_url is not on the configured WeChat Pay host", code="FOREIGN_DOWNLOAD_URL"
            )
        canonical = url[len(base) :]
        raw = self._send("GET", canonical, "", None, stream=True)
        resp = self._handle(raw, verify=False, parse_json=False, body=_read_bill(raw, canonical))
        content = decompress_bill(resp.body)
        check_bill_hash(content, hash_value, hash_type)
        return content

    # -- payouts -----------------------------------------------------------------
    def transfer_bill(
        self,
        out_bill_no: str,
        openid: str,
        amount_fen: int,
        remark: str,
        scene_report_infos: list[dict[str, str]],
        notify_url: str,
        user_name: str | None = None,
        user_recv_perception: str = "现金奖励",
    ) -> dict[str, Any]:
        """2025 merchant transfer, scene 1000: :meth:`transfer_bill_body` then :meth:`post_transfer_bill`."""
        body, serial = self.transfer_bill_body(
            out_bill_no, openid, amount_fen, remark, scene_report_infos, notify_url, user_name, user_recv_perception
        )
        return self.post_transfer_bill(body, serial)

    def transfer_bill_body(
        self,
        out_bill_no: str,
        openid: str,
        amount_fen: int,
        remark: str,
        scene_report_infos: list[dict[str, str]],
        notify_url: str,
        user_name: str | None = None,
        user_recv_perception: str = "现金奖励",
    ) -> tuple[str, str | None]:
        """The serialized body (validated locally) and the Wechatpay-Serial it needs.

        Kept by the caller: re-POSTing the same ``out_bill_no`` with these exact bytes is how a lost
        create answer (and its ``package_info``) is obtained again. The encrypted ``user_name`` is
        different on every encryption, so the body must be kept, not rebuilt.
        """
        body, serial = build_transfer_body(
            self.config.appid,
            self.config.keys,
            out_bill_no,
            openid,
            amount_fen,
            remark,
            scene_report_infos,
            notify_url,
            user_name,
            user_recv_perception,
        )
        return _serialize(body), serial

    def post_transfer_bill(self, body: str, serial: str | None = None) -> dict[str, Any]:
        """POST a transfer bill body. 400 PARAM_ERROR / INVALID_REQUEST is a definite refusal of the
        request (below 0.1 yuan, say); every other error is outcome-unknown (query first)."""
        headers = {"Wechatpay-Serial": serial} if serial else None
        try:
            return self._request(
                "POST", "/v3/fund-app/mch-transfer/transfer-bills", raw_body=body, extra_headers=headers
            ).data
        except WeChatBusinessError as exc:
            if exc.code in DEFINITE_TRANSFER_REFUSALS and exc.http_status == 400:
                raise
            raise exc.as_unknown() from exc

    def query_transfer_bill(self, out_bill_no: str) -> dict[str, Any]:
        path = f"/v3/fund-app/mch-transfer/transfer-bills/out-bill-no/{_seg(out_bill_no)}"
        return self._request("GET", path).data

    def cancel_transfer_bill(self, out_bill_no: str) -> dict[str, Any]:
        path = f"/v3/fund-app/mch-transfer/transfer-bills/out-bill-no/{_seg(out_bill_no)}/cancel"
        return self._request("POST", path, json_body={}).data

    def send_favor_coupon(
        self,
        openid: str,
        stock_id: str,
        out_request_no: str,
        stock_creator_mchid: str,
        appid: str | None = None,
    ) -> dict[str, Any]:
        """Issue one coupon of a fixed-denomination stock. ``coupon_value`` is not open at WeChat
        (docs/wechat-rules.md §6.3), so it is never sent: the stock's own denomination is its value."""
        body: dict[str, Any] = {
            "stock_id": stock_id,
            "out_request_no": out_request_no,
            "appid": appid or self.config.appid,
            "stock_creator_mchid": stock_creator_mchid,
        }
        path = f"/v3/marketing/favor/users/{_seg(openid)}/coupons"
        return self._request("POST", path, json_body=body).data

    # -- keys --------------------------------------------------------------------
    def fetch_platform_certificates(self) -> list[Any]:
        """Download and decrypt the current platform certificates (verified)."""
        return download_platform_certificates(self, self.config.apiv3_key, self.config.keys)

    def attach_certificate_refresher(self) -> None:
        """Let ``config.keys`` refresh platform certificates through this client."""
        self.config.keys.refresher = self.fetch_platform_certificates


def _read_bill(raw: requests.Response, canonical: str) -> bytes | bytearray:
    """The downloaded bill's body, read a step at a time and never past ``MAX_BILL_BYTES``. Read at once, the HTTP
    client took the whole answer into memory first, and unzipped it whole when it came as ``Content-Encoding: gzip``:
    a few megabytes that unzip to many gigabytes got past ``decompress_bill``'s bound that way, and so did a plain
    answer of any size. Refused past the bound (``BILL_TOO_LARGE``), as ``decompress_bill`` refuses an archive."""
    most = bills.MAX_BILL_BYTES
    if raw.raw is None:  # an answer already in memory (the simulator's in-process transport)
        body: bytes | bytearray = raw.content
    else:
        body = bytearray()
        try:
            for chunk in raw.iter_content(UNZIP_STEP):  # transport gzip is unzipped a bounded step at a time
                body += chunk
                if len(body) > most:
                    break
        except requests.RequestException as exc:
            raise _network_error("GET", canonical, exc) from exc
        finally:
            raw.close()
    if len(body) > most:
        raise WeChatUnavailable(f"bill download is larger than {most} bytes", code="BILL_TOO_LARGE")
    return body


def _network_error(method: str, canonical: str, exc: Exception) -> WeChatError:
    path = canonical.split("?", 1)[0]
    return WeChatUnavailable(f"{method} {path}: {exc.__class__.__name__}", code="NETWORK_ERROR")


def _serialize(json_body: dict[str, Any] | None) -> str:
    return "" if json_body is None else json.dumps(json_body, ensure_ascii=False, separators=(",", ":"))


def rfc3339(moment: datetime) -> str:
    """RFC3339 seconds in Beijing time; refuses naive datetimes."""
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise _invalid("time_expire must be a timezone-aware datetime")
    return moment.astimezone(timezone(timedelta(hours=8))).isoformat(timespec="seconds")


def _parse_success(resp: PayResponse) -> Any:
    if resp.status == 204 or not resp.body:
        return {}
    try:
        data = json.loads(resp.body)
    except (ValueError, RecursionError):
        raise WeChatUnavailable(
            "2xx answer is not JSON", code="UNPARSEABLE_RESPONSE", http_status=resp.status
        ) from None
    if resp.status == 202 and isinstance(data, dict) and data.get("code"):
        raise _map_error(resp)
    return data


def _map_error(resp: PayResponse) -> WeChatError:
    code, message = _error_fields(resp.body)
    status = resp.status
    if status == 429 or code == "FREQUENCY_LIMITED":
        return WeChatRateLimited(message, code="FREQUENCY_LIMITED", http_status=status)
    if status >= 500 or code == "SYSTEM_ERROR":
        return WeChatUnavailable(message, code=code or f"HTTP_{status}", http_status=status)
    if code in NOT_FOUND_CODES:
        return WeChatNotFound(message, code=code, http_status=status)
    if code in BUSINESS_CODES:
        return WeChatBusinessError(message, code=code, http_status=status, retryable=BUSINESS_CODES[code])
    return WeChatUnavailable(
        message or f"unexpected answer {status}", code=code or f"HTTP_{status}", http_status=status
    )


def _unsigned_refusal(resp: PayResponse, refusal: WeChatError) -> WeChatError:
    """A refusal (a documented code: ``400 INVALID_REQUEST``, ``404 NOT_FOUND``, ``403 NOT_ENOUGH``…) that WeChat did
    not sign: not WeChat's word, so outcome unknown. Busy answers (429, 5xx) and answers already unknown stay as
    ``_map_error`` has them: none of them ends anything.

    WeChat's signature rules: it signs its answer to every request whose signature it verified, and an answer
    without a signature is not to be trusted (a 2xx one is forged); what it leaves unsigned is its 401 to a request
    it could not verify, which did nothing either. An unsigned refusal may come from something between us and
    WeChat (a proxy, a load balancer, a forger on the path) and says nothing of whether WeChat acted: taken as
    WeChat's, a transfer WeChat had taken was failed, its money returned and sent again under a new number. Its
    code is kept in the message only, never as ``code`` or ``http_status``: a caller deciding on either (a refusal's
    code, a 4xx) would decide on a forgery. The caller queries (or sends the same number again) before deciding."""
    said = f"HTTP {resp.status} {refusal.code} without WeChat's signature, not taken as its refusal: {refusal.message}"
    return WeChatSignatureError(said[:600], code="UNSIGNED_ERROR_ANSWER")


def _error_fields(body: bytes) -> tuple[str | None, str]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None, "error answer is not JSON"
    if not isinstance(data, dict):
        return None, "error answer is not an object"
    code, message = data.get("code"), str(data.get("message", ""))[:500]
    if not isinstance(code, str) or not code or len(code) > 64 or not code.isascii():  # WeChat's are short words
        return None, f"error answer's code is not one WeChat sends; {message}"
    return code, message


def _field(data: Any, name: str) -> Any:
    if not isinstance(data, dict) or name not in data:
        raise WeChatUnavailable(f"answer lacks {name}", code="UNPARSEABLE_RESPONSE")
    return data[name]


def _seg(value: str) -> str:
    return quote(value, safe="")


def _require_positive(amount_fen: int, name: str) -> None:
    if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen <= 0:
        raise _invalid(f"{name} must be a positive integer of fen")


def _invalid(message: str) -> WeChatError:
    return WeChatInvalidRequest(message)
