"""APIv3 cryptography on ``cryptography``: request signing, response/callback
verification, AES-256-GCM resources, RSA-OAEP sensitive fields, paySign.

Pure functions; time and randomness can be injected for deterministic tests.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wechat.errors import WeChatConfigError

AUTH_SCHEMA = "WECHATPAY2-SHA256-RSA2048"
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"


def new_nonce(length_hex: int = 32) -> str:
    """Random upper-case hex nonce (32 chars by default)."""
    return secrets.token_hex(length_hex // 2).upper()


def request_message(method: str, canonical_url: str, timestamp: int, nonce: str, body: str) -> str:
    """The exact five-line string WeChat expects us to sign."""
    return f"{method.upper()}\n{canonical_url}\n{timestamp}\n{nonce}\n{body}\n"


def response_message(timestamp: str, nonce: str, body: bytes | str) -> bytes:
    """The three-line message WeChat signs: ``ts\\nnonce\\nbody\\n`` over raw bytes."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    return f"{timestamp}\n{nonce}\n".encode() + raw + b"\n"


def sign_rsa(message: str | bytes, private_key: rsa.RSAPrivateKey) -> str:
    """Base64 RSA-PKCS#1 v1.5 SHA-256 signature."""
    data = message.encode("utf-8") if isinstance(message, str) else message
    return base64.b64encode(private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()


def verify_rsa(message: str | bytes, signature_b64: str, public_key: rsa.RSAPublicKey) -> bool:
    """True when ``signature_b64`` is a valid RSA-SHA256 signature of ``message``."""
    data = message.encode("utf-8") if isinstance(message, str) else message
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def build_authorization(
    method: str,
    canonical_url: str,
    body: str,
    mchid: str,
    serial_no: str,
    private_key: rsa.RSAPrivateKey,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> str:
    """The ``Authorization`` header value for one APIv3 request."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    nonce = nonce or new_nonce()
    signature = sign_rsa(request_message(method, canonical_url, ts, nonce, body), private_key)
    return (
        f'{AUTH_SCHEMA} mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",'
        f'timestamp="{ts}",serial_no="{serial_no}"'
    )


def parse_authorization(header: str) -> dict[str, str]:
    """Split an ``Authorization`` header into its five items (any order)."""
    schema, _, rest = header.partition(" ")
    if schema != AUTH_SCHEMA:
        raise ValueError("unsupported authorization schema")
    items: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or len(value) < 2 or value[0] != '"' or value[-1] != '"':
            raise ValueError("malformed authorization item")
        items[key] = value[1:-1]
    missing = {"mchid", "nonce_str", "signature", "timestamp", "serial_no"} - items.keys()
    if missing:
        raise ValueError(f"authorization lacks {sorted(missing)}")
    return items


def aes_gcm_decrypt(apiv3_key: str, nonce: str, ciphertext_b64: str, associated_data: str) -> bytes:
    """Decrypt an AEAD_AES_256_GCM resource; raises ``InvalidTag`` on any mismatch."""
    aesgcm = AESGCM(_apiv3_key_bytes(apiv3_key))
    data = base64.b64decode(ciphertext_b64)
    return aesgcm.decrypt(nonce.encode("utf-8"), data, (associated_data or "").encode("utf-8"))


def aes_gcm_encrypt(apiv3_key: str, nonce: str, plaintext: bytes | str, associated_data: str) -> str:
    """Encrypt like WeChat does; returns base64(ciphertext‖tag)."""
    raw = plaintext.encode("utf-8") if isinstance(plaintext, str) else plaintext
    aesgcm = AESGCM(_apiv3_key_bytes(apiv3_key))
    sealed = aesgcm.encrypt(nonce.encode("utf-8"), raw, (associated_data or "").encode("utf-8"))
    return base64.b64encode(sealed).decode()


def _apiv3_key_bytes(apiv3_key: str) -> bytes:
    key = apiv3_key.encode("utf-8")
    if len(key) != 32:
        raise WeChatConfigError("the APIv3 key must be 32 bytes", code="BAD_APIV3_KEY")
    return key


def _oaep() -> padding.OAEP:
    # WeChat mandates OAEP with SHA-1 / MGF1-SHA1 for sensitive fields.
    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303


def rsa_oaep_encrypt(plaintext: str, public_key: rsa.RSAPublicKey) -> str:
    """RSA-OAEP (SHA-1/MGF1-SHA1) base64, for sensitive fields like ``user_name``."""
    return base64.b64encode(public_key.encrypt(plaintext.encode("utf-8"), _oaep())).decode()


def rsa_oaep_decrypt(ciphertext_b64: str, private_key: rsa.RSAPrivateKey) -> str:
    """Inverse of :func:`rsa_oaep_encrypt` (used by the simulator)."""
    return private_key.decrypt(base64.b64decode(ciphertext_b64), _oaep()).decode("utf-8")


def jsapi_pay_params(
    appid: str,
    prepay_id: str,
    private_key: rsa.RSAPrivateKey,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """``wx.requestPayment`` parameters; paySign covers ``appid\\nts\\nnonce\\npackage\\n``."""
    ts = str(int(time.time()) if timestamp is None else int(timestamp))
    nonce = nonce or new_nonce()
    package = f"prepay_id={prepay_id}"
    pay_sign = sign_rsa(f"{appid}\n{ts}\n{nonce}\n{package}\n", private_key)
    return {"timeStamp": ts, "nonceStr": nonce, "package": package, "signType": "RSA", "paySign": pay_sign}


def load_private_key(pem: str | bytes) -> rsa.RSAPrivateKey:
    """Load a PEM private key (``apiclient_key.pem``)."""
    key = serialization.load_pem_private_key(_as_bytes(pem), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise WeChatConfigError("the merchant private key must be RSA", code="BAD_PRIVATE_KEY")
    return key


def load_public_key(pem: str | bytes) -> rsa.RSAPublicKey:
    """Load a PEM public key (the WeChat Pay public key ``pub_key.pem``)."""
    key = serialization.load_pem_public_key(_as_bytes(pem))
    if not isinstance(key, rsa.RSAPublicKey):
        raise WeChatConfigError("the WeChat Pay public key must be RSA", code="BAD_PUBLIC_KEY")
    return key


def load_certificate(pem: str | bytes) -> x509.Certificate:
    """Load an X.509 PEM certificate (platform or merchant certificate)."""
    return x509.load_pem_x509_certificate(_as_bytes(pem))


def certificate_serial(cert: x509.Certificate) -> str:
    """Serial as WeChat prints it: upper-case hex without leading ``0x``."""
    return format(cert.serial_number, "X")


def private_key_pem(private_key: rsa.RSAPrivateKey) -> str:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_key_pem(public_key: rsa.RSAPublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value
