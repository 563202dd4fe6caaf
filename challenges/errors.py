"""Errors of the challenge operations: a stable ``code``, a ``kind`` the web layer turns into a status, and a
message safe to show a person (Chinese first, then English) in the mini-program or a bot's reply."""

from __future__ import annotations


class ChallengeError(Exception):
    code = "challenge_error"
    kind = "conflict"
    zh = "挑战操作未成功"
    en = "the challenge operation did not succeed"

    def __init__(self, en: str | None = None, *, zh: str | None = None, code: str | None = None):
        self.en = en or self.en
        self.zh = zh or self.zh
        self.code = code or self.code
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """Both languages, for a reply that goes to a person as it is."""
        return f"{self.zh} ({self.en})"


class ChallengeInvalid(ChallengeError):
    code, kind, zh, en = "challenge_invalid", "invalid", "挑战设置有误", "the challenge is not valid"


class ChallengeNotFound(ChallengeError):
    code, kind, zh, en = "challenge_not_found", "not_found", "没有找到这个挑战", "no such challenge"


class ChallengeClosed(ChallengeError):
    code, zh, en = "challenge_closed", "这个挑战已不能加入", "the challenge no longer takes participants"


class ChallengeFull(ChallengeError):
    code, zh, en = "challenge_full", "这个挑战人数已满", "the challenge is full"


class StakeAboveHeld(ChallengeError):
    code, zh, en = "stake_above_held", "余额或积分不足以支付挑战金", "the stake is more than you hold"


class AlreadySettled(ChallengeError):
    code, zh, en = "challenge_settled", "这个挑战已结束", "the challenge is already over"


class NotParticipant(ChallengeError):
    code, kind, zh, en = "not_participant", "not_found", "你没有参加这个挑战", "you are not in this challenge"


class MeasureRefused(ChallengeError):
    """A step upload, a reading check-in or a quiz answer we do not take (too soon, over the cap, late…)."""

    code, kind, zh, en = "measure_refused", "invalid", "这条记录未被接受", "the record was not accepted"


class TooSoon(MeasureRefused):
    code, kind, zh, en = "checkin_too_soon", "limit", "打卡太频繁了，请稍后再试", "checked in too recently"

    def __init__(self, retry_after: int, **kw):
        super().__init__(**kw)
        self.retry_after = retry_after
