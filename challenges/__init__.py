"""Challenges among friends: steps, reading and quiz challenges, their stakes, measures and settlement.

Owns: the challenge lifecycle (open → running → settled, or cancelled), the stakes (reserved in the ledger
when a person joins, from what they already hold: their rebate balance or points; or a sponsor campaign's
prize: never fresh cash between people), the measures (WeRun steps, reading check-ins, quiz answers checked
here), and settlement exactly once (the challenge's row lock and status in the settlement's transaction,
every movement keyed by the challenge). A loser's stake becomes a red packet issued by the loser to the
winner through ``rebate``'s packets, so the two-way rebate pays the loser back when the winner spends it.
Above ``rebate``; below ``insights`` and the shell. Settings come in as ``ChallengeSettings`` values.
Operations flush and never commit.
"""

from challenges.errors import (
    AlreadySettled,
    ChallengeClosed,
    ChallengeError,
    ChallengeFull,
    ChallengeInvalid,
    ChallengeNotFound,
    MeasureRefused,
    NotParticipant,
    StakeAboveHeld,
    TooSoon,
)
from challenges.measures import StepsRecorded, check_in_reading, record_steps
from challenges.operations import (
    challenges_of,
    create_challenge,
    current_settings,
    get_challenge,
    group_challenges,
    is_participant,
    join_challenge,
)
from challenges.quiz import answer_quiz, start_quiz
from challenges.settle import due_challenges, settle_challenge, settle_due
from challenges.spec import ChallengeSettings, ChallengeSpec
from challenges.standings import StandingRow, Standings, standings
from challenges.sweep import open_prizes, sweep_prize, sweep_prizes
from models import Challenge, ChallengeParticipant

__all__ = [
    "AlreadySettled",
    "Challenge",
    "ChallengeClosed",
    "ChallengeError",
    "ChallengeFull",
    "ChallengeInvalid",
    "ChallengeNotFound",
    "ChallengeParticipant",
    "ChallengeSettings",
    "ChallengeSpec",
    "MeasureRefused",
    "NotParticipant",
    "StakeAboveHeld",
    "StandingRow",
    "Standings",
    "StepsRecorded",
    "TooSoon",
    "answer_quiz",
    "challenges_of",
    "check_in_reading",
    "create_challenge",
    "current_settings",
    "due_challenges",
    "get_challenge",
    "group_challenges",
    "is_participant",
    "join_challenge",
    "open_prizes",
    "record_steps",
    "settle_challenge",
    "settle_due",
    "standings",
    "start_quiz",
    "sweep_prize",
    "sweep_prizes",
]
