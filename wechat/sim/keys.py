"""The simulator's own WeChat-side keys: a WeChat Pay public key pair
(``PUB_KEY_ID_0000…``) and a self-signed platform certificate, plus the code
that signs answers and callbacks exactly as WeChat does.

``Material`` is everything secret both sides of the simulated account share (the merchant's key
too): made once, kept in the simulator's store, so every process of a deployment signs and
verifies with the same keys.
"""

from __future__ import annotations

import base64
import secrets
import string
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from wechat import crypto
from wechat.keys import VerifierKeys

SIM_PUBLIC_KEY_ID = "PUB_KEY_ID_" + "0" * 31 + "1"


def generate_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def self_signed_certificate(key: rsa.RSAPrivateKey, common_name: str, days: int = 365) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )


class SimulatorKeys:
    """WeChat's side of the key material, generated unless given."""

    def __init__(
        self,
        public_key_private: rsa.RSAPrivateKey | None = None,
        platform_private: rsa.RSAPrivateKey | None = None,
        public_key_id: str = SIM_PUBLIC_KEY_ID,
        platform_cert: x509.Certificate | None = None,
    ) -> None:
        self.public_key_private = public_key_private or generate_rsa_key()
        self.platform_private = platform_private or generate_rsa_key()
        self.public_key_id = public_key_id
        self.platform_cert = platform_cert or self_signed_certificate(
            self.platform_private, "Tenpay.com Root CA (simulator)"
        )
        self.platform_serial = crypto.certificate_serial(self.platform_cert)

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.public_key_private.public_key()

    @property
    def public_key_pem(self) -> str:
        return crypto.public_key_pem(self.public_key)

    @property
    def platform_cert_pem(self) -> str:
        return self.platform_cert.public_bytes(serialization.Encoding.PEM).decode()

    def verifier_keys(self, public_key: bool = True, certificates: bool = False) -> VerifierKeys:
        """Keys a merchant would configure to trust this simulator."""
        return VerifierKeys(
            public_key=self.public_key if public_key else None,
            public_key_id=self.public_key_id if public_key else None,
            certificates=[self.platform_cert] if certificates else (),
        )

    def private_for(self, serial: str | None) -> tuple[str, rsa.RSAPrivateKey]:
        """(serial, key): the platform certificate when named, else the WeChat Pay public key."""
        if serial == self.platform_serial:
            return self.platform_serial, self.platform_private
        return self.public_key_id, self.public_key_private

    def sign_headers(
        self,
        body: bytes,
        serial: str | None = None,
        timestamp: int | None = None,
        nonce: str | None = None,
    ) -> dict[str, str]:
        """``Wechatpay-*`` headers for an answer or callback body."""
        chosen, key = self.private_for(serial)
        ts = str(int(time.time()) if timestamp is None else timestamp)
        nonce = nonce or crypto.new_nonce()
        return {
            "Wechatpay-Timestamp": ts,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": crypto.sign_rsa(crypto.response_message(ts, nonce, body), key),
            "Wechatpay-Serial": chosen,
            "Wechatpay-Signature-Type": crypto.SIGNATURE_TYPE,
        }


@dataclass(frozen=True)
class Material:
    """The simulated account's secrets: the merchant's API key and serial, WeChat's keys, the APIv3 key,
    and the key the card package encrypts codes with."""

    merchant_key: rsa.RSAPrivateKey
    merchant_serial: str
    keys: SimulatorKeys
    apiv3_key: str
    card_key: bytes

    @classmethod
    def generate(cls) -> Material:
        apiv3 = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
        platform = generate_rsa_key()  # its certificate outlives any store that keeps it (ten years)
        keys = SimulatorKeys(
            platform_private=platform,
            platform_cert=self_signed_certificate(platform, "Tenpay.com Root CA (simulator)", days=3650),
        )
        return cls(generate_rsa_key(), secrets.token_hex(20).upper(), keys, apiv3, secrets.token_bytes(32))

    def to_record(self) -> dict[str, Any]:
        return {
            "merchant_key": crypto.private_key_pem(self.merchant_key),
            "merchant_serial": self.merchant_serial,
            "public_key_private": crypto.private_key_pem(self.keys.public_key_private),
            "platform_private": crypto.private_key_pem(self.keys.platform_private),
            "platform_cert": self.keys.platform_cert_pem,
            "apiv3_key": self.apiv3_key,
            "card_key": base64.b64encode(self.card_key).decode(),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Material:
        keys = SimulatorKeys(
            crypto.load_private_key(record["public_key_private"]),
            crypto.load_private_key(record["platform_private"]),
            platform_cert=x509.load_pem_x509_certificate(record["platform_cert"].encode()),
        )
        return cls(
            crypto.load_private_key(record["merchant_key"]),
            record["merchant_serial"],
            keys,
            record["apiv3_key"],
            base64.b64decode(record["card_key"]),
        )
