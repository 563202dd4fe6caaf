"""Typed errors of the WeChat package.

Every error carries a stable ``code`` (WeChat's own code when WeChat gave one),
``retryable`` (repeating the call with the SAME idempotency key is safe) and
``outcome_unknown`` (WeChat may or may not have acted: query before deciding,
never switch to a new idempotency key on this error alone).
"""

from __future__ import annotations


class WeChatError(Exception):
    """Base of every error raised by the ``wechat`` package."""

    default_code = "WECHAT_ERROR"
    default_retryable = False
    default_outcome_unknown = False

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        http_status: int | None = None,
        retryable: bool | None = None,
        outcome_unknown: bool | None = None,
    ) -> None:
        self.code = code or self.default_code
        self.message = message or self.code
        self.http_status = http_status
        self.retryable = self.default_retryable if retryable is None else retryable
        self.outcome_unknown = self.default_outcome_unknown if outcome_unknown is None else outcome_unknown
        super().__init__(f"{self.code}: {self.message}")

    def as_unknown(self) -> WeChatError:
        """Copy of this error that tells the caller to query before deciding."""
        return type(self)(
            self.message,
            code=self.code,
            http_status=self.http_status,
            retryable=True,
            outcome_unknown=True,
        )


class WeChatUnavailable(WeChatError):
    """Timeout, connection error, 5xx, unparseable answer or unknown code."""

    default_code = "UNAVAILABLE"
    default_retryable = True
    default_outcome_unknown = True


class WeChatRateLimited(WeChatError):
    """WeChat refused the call for frequency; back off, retry the same key."""

    default_code = "FREQUENCY_LIMITED"
    default_retryable = True


class WeChatBusinessError(WeChatError):
    """A definitive, documented refusal (4xx with a known code)."""

    default_code = "BUSINESS_ERROR"


class WeChatNotFound(WeChatBusinessError):
    """The order / refund / bill does not exist at WeChat."""

    default_code = "NOT_FOUND"


class WeChatLoginCodeInvalid(WeChatBusinessError):
    """A mini-program / OAuth code is invalid or used: the client must log in again."""

    default_code = "40029"


class WeChatUserBlocked(WeChatBusinessError):
    """WeChat blocked a high-risk user (40226)."""

    default_code = "40226"


class WeChatSnapshotUser(WeChatBusinessError):
    """The login came from a snapshot-page virtual account (``is_snapshotuser=1``)."""

    default_code = "SNAPSHOT_USER"


class WeChatTokenInvalid(WeChatBusinessError):
    """The access token was refused (40001 / 40014 / 42001): drop it, retry once with a fresh one."""

    default_code = "40001"
    default_retryable = True


class WeChatCardCodeInvalid(WeChatBusinessError):
    """WeChat knows no such card code, or cannot decrypt the ``encrypt_code`` (40056 / 40075 / 40116 / 40127)."""

    default_code = "40056"


class WeChatCardCodeConsumed(WeChatBusinessError):
    """The card code was already redeemed (40099): a second ``/card/code/consume`` changes nothing."""

    default_code = "40099"


class WeChatSignatureError(WeChatError):
    """A response lacked a valid WeChat signature: treat it as forged."""

    default_code = "BAD_RESPONSE_SIGNATURE"
    default_retryable = True
    default_outcome_unknown = True


class WeChatIntegrityError(WeChatError):
    """Downloaded content does not match the hash WeChat announced."""

    default_code = "HASH_MISMATCH"
    default_retryable = True


class WeChatConfigError(WeChatError):
    """Our own configuration is missing or wrong; nothing was sent."""

    default_code = "CONFIG_ERROR"


class WeChatInvalidRequest(WeChatError):
    """Arguments refused locally before any call; nothing was sent."""

    default_code = "INVALID_ARGUMENT"


class NotificationRejected(WeChatError):
    """An inbound callback failed verification; answer 4xx and do not process."""

    default_code = "NOTIFICATION_REJECTED"

    def __init__(self, reason: str, message: str = "", *, http_status: int = 401) -> None:
        self.reason = reason
        super().__init__(message or reason, code=reason, http_status=http_status)
