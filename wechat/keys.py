"""WeChat Pay verification keys, chosen by the incoming ``Wechatpay-Serial``, and
the APIv3 key(s) that decrypt resources.

Holds the WeChat Pay public key (``PUB_KEY_ID_…``) and/or platform certificates
at once, as needed while a merchant migrates between the two modes. Platform
certificates are refreshed when older than ``refresh_after_s`` or when an
unknown serial arrives, at most once per ``unknown_serial_gap_s`` so random
serials cannot make us hammer WeChat.

:class:`ApiV3Keys` holds the current APIv3 key and, during a rotation, the
previous one with the moment it stops being accepted: a notification WeChat
encrypted before the rotation (it retries for 24 h 4 min) still decrypts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import rsa

from wechat import crypto
from wechat.errors import WeChatConfigError, WeChatError, WeChatSignatureError, WeChatUnavailable

log = logging.getLogger(__name__)

PUBLIC_KEY_ID_PREFIX = "PUB_KEY_ID_"
CertificateRefresher = Callable[[], list[x509.Certificate]]


class VerifierKeys:
    """Public keys able to verify WeChat's signatures, selected by serial."""

    def __init__(
        self,
        public_key: rsa.RSAPublicKey | None = None,
        public_key_id: str | None = None,
        certificates: Iterable[x509.Certificate] = (),
        refresher: CertificateRefresher | None = None,
        refresh_after_s: float = 3600.0,
        unknown_serial_gap_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (public_key is None) != (public_key_id is None):
            raise WeChatConfigError("public_key and public_key_id go together", code="BAD_PUBLIC_KEY")
        self.public_key = public_key
        self.public_key_id = public_key_id
        self.refresher = refresher
        self.refresh_after_s = refresh_after_s
        self.unknown_serial_gap_s = unknown_serial_gap_s
        self._clock = clock
        self._lock = threading.Lock()
        self._certs: dict[str, x509.Certificate] = {}
        self._fetched_at: float | None = None
        self._last_attempt_at: float | None = None
        self.add_certificates(certificates)

    @property
    def public_key_mode(self) -> bool:
        return self.public_key is not None

    @property
    def certificate_serials(self) -> list[str]:
        return sorted(self._certs)

    def add_certificates(self, certificates: Iterable[x509.Certificate]) -> None:
        # A new dict, swapped in whole: a request verified meanwhile (another thread) sees the old or the new set,
        # never one half filled, and iterating the held set never sees it change.
        self._certs = {**self._certs, **_by_serial(certificates)}

    def load_certificate_dir(
        self,
        directory: str | Path,
        *,
        merchant_serial: str | None = None,
        merchant_key: rsa.RSAPublicKey | None = None,
    ) -> int:
        """Load every ``*.pem`` certificate of a directory; returns how many. A file that cannot be read or is no
        certificate (the merchant's own key put there by mistake) raises ``WeChatConfigError`` naming it.

        So does the merchant's own API certificate (``apiclient_cert.pem`` copied there by mistake): its serial is
        ``merchant_serial`` or its key is ``merchant_key``'s. Taken, every answer and notification signed with our
        own private key passed for WeChat's. Nothing of the directory is taken when one file is refused."""
        certs = []
        for path in sorted(Path(directory).glob("*.pem")):
            try:
                cert = crypto.load_certificate(path.read_bytes())
            except OSError as exc:
                raise WeChatConfigError(f"cannot read {path}: {exc.strerror}", code="BAD_CERTIFICATE") from None
            except ValueError:
                raise WeChatConfigError(f"{path} is not a PEM certificate", code="BAD_CERTIFICATE") from None
            if _is_merchants(cert, merchant_serial, merchant_key):
                raise WeChatConfigError(
                    f"{path} is the merchant's own API certificate, not a WeChat Pay platform certificate: "
                    "remove it from the platform certificates directory",
                    code="MERCHANT_CERTIFICATE",
                )
            certs.append(cert)
        self.add_certificates(certs)
        return len(certs)

    def request_serial(self) -> str | None:
        """Serial to send as ``Wechatpay-Serial`` on every call (public-key mode only)."""
        return self.public_key_id

    def encryption_key(self) -> tuple[str, rsa.RSAPublicKey]:
        """(serial, key) to encrypt sensitive fields with: public key first, else newest cert."""
        if self.public_key is not None and self.public_key_id is not None:
            return self.public_key_id, self.public_key
        if not self._certs:
            self.refresh()
        valid = [c for c in self._certs.values() if _is_current(c)]
        if not valid:
            raise WeChatConfigError("no WeChat Pay key to encrypt with", code="NO_WECHATPAY_KEY")
        newest = max(valid, key=lambda c: c.not_valid_after_utc)
        return crypto.certificate_serial(newest), _rsa_key(newest)

    def key_for_serial(self, serial: str) -> rsa.RSAPublicKey | None:
        """The key for ``serial``, refreshing platform certificates when due."""
        if self.public_key is not None and serial == self.public_key_id:
            return self.public_key
        if serial.startswith(PUBLIC_KEY_ID_PREFIX):
            return None
        self._refresh_if_stale()
        key = self.lookup(serial)
        if key is None:
            if self._may_refresh():
                self.refresh()
            else:  # a refresh under way (another request's, for this new serial perhaps): its list, not a refusal
                with self._lock:
                    pass
            key = self.lookup(serial)
        return key

    def lookup(self, serial: str) -> rsa.RSAPublicKey | None:
        """The key for ``serial`` from what is held now, without any refresh."""
        if self.public_key is not None and serial == self.public_key_id:
            return self.public_key
        cert = self._certs.get(serial.upper().lstrip("0") or "0")
        if cert is None or not _is_current(cert):
            return None
        return _rsa_key(cert)

    def refresh(self) -> bool:
        """Replace the platform certificates from the refresher; False when it failed."""
        if self.refresher is None:
            return False
        with self._lock:
            self._last_attempt_at = self._clock()
            try:
                certs = self.refresher()
            except WeChatError as exc:
                log.warning("platform certificate refresh failed: %s", exc)
                return False
            self._certs = _by_serial(certs)  # swapped in whole (``add_certificates``)
            self._fetched_at = self._clock()
            return True

    def _refresh_if_stale(self) -> None:
        if self.refresher is None:
            return
        if self._fetched_at is not None and self._clock() - self._fetched_at <= self.refresh_after_s:
            return
        if self._may_refresh():
            self.refresh()

    def _may_refresh(self) -> bool:
        if self.refresher is None:
            return False
        last = self._last_attempt_at
        return last is None or self._clock() - last >= self.unknown_serial_gap_s


@dataclass(frozen=True)
class ApiV3Keys:
    """The current APIv3 key, and the previous one until ``previous_until`` (an aware datetime)."""

    current: str
    previous: str | None = None
    previous_until: datetime | None = None

    def __post_init__(self) -> None:
        if (self.previous is None) != (self.previous_until is None):
            raise WeChatConfigError("a previous APIv3 key needs its end time", code="BAD_APIV3_KEY")
        if self.previous_until is not None and self.previous_until.tzinfo is None:
            raise WeChatConfigError("previous_until must be timezone-aware", code="BAD_APIV3_KEY")

    @classmethod
    def of(cls, keys: ApiV3Keys | str) -> ApiV3Keys:
        return keys if isinstance(keys, ApiV3Keys) else cls(keys)

    def accepted(self, now: datetime | None = None) -> list[str]:
        """The keys that may decrypt at ``now``: the current one first."""
        moment = now or datetime.now(UTC)
        if self.previous and self.previous_until and moment < self.previous_until:
            return [self.current, self.previous]
        return [self.current]

    def decrypt(self, nonce: str, ciphertext_b64: str, associated_data: str, now: datetime | None = None) -> bytes:
        """AES-256-GCM with the current key, else (during the overlap) the previous; ``InvalidTag`` otherwise."""
        for n, key in enumerate(self.accepted(now)):
            try:
                plain = crypto.aes_gcm_decrypt(key, nonce, ciphertext_b64, associated_data)
            except InvalidTag:
                continue
            if n:
                log.info("resource decrypted with the previous APIv3 key (rotation overlap)")
            return plain
        raise InvalidTag()


class _SupportsRequest(Protocol):
    def request(self, method: str, path: str, **kwargs: Any) -> Any: ...


def download_platform_certificates(
    client: _SupportsRequest, apiv3_key: ApiV3Keys | str, keys: VerifierKeys | None = None
) -> list[x509.Certificate]:
    """``GET /v3/certificates``, decrypt each certificate, verify the answer with them.

    The answer is signed by one of the certificates it carries (or by the WeChat
    Pay public key in ``keys``), so it is checked after decryption.
    """
    from wechat.notifications import verify_response  # local: notifications imports keys

    response = client.request("GET", "/v3/certificates", verify=False)
    certs = [_decrypt_entry(entry, apiv3_key) for entry in _cert_entries(response.data)]
    certs = [c for c in certs if _is_current(c)]
    checker = VerifierKeys(
        public_key=keys.public_key if keys else None,
        public_key_id=keys.public_key_id if keys else None,
        certificates=certs,
    )
    verify_response(response.headers, response.body, checker)
    return certs


def _cert_entries(data: Any) -> list[dict[str, Any]]:
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise WeChatUnavailable("certificate list is malformed", code="UNPARSEABLE_RESPONSE")
    return entries


def _decrypt_entry(entry: dict[str, Any], apiv3_key: ApiV3Keys | str) -> x509.Certificate:
    enc = entry.get("encrypt_certificate") or {}
    try:
        pem = ApiV3Keys.of(apiv3_key).decrypt(enc["nonce"], enc["ciphertext"], enc.get("associated_data", ""))
        return crypto.load_certificate(pem)
    except (KeyError, TypeError, ValueError, InvalidTag) as exc:
        raise WeChatSignatureError(f"platform certificate did not decrypt: {exc!r}", code="BAD_CERTIFICATE") from exc


def certificates_response_body(entries: list[dict[str, Any]]) -> bytes:
    """Serialize a ``/v3/certificates`` answer (used by the simulator)."""
    return json.dumps({"data": entries}, ensure_ascii=False, separators=(",", ":")).encode()


def _by_serial(certificates: Iterable[x509.Certificate]) -> dict[str, x509.Certificate]:
    return {crypto.certificate_serial(cert): cert for cert in certificates}


def refuse_merchant_public_key(public_key: rsa.RSAPublicKey, merchant_key: rsa.RSAPublicKey | None) -> None:
    """``WeChatConfigError`` when the WeChat Pay public key is the merchant's own (the public half of
    ``apiclient_key.pem``, exported by mistake): taken, every answer and notification signed with our own private
    key passed for WeChat's, and WeChat's own were refused. As ``load_certificate_dir`` refuses our certificate."""
    if merchant_key is not None and public_key.public_numbers() == merchant_key.public_numbers():
        raise WeChatConfigError(
            "this is the merchant's own public key (the public half of WECHAT_MCH_PRIVATE_KEY_PATH), not the "
            "WeChat Pay public key: download WeChat Pay's public key (pub_key.pem) from the merchant platform",
            code="MERCHANT_KEY",
        )


def _is_merchants(cert: x509.Certificate, serial: str | None, key: rsa.RSAPublicKey | None) -> bool:
    """The certificate is the merchant's: the configured serial (hex, any case, leading zeros or not), or its key."""
    if serial and crypto.certificate_serial(cert) == (serial.strip().upper().removeprefix("0X").lstrip("0") or "0"):
        return True
    return key is not None and cert.public_key().public_numbers() == key.public_numbers()


def _is_current(cert: x509.Certificate) -> bool:
    now = datetime.now(UTC)
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _rsa_key(cert: x509.Certificate) -> rsa.RSAPublicKey:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise WeChatConfigError("platform certificate key is not RSA", code="BAD_CERTIFICATE")
    return key
