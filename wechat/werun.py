"""WeRun (微信运动) data: ``wx.getWeRunData`` gives the mini-program ``encryptedData`` and ``iv``; decrypted
here with the person's current ``session_key`` (AES-128-CBC, wechatpy's ``WeChatWxaCrypto``), the watermark's
appid and timestamp checked. Returns the days as (Beijing date, steps); the caller decides what counts."""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone

from wechatpy.crypto import WeChatWxaCrypto
from wechatpy.exceptions import InvalidAppIdException

BEIJING = timezone(timedelta(hours=8))  # WeRun's timestamps are Beijing midnights (no daylight saving)
MAX_DAYS = 31
MAX_STEPS = 1_000_000  # a day's count, far above any walker's (over the plausibility cap is kept, flagged)
EARLIEST_S, LATEST_S = 946_684_800, 4_102_444_800  # 2000-01-01 and 2100-01-01 UTC, in seconds


class WeRunError(Exception):
    """Data we do not take: ``code`` says why (bad_ciphertext, wrong_appid, stale, malformed)."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class WeRunData:
    steps: list[tuple[date, int]]
    watermark_at: datetime


def decrypt_werun(
    session_key: str, encrypted_data: str, iv: str, appid: str, now: datetime, max_age_s: int
) -> WeRunData:
    """Decrypt and check a WeRun upload: the watermark must name our appid and be at most ``max_age_s`` old."""
    try:
        plain = WeChatWxaCrypto(session_key, iv, appid).decrypt_message(encrypted_data)
    except InvalidAppIdException:
        raise WeRunError("the data was made for another mini-program", "wrong_appid") from None
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError, binascii.Error):
        # a wrong key or tampered bytes: bad padding, bytes that are not JSON, JSON without a watermark
        raise WeRunError("the data does not decrypt with this session", "bad_ciphertext") from None
    mark = plain.get("watermark") if isinstance(plain, dict) else None
    stamp = mark.get("timestamp") if isinstance(mark, dict) else None
    if not isinstance(stamp, int) or isinstance(stamp, bool):
        raise WeRunError("the data has no watermark time", "malformed")
    if not EARLIEST_S <= stamp < LATEST_S:
        raise WeRunError("the data's watermark time is not a time WeChat writes", "malformed")
    made = datetime.fromtimestamp(stamp, UTC)
    if abs((now - made).total_seconds()) > max_age_s:
        raise WeRunError("the data is too old (or from the future): fetch it again", "stale")
    return WeRunData(_days(plain.get("stepInfoList")), made)


def _days(items: object) -> list[tuple[date, int]]:
    if not isinstance(items, list) or len(items) > MAX_DAYS:
        raise WeRunError("stepInfoList is not a list of at most 31 days", "malformed")
    out = []
    for item in items:
        ts, steps = (item.get("timestamp"), item.get("step")) if isinstance(item, dict) else (None, None)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (ts, steps)):
            raise WeRunError("a day of stepInfoList is not {timestamp, step}", "malformed")
        if not (EARLIEST_S <= ts < LATEST_S and 0 <= steps <= MAX_STEPS):
            raise WeRunError("a day of stepInfoList has a time or a step count WeChat does not write", "malformed")
        out.append((datetime.fromtimestamp(ts, BEIJING).date(), steps))
    return out


def encrypt_werun(session_key: str, payload: dict, iv_bytes: bytes) -> tuple[str, str]:
    """The other side, for tests and the simulator: WeChat's encryption of ``payload`` → (encryptedData, iv)."""
    import base64
    import json

    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    padder = padding.PKCS7(128).padder()
    raw = padder.update(json.dumps(payload).encode()) + padder.finalize()
    enc = Cipher(algorithms.AES(base64.b64decode(session_key)), modes.CBC(iv_bytes)).encryptor()
    return base64.b64encode(enc.update(raw) + enc.finalize()).decode(), base64.b64encode(iv_bytes).decode()
