"""Builds every WeChat client from plain settings: ``build_wechat(settings) -> WeChat``.

The application stores the result as ``app.extensions["wechat"]``; web views and jobs use it.
Live mode loads the merchant key and WeChat's verification keys from files and raises
``WeChatSettingError`` naming the setting that is wrong (the application turns it into its
start-up configuration error). Simulator mode passes a ``LocalWeChat`` (made by
``wechat.sim.install``, which this module never imports): its keys, and a hook that serves the
simulator's paths in-process on the one HTTP session.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from wechat.crypto import load_private_key, load_public_key
from wechat.errors import WeChatConfigError
from wechat.http import WeChatSession
from wechat.keys import ApiV3Keys, VerifierKeys, refuse_merchant_public_key
from wechat.mp import MemoryTokenStore, MiniProgramClient, OAuthClient, RedisTokenStore
from wechat.pay import PayClient, PayConfig

PAY_NOTIFY_PATH = "/wechat/pay/notify"
REFUND_NOTIFY_PATH = "/wechat/pay/refund-notify"
TRANSFER_NOTIFY_PATH = "/wechat/transfer/notify"


class WeChatSettingError(WeChatConfigError):
    """A setting that cannot be used; ``setting`` names it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message, code="BAD_SETTING")
        self.setting = setting


class LocalWeChat(Protocol):
    """What simulator mode brings: the simulated account's keys and its in-process transport."""

    merchant_key: rsa.RSAPrivateKey
    verifier_keys: VerifierKeys
    state: Any

    def mount(self, session: requests.Session) -> None: ...


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
    simulator: Any = None  # the simulator's state in simulator mode (wechat.sim.state.SimulatorState)
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


def new_session(transaction_open: Callable[[], bool] | None = None) -> requests.Session:
    """The one HTTP session every WeChat client shares (``transaction_open``: see ``wechat.http``)."""
    return WeChatSession(transaction_open)


def build_wechat(
    settings: Mapping[str, Any],
    *,
    local: LocalWeChat | None = None,
    transaction_open: Callable[[], bool] | None = None,
) -> WeChat:
    """The clients for ``settings`` (the ``WECHAT_*`` keys, ``PUBLIC_BASE_URL``, ``REDIS_URL``)."""
    if local is not None:
        merchant_key, keys = local.merchant_key, local.verifier_keys
    else:
        merchant_key = _load_merchant_key(settings)
        keys = _live_verifier_keys(settings, merchant_key)
    apiv3_keys = ApiV3Keys(
        settings["WECHAT_APIV3_KEY"],
        settings.get("WECHAT_APIV3_KEY_PREVIOUS") or None,
        settings.get("WECHAT_APIV3_KEY_PREVIOUS_UNTIL") if settings.get("WECHAT_APIV3_KEY_PREVIOUS") else None,
    )
    session = new_session(transaction_open)
    if local is not None:
        local.mount(session)
    pay_client = PayClient(
        PayConfig(
            mchid=settings["WECHAT_MCHID"],
            appid=settings["WECHAT_APPID"],
            private_key=merchant_key,
            cert_serial=settings["WECHAT_MCH_CERT_SERIAL"],
            apiv3_key=apiv3_keys,
            keys=keys,
            api_base=settings["WECHAT_PAY_API_BASE"],
            backup_base=settings.get("WECHAT_PAY_API_BACKUP_BASE") or "",
        ),
        session=session,
    )
    if settings.get("WECHAT_PLATFORM_CERTS_DIR") and local is None:
        pay_client.attach_certificate_refresher()
    return WeChat(
        pay=pay_client,
        mini_program=MiniProgramClient(
            settings["WECHAT_APPID"], settings["WECHAT_APP_SECRET"], settings["WECHAT_API_BASE"], session
        ),
        oauth=_oauth_client(settings, session),
        keys=keys,
        apiv3_key=apiv3_keys,
        token_store=_token_store(settings),
        public_base_url=settings["PUBLIC_BASE_URL"].rstrip("/"),
        simulator=local.state if local is not None else None,
        session=session,
    )


def _read(settings: Mapping[str, Any], name: str) -> bytes:
    path = Path(settings[name])
    try:
        return path.read_bytes()
    except OSError as exc:
        raise WeChatSettingError(name, f"cannot read {path}: {exc.strerror}") from None


def _load_merchant_key(settings: Mapping[str, Any]) -> rsa.RSAPrivateKey:
    try:
        return load_private_key(_read(settings, "WECHAT_MCH_PRIVATE_KEY_PATH"))
    except WeChatSettingError:
        raise
    except (ValueError, WeChatConfigError) as exc:
        raise WeChatSettingError("WECHAT_MCH_PRIVATE_KEY_PATH", str(exc)) from None
    except TypeError:  # cryptography's word for a key under a passphrase: there is no setting for one
        raise WeChatSettingError(
            "WECHAT_MCH_PRIVATE_KEY_PATH",
            "the key is encrypted with a passphrase; give the unencrypted apiclient_key.pem",
        ) from None


def _live_verifier_keys(settings: Mapping[str, Any], merchant_key: rsa.RSAPrivateKey) -> VerifierKeys:
    public_key = public_key_id = None
    if settings.get("WECHAT_PAY_PUBLIC_KEY_PATH") and settings.get("WECHAT_PAY_PUBLIC_KEY_ID"):
        try:
            public_key = load_public_key(_read(settings, "WECHAT_PAY_PUBLIC_KEY_PATH"))
            refuse_merchant_public_key(public_key, merchant_key.public_key())
        except WeChatSettingError:
            raise
        except (ValueError, WeChatConfigError) as exc:
            raise WeChatSettingError("WECHAT_PAY_PUBLIC_KEY_PATH", str(exc)) from None
        public_key_id = settings["WECHAT_PAY_PUBLIC_KEY_ID"]
    keys = VerifierKeys(public_key=public_key, public_key_id=public_key_id)
    certs_dir = settings.get("WECHAT_PLATFORM_CERTS_DIR")
    if certs_dir:
        if not Path(certs_dir).is_dir():
            raise WeChatSettingError("WECHAT_PLATFORM_CERTS_DIR", f"{certs_dir} is not a directory")
        try:
            keys.load_certificate_dir(
                certs_dir,
                merchant_serial=settings.get("WECHAT_MCH_CERT_SERIAL"),
                merchant_key=merchant_key.public_key(),
            )
        except WeChatConfigError as exc:
            raise WeChatSettingError("WECHAT_PLATFORM_CERTS_DIR", exc.message) from None
    return keys


def _oauth_client(settings: Mapping[str, Any], session: requests.Session) -> OAuthClient | None:
    if not (settings.get("WECHAT_OA_APPID") and settings.get("WECHAT_OA_SECRET")):
        return None
    return OAuthClient(
        settings["WECHAT_OA_APPID"],
        settings["WECHAT_OA_SECRET"],
        settings["WECHAT_API_BASE"],
        settings["WECHAT_OPEN_BASE"],
        session,
    )


def _token_store(settings: Mapping[str, Any]) -> Any:
    if settings.get("REDIS_URL"):
        import redis

        return RedisTokenStore(redis.Redis.from_url(settings["REDIS_URL"]))
    return MemoryTokenStore()  # the application warns once at start-up that REDIS_URL is unset
