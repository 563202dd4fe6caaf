"""Mounting the simulator in an application: ``install(app, ...)`` (simulator mode only).

It fills the settings live mode would require with the simulated account's (its appids and
merchant id, keys from the shared material), points every WeChat base still at its live
default at the app's own ``/_sim`` paths (built from ``PUBLIC_BASE_URL``), registers the
``/_sim`` blueprint and answers the ``LocalWeChat`` that ``wechat.setup.build_wechat`` takes.
Calls from the app to its own simulator are served in-process on another thread, so no port
has to be reachable; every other host goes out through ``requests`` as usual.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from requests.structures import CaseInsensitiveDict

from wechat.keys import VerifierKeys
from wechat.push import PushSettings
from wechat.sim.app import create_simulator_blueprint
from wechat.sim.errors import LOST_ANSWER_HEADER
from wechat.sim.keys import Material
from wechat.sim.push import PushTarget
from wechat.sim.state import SimulatorState
from wechat.sim.store import Store, open_store
from wechat.wecom import BotSettings

LIVE_BASES = {
    "WECHAT_API_BASE": ("https://api.weixin.qq.com", "/_sim/api"),
    "WECHAT_PAY_API_BASE": ("https://api.mch.weixin.qq.com", "/_sim/pay"),
    "WECHAT_OPEN_BASE": ("https://open.weixin.qq.com", "/_sim/open"),
    "WECOM_API_BASE": ("https://qyapi.weixin.qq.com", "/_sim/wecom"),
}
SIM_DEFAULTS = {
    "WECHAT_APPID": "wxsim0miniprogram",
    "WECHAT_APP_SECRET": "sim-mini-program-secret",
    "WECHAT_OA_APPID": "wxsim0officialacct",
    "WECHAT_OA_SECRET": "sim-official-account-secret",
    "WECHAT_MCHID": "1900000109",
    # message push in safe mode (published: simulator mode only)
    "WECHAT_OA_PUSH_TOKEN": "simOaPushToken",
    "WECHAT_OA_ENCODING_AES_KEY": "JtA/J1fPWAmFkiOrD1ZbjtYOpYBntmPrmigwBcGT9IY",
    "WECHAT_MP_PUSH_TOKEN": "simMpPushToken",
    "WECHAT_MP_ENCODING_AES_KEY": "g/Ynomf74tprcwerPtrYh+l/fnr5ylxqFZUC+sAXLhk",
    # the WeCom intelligent robot (published: simulator mode only)
    "WECOM_BOT_TOKEN": "simWecomBotToken",
    "WECOM_BOT_ENCODING_AES_KEY": "k13zXHbCdGD+Z71J9ntQCk1rZ3rRTuCtmY7qR1V8U/o",
    "WECOM_BOT_ID": "simaibot0challenges",
    "CHATTOOL_CARD_TEMPLATE_ID": "sim-chattool-challenge-card",
}
DEFAULT_PUBLIC_BASE = "http://127.0.0.1:5000"
MATERIAL = ("material", "account")  # the one record every process of a deployment shares


@dataclass
class Simulator:
    """The mounted simulator, as ``wechat.setup.LocalWeChat``."""

    state: SimulatorState
    merchant_key: rsa.RSAPrivateKey
    verifier_keys: VerifierKeys
    mount_prefix: str
    app: Flask

    def mount(self, session: requests.Session) -> None:
        session.mount(self.mount_prefix, InProcessAdapter(self.app))


def install(
    app: Flask, *, database_url: str | None, redis_url: str | None = None, busy_timeout_s: int = 20
) -> Simulator:
    """Mount the simulator on ``app``; its state lives in the store for these URLs (see ``store``)."""
    cfg = app.config
    store = open_store(database_url, redis_url, busy_timeout_s)
    material = shared_material(store)
    for name, value in SIM_DEFAULTS.items():
        cfg[name] = cfg.get(name) or value
    cfg["WECHAT_MCH_CERT_SERIAL"] = cfg.get("WECHAT_MCH_CERT_SERIAL") or material.merchant_serial
    cfg["WECHAT_APIV3_KEY"] = cfg.get("WECHAT_APIV3_KEY") or material.apiv3_key
    cfg["WECHAT_API_V2_KEY"] = cfg.get("WECHAT_API_V2_KEY") or material.apiv3_key[::-1]
    cfg["PUBLIC_BASE_URL"] = (cfg.get("PUBLIC_BASE_URL") or DEFAULT_PUBLIC_BASE).rstrip("/")
    for name, (live_default, sim_path) in LIVE_BASES.items():
        if cfg.get(name) in (None, "", live_default):
            cfg[name] = cfg["PUBLIC_BASE_URL"] + sim_path
    state = SimulatorState(
        mchid=cfg["WECHAT_MCHID"],
        apiv3_key=cfg["WECHAT_APIV3_KEY"],
        merchant_public_key=material.merchant_key.public_key(),
        app_secrets={cfg["WECHAT_APPID"]: cfg["WECHAT_APP_SECRET"], cfg["WECHAT_OA_APPID"]: cfg["WECHAT_OA_SECRET"]},
        api_v2_key=cfg["WECHAT_API_V2_KEY"],
        keys=material.keys,
        notify_transport=cfg.get("WECHAT_SIM_NOTIFY_TRANSPORT"),
        notify_initial_delay_s=cfg.get("WECHAT_SIM_NOTIFY_DELAY_S", 0.2),
        pay_base_url=cfg["WECHAT_PAY_API_BASE"],
        store=store,
        card_key=material.card_key,
    )
    state.configure_push(push_targets(cfg))
    state.mp_appid = cfg["WECHAT_APPID"]
    _configure_robot(state, app)
    app.register_blueprint(create_simulator_blueprint(state))
    verifier_keys = material.keys.verifier_keys(public_key=True, certificates=True)
    return Simulator(state, material.merchant_key, verifier_keys, cfg["PUBLIC_BASE_URL"] + "/_sim/", app)


def push_targets(cfg: Any) -> dict[str, PushTarget]:
    """The app's push URLs as the WeChat admin would have them: safe mode; the mini-program sends JSON."""
    targets = {}
    for source, appid, account, json_format in (
        ("oa", cfg["WECHAT_OA_APPID"], "gh_sim0officialacct", False),
        ("mp", cfg["WECHAT_APPID"], "gh_sim0miniprogram", True),
    ):
        token = cfg.get(f"WECHAT_{source.upper()}_PUSH_TOKEN")
        if token:
            settings = PushSettings(
                token, appid, cfg.get(f"WECHAT_{source.upper()}_ENCODING_AES_KEY"), None, json_format
            )
            targets[source] = PushTarget(f"{cfg['PUBLIC_BASE_URL']}/wechat/{source}/push", settings, account)
    return targets


def _configure_robot(state: SimulatorState, app: Flask) -> None:
    """The robot speaks to this app's own callback, in-process (as the pushes reach the app in tests)."""
    cfg = app.config
    if not cfg.get("WECOM_BOT_TOKEN") or not cfg.get("WECOM_BOT_ENCODING_AES_KEY"):
        return
    settings = BotSettings(cfg["WECOM_BOT_TOKEN"], cfg["WECOM_BOT_ENCODING_AES_KEY"], bot_id=cfg.get("WECOM_BOT_ID"))
    url = cfg["PUBLIC_BASE_URL"] + "/wechat/wecom/bot"
    session = requests.Session()
    session.mount(url, InProcessAdapter(app))

    def post(target: str, args: dict[str, str], body: bytes) -> tuple[int, bytes]:
        answer = session.post(target, params=args, data=body, headers={"Content-Type": "application/json"}, timeout=10)
        return answer.status_code, answer.content

    state.configure_robot(url, settings, post)


def shared_material(store: Store) -> Material:
    """The stored material; this process's own when none is stored yet (the first process wins)."""
    record = store.add_if_absent(*MATERIAL, _own_material().to_record())
    return _parsed(tuple(sorted(record.items())))


def reset(state: SimulatorState) -> None:
    """Forget every order, bill and fault; keep the keys (tests call this between tests)."""
    state.store.clear(keep=(MATERIAL[0],))


@functools.cache
def _own_material() -> Material:
    """Made once per process: every app of a test run shares it, and RSA keys are slow to make."""
    return Material.generate()


@functools.cache
def _parsed(record: tuple[tuple[str, str], ...]) -> Material:
    return Material.from_record(dict(record))


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
