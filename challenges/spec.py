"""``ChallengeSpec``: what a person asks for, validated the same way from the API's JSON and a bot's command;
``ChallengeSettings``: the configured limits, passed down as values (the app builds them from config)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from challenges.errors import ChallengeInvalid
from models import ChallengeKind, Direction, StakeSource, WinRule
from models.text import shown_text
from money import MAX_FEN


def _shown(max_length: int):
    return Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=max_length),
        AfterValidator(shown_text),
    ]


@dataclass(frozen=True)
class ChallengeSettings:
    max_participants: int = 20
    max_days: int = 30
    max_lead_days: int = 30  # the first day at most this many days after today: stakes are held until then
    steps_daily_cap: int = 98_800  # more in one day is not taken (plausibility)
    steps_repeat_days: int = 3  # the same non-zero total this many days running is flagged
    reading_interval_minutes: int = 30
    reading_daily_cap: int = 3
    report_grace_hours: int = 24  # after the last day ends; then missing data counts as zero
    loser_rebate_bps: int = 1000  # the loser's share back when the winner spends the loser's packet
    packet_valid_days: int = 14
    quiz_seconds: int = 300


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: _shown(200)
    choices: Annotated[list[_shown(60)], Field(min_length=2, max_length=6)]
    answer: Annotated[int, Field(strict=True, ge=0)]

    @model_validator(mode="after")
    def answer_is_a_choice(self):
        if self.answer >= len(self.choices):
            raise ValueError("answer must be the index of one of the choices")
        return self


class ChallengeSpec(BaseModel):
    """A challenge as asked for. ``stake`` is per person, in fen from the balance or in points (by
    ``stake_source``); a sponsor challenge stakes nothing and names the sponsor's campaign and ``prize_fen``.
    ``start_day`` (Beijing) defaults to tomorrow; joining closes when the first day begins. A day counts once
    every participant's data for it has arrived, or at the report deadline (``report_grace_hours`` after the
    last day), when missing data counts as zero."""

    model_config = ConfigDict(extra="forbid")
    kind: ChallengeKind
    title: _shown(64) | None = None
    days: Annotated[int, Field(strict=True, ge=1, le=366)] = 3
    start_day: date | None = None
    rule: WinRule = WinRule.HIGHEST_TOTAL
    goal: Annotated[int, Field(strict=True, gt=0, le=10_000_000)] | None = None
    stake_source: StakeSource = StakeSource.BALANCE
    stake: Annotated[int, Field(strict=True, ge=0, le=MAX_FEN)] = 0
    sponsor_campaign_id: Annotated[int, Field(strict=True, gt=0, le=2**31 - 1)] | None = None  # an INTEGER primary key
    prize_fen: Annotated[int, Field(strict=True, ge=0, le=MAX_FEN)] = 0
    max_participants: Annotated[int, Field(strict=True, ge=2, le=1000)] | None = None
    questions: Annotated[list[Question], Field(max_length=20)] = []

    @model_validator(mode="after")
    def consistent(self):
        if self.rule == WinRule.FIRST_TO_GOAL and self.goal is None:
            raise ValueError("first_to_goal needs a goal")
        if self.stake_source == StakeSource.SPONSOR:
            if self.sponsor_campaign_id is None or self.prize_fen <= 0 or self.stake:
                raise ValueError("a sponsor challenge names sponsor_campaign_id and prize_fen, and stakes nothing")
        elif self.stake <= 0 or self.sponsor_campaign_id is not None or self.prize_fen:
            raise ValueError("a stake from what you hold must be more than zero (and names no sponsor)")
        if (self.kind == ChallengeKind.QUIZ) != bool(self.questions):
            raise ValueError("a quiz needs questions, and only a quiz has them")
        if self.kind == ChallengeKind.QUIZ and self.rule != WinRule.HIGHEST_TOTAL:
            raise ValueError("a quiz is won by the highest score")
        return self

    @property
    def direction(self) -> Direction:
        return Direction.WINNER_TO_LOSER if self.kind == ChallengeKind.QUIZ else Direction.LOSER_TO_WINNER

    @classmethod
    def parse(cls, data: object) -> ChallengeSpec:
        """From a bot's parsed command (a dict): ``ChallengeInvalid`` with every problem in words."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
            raise ChallengeInvalid(problems) from None
