"""Builds the WeChat clients from ``app.config`` into ``app.extensions["wechat"]``.

Live mode loads the merchant key and WeChat's verification keys from files
and fails at start-up naming what is wrong. Simulator mode (``make run``,
tests) makes its own keys, mounts the local WeChat at ``/_sim`` and points
every WeChat base setting still at its live default at the app's own ``/_sim``
paths (built from ``PUBLIC_BASE_URL``). Calls from the app to its own
simulator are served in-process, so no port has to be reachable; every other
host goes out through ``requests`` as usual.
"""

from __future__ import annotations

import functools
import logging
import secrets
import string
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Flask, current_app
from requests.structures import CaseInsensitiveDict

from config import ConfigError
from models import transaction_open
from wechat.crypto import load_private_key, load_public_key
from wechat.errors import (
    WeChatCardCodeConsumed,
    WeChatCardCodeInvalid,
    WeChatConfigError,
    WeChatError,
    WeChatRateLimited,
)
from wechat.http import WeChatSession
from wechat.keys import ApiV3Keys, VerifierKeys
from wechat.mp import MemoryTokenStore, MiniProgramClient, OAuthClient, RedisTokenStore
from wechat.pay import PayClient, PayConfig
from wechat.simulator import create_simulator_blueprint
from wechat.simulator_errors import LOST_ANSWER_HEADER
from wechat.simulator_keys import SimulatorKeys, generate_rsa_key
from wechat.simulator_state import SimulatorState

log = logging.getLogger(__name__)

LIVE_BASES = {
    "WECHAT_API_BASE": ("https://api.weixin.qq.com", "/_sim/api"),
    "WECHAT_PAY_API_BASE": ("https://api.mch.weixin.qq.com", "/_sim/pay"),
    "WECHAT_OPEN_BASE": ("https://open.weixin.qq.com", "/_sim/open"),
}
SIM_DEFAULTS = {
    "WECHAT_APPID": "wxsim0miniprogram",
    "WECHAT_APP_SECRET": "sim-mini-program-secret",
    "WECHAT_OA_APPID": "wxsim0officialacct",
    "WECHAT_OA_SECRET": "sim-official-account-secret",
    "WECHAT_MCHID": "1900000109",
}
DEFAULT_PUBLIC_BASE = "http://127.0.0.1:5000"
PAY_NOTIFY_PATH = "/wechat/pay/notify"
REFUND_NOTIFY_PATH = "/wechat/pay/refund-notify"
TRANSFER_NOTIFY_PATH = "/wechat/transfer/notify"


@dataclass
class WeChat:
    """Everything the shell needs to talk to WeChat."""

    pay: PayClient
    mini_program: MiniProgramClient
    oauth: OAuthClient | None
    keys: VerifierKeys
    apiv3_key: ApiV3Keys  # the current key, and the previous one during a rotation's overlap
    token_store: Any
    public_base_url: str
    simulator: SimulatorState | None = None
    session: requests.Session | None = None  # the one HTTP session (in simulator mode: served in-process)

    @property
    def notify_url(self) -> str:
        return self.public_base_url + PAY_NOTIFY_PATH

    @property
    def refund_notify_url(self) -> str:
        return self.public_base_url + REFUND_NOTIFY_PATH

    @property
    def transfer_notify_url(self) -> str:
        return self.public_base_url + TRANSFER_NOTIFY_PATH

    def checkout_url(self, prepay_id: str) -> str | None:
        """Where a person 'pays' in simulator mode; None in live mode."""
        return f"{self.public_base_url}/_sim/pay/checkout/{prepay_id}" if self.simulator else None


def wechat() -> WeChat:
    return current_app.extensions["wechat"]


def init_wechat(app: Flask) -> WeChat:
    cfg = app.config
    if cfg["WECHAT_MODE"] == "simulator":
        merchant_key, apiv3_key, sim = _prepare_simulator(app)
        keys = sim.keys.verifier_keys(public_key=True, certificates=True)
    else:
        merchant_key, keys, sim = _load_live_keys(cfg), _live_verifier_keys(cfg), None
        apiv3_key = cfg["WECHAT_APIV3_KEY"]
    apiv3_keys = ApiV3Keys(
        apiv3_key,
        cfg.get("WECHAT_APIV3_KEY_PREVIOUS") or None,
        cfg.get("WECHAT_APIV3_KEY_PREVIOUS_UNTIL") if cfg.get("WECHAT_APIV3_KEY_PREVIOUS") else None,
    )
    session = _session(app) if sim else WeChatSession(transaction_open)
    pay_client = PayClient(
        PayConfig(
            mchid=cfg["WECHAT_MCHID"],
            appid=cfg["WECHAT_APPID"],
            private_key=merchant_key,
            cert_serial=cfg["WECHAT_MCH_CERT_SERIAL"],
            apiv3_key=apiv3_keys,
            keys=keys,
            api_base=cfg["WECHAT_PAY_API_BASE"],
            backup_base=cfg.get("WECHAT_PAY_API_BACKUP_BASE") or "",
        ),
        session=session,
    )
    if cfg.get("WECHAT_PLATFORM_CERTS_DIR") and not sim:
        pay_client.attach_certificate_refresher()
    ext = WeChat(
        pay=pay_client,
        mini_program=MiniProgramClient(cfg["WECHAT_APPID"], cfg["WECHAT_APP_SECRET"], cfg["WECHAT_API_BASE"], session),
        oauth=_oauth_client(cfg, session),
        keys=keys,
        apiv3_key=apiv3_keys,
        token_store=_token_store(cfg),
        public_base_url=cfg["PUBLIC_BASE_URL"].rstrip("/"),
        simulator=sim,
        session=session,
    )
    app.extensions["wechat"] = ext
    return ext


# -- simulator ---------------------------------------------------------------------


@functools.cache
def _simulator_material() -> tuple[Any, SimulatorKeys, str, str]:
    """Merchant key, WeChat-side keys, APIv3 key and cert serial: made once per process."""
    apiv3 = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    return generate_rsa_key(), SimulatorKeys(), apiv3, secrets.token_hex(20).upper()


def _prepare_simulator(app: Flask) -> tuple[Any, str, SimulatorState]:
    cfg = app.config
    merchant_key, sim_keys, apiv3, serial = _simulator_material()
    for name, value in SIM_DEFAULTS.items():
        cfg[name] = cfg.get(name) or value
    cfg["WECHAT_MCH_CERT_SERIAL"] = cfg.get("WECHAT_MCH_CERT_SERIAL") or serial
    cfg["WECHAT_APIV3_KEY"] = cfg.get("WECHAT_APIV3_KEY") or apiv3
    cfg["WECHAT_API_V2_KEY"] = cfg.get("WECHAT_API_V2_KEY") or apiv3[::-1]
    cfg["PUBLIC_BASE_URL"] = (cfg.get("PUBLIC_BASE_URL") or DEFAULT_PUBLIC_BASE).rstrip("/")
    for name, (live_default, sim_path) in LIVE_BASES.items():
        if cfg.get(name) in (None, "", live_default):
            cfg[name] = cfg["PUBLIC_BASE_URL"] + sim_path
    sim = SimulatorState(
        mchid=cfg["WECHAT_MCHID"],
        apiv3_key=cfg["WECHAT_APIV3_KEY"],
        merchant_public_key=merchant_key.public_key(),
        app_secrets={cfg["WECHAT_APPID"]: cfg["WECHAT_APP_SECRET"], cfg["WECHAT_OA_APPID"]: cfg["WECHAT_OA_SECRET"]},
        api_v2_key=cfg["WECHAT_API_V2_KEY"],
        keys=sim_keys,
        notify_transport=cfg.get("WECHAT_SIM_NOTIFY_TRANSPORT"),
        notify_initial_delay_s=cfg.get("WECHAT_SIM_NOTIFY_DELAY_S", 0.2),
        pay_base_url=cfg["WECHAT_PAY_API_BASE"],
    )
    app.register_blueprint(create_simulator_blueprint(sim))
    return merchant_key, cfg["WECHAT_APIV3_KEY"], sim


class InProcessAdapter(requests.adapters.BaseAdapter):
    """Serves requests to the app's own ``/_sim`` in-process, on a fresh thread (own app context)."""

    def __init__(self, app: Flask) -> None:
        super().__init__()
        self.app = app

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):  # noqa: ARG002
        parts = urlsplit(request.url)
        body = request.body.encode() if isinstance(request.body, str) else (request.body or b"")
        result: dict[str, Any] = {}

        def call() -> None:
            try:
                result["answer"] = self.app.test_client().open(
                    parts.path,
                    base_url=f"{parts.scheme}://{parts.netloc}",
                    method=request.method,
                    query_string=parts.query,
                    headers=dict(request.headers),
                    data=body,
                )
            except Exception as exc:  # surfaced below as a transport error
                result["error"] = exc

        worker = threading.Thread(target=call, name="wechat-sim-inprocess")
        worker.start()
        worker.join()
        if "error" in result:
            raise requests.ConnectionError(f"simulator failed: {result['error']!r}", request=request)
        lost = result["answer"].headers.get(LOST_ANSWER_HEADER)
        if lost == "late":
            raise requests.ReadTimeout("the simulator answered after the timeout", request=request)
        if lost:
            raise requests.ConnectionError("the simulator dropped the connection after acting", request=request)
        return _to_requests_response(request, result["answer"])

    def close(self) -> None:
        return None


def _to_requests_response(request, answer) -> requests.Response:
    response = requests.Response()
    response.status_code = answer.status_code
    response.headers = CaseInsensitiveDict(dict(answer.headers))
    response._content = answer.get_data()
    response.url = request.url
    response.request = request
    response.reason = answer.status.partition(" ")[2]
    return response


def _session(app: Flask) -> requests.Session:
    session = WeChatSession(transaction_open)
    session.mount(app.config["PUBLIC_BASE_URL"] + "/_sim/", InProcessAdapter(app))
    return session


# -- live --------------------------------------------------------------------------


def _read(cfg, name: str) -> bytes:
    path = Path(cfg[name])
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"invalid configuration:\n  - {name}: cannot read {path}: {exc.strerror}") from None


def _load_live_keys(cfg):
    try:
        return load_private_key(_read(cfg, "WECHAT_MCH_PRIVATE_KEY_PATH"))
    except (ValueError, WeChatConfigError) as exc:
        raise ConfigError(f"invalid configuration:\n  - WECHAT_MCH_PRIVATE_KEY_PATH: {exc}") from None


def _live_verifier_keys(cfg) -> VerifierKeys:
    public_key = public_key_id = None
    if cfg.get("WECHAT_PAY_PUBLIC_KEY_PATH") and cfg.get("WECHAT_PAY_PUBLIC_KEY_ID"):
        try:
            public_key = load_public_key(_read(cfg, "WECHAT_PAY_PUBLIC_KEY_PATH"))
        except (ValueError, WeChatConfigError) as exc:
            raise ConfigError(f"invalid configuration:\n  - WECHAT_PAY_PUBLIC_KEY_PATH: {exc}") from None
        public_key_id = cfg["WECHAT_PAY_PUBLIC_KEY_ID"]
    keys = VerifierKeys(public_key=public_key, public_key_id=public_key_id)
    certs_dir = cfg.get("WECHAT_PLATFORM_CERTS_DIR")
    if certs_dir:
        if not Path(certs_dir).is_dir():
            raise ConfigError(f"invalid configuration:\n  - WECHAT_PLATFORM_CERTS_DIR: {certs_dir} is not a directory")
        keys.load_certificate_dir(certs_dir)
    return keys


def _oauth_client(cfg, session: requests.Session) -> OAuthClient | None:
    if not (cfg.get("WECHAT_OA_APPID") and cfg.get("WECHAT_OA_SECRET")):
        return None
    return OAuthClient(
        cfg["WECHAT_OA_APPID"], cfg["WECHAT_OA_SECRET"], cfg["WECHAT_API_BASE"], cfg["WECHAT_OPEN_BASE"], session
    )


def _token_store(cfg):
    if cfg.get("REDIS_URL"):
        import redis

        return RedisTokenStore(redis.Redis.from_url(cfg["REDIS_URL"]))
    return MemoryTokenStore()  # app.py warns once at start-up that REDIS_URL is unset


# -- errors ------------------------------------------------------------------------

LOGIN_ERRORS = {
    "40029": (401, "login_code_invalid", "the login code is invalid or expired; call wx.login again"),
    "40163": (401, "login_code_used", "the login code was already used; call wx.login again"),
    "45011": (429, "wechat_rate_limited", "WeChat rate limit reached; retry in a minute"),
    "40226": (403, "wechat_user_blocked", "WeChat blocked this account as high-risk"),
    "-1": (503, "wechat_busy", "WeChat is busy; retry shortly"),
    # 朋友圈 snapshot-page preview: a virtual account, not a person. No account, token or packet for it.
    "SNAPSHOT_USER": (
        403,
        "snapshot_user",
        "this is a snapshot-page preview with a virtual WeChat account; open the mini-program "
        "(or the page) in full to sign in",
    ),
}


def to_api_error(exc: WeChatError):
    """A WeChat error as the API error a client can act on."""
    from web.errors import ApiError

    if exc.code in LOGIN_ERRORS:
        status, code, message = LOGIN_ERRORS[exc.code]
        return ApiError(message, code=code, status=status, retry_after=60 if status in (429, 503) else None)
    if isinstance(exc, WeChatCardCodeInvalid):
        why = "WeChat knows no such card code, or cannot decrypt this encrypt_code"
        return ApiError(f"{why} ({exc.code})", code="card_code_invalid", status=422)
    if isinstance(exc, WeChatCardCodeConsumed):
        return ApiError("this card code was already redeemed", code="card_code_consumed", status=409)
    if isinstance(exc, WeChatRateLimited):
        return ApiError(
            "WeChat rate limit reached; retry shortly", code="wechat_rate_limited", status=429, retry_after=5
        )
    if exc.retryable or exc.outcome_unknown:
        return ApiError("WeChat is unavailable; retry shortly", code="wechat_unavailable", status=503, retry_after=5)
    return ApiError(f"WeChat refused: {exc.code}", code="wechat_refused", status=502)
