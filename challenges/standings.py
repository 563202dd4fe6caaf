"""Standings: each participant's counted total, rank and what is still awaited, and the decision they make.

A day counts when it has ended and every participant's data for it has arrived, or once the report deadline
has passed (missing data then counts as zero). ``first_to_goal``: the winners are those whose running total
first reaches the goal on the earliest counted day (all of them on that day: a tie); nobody reaching it by the
end means nobody wins or loses. ``highest_total``: the highest total wins, ties share; everyone equal means
nobody loses. A quiz counts each person's score once they answered or their time ran out. A settled challenge
stands as settled (the totals written at settlement), whatever data arrives after.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime

from challenges.days import day_end, period
from challenges.measures import daily_data
from challenges.operations import display_names, get_challenge, participants_of
from challenges.quiz import quiz_data
from models import Challenge, ChallengeKind, ChallengeStatus, WinRule


@dataclass
class StandingRow:
    user_id: int
    name: str | None
    total: int
    days_counted: int
    rank: int
    result: str | None = None  # won | lost | tied, once settled


@dataclass
class Standings:
    challenge_id: int
    kind: str
    title: str
    status: str
    rule: str
    goal: int | None
    start_day: date
    days: int
    stake_source: str
    stake: int
    prize_fen: int
    direction: str
    join_deadline: datetime
    report_deadline: datetime
    participants: int
    max_participants: int
    group: tuple[str, str] | None
    rows: list[StandingRow]
    counted_days: list[date]
    waiting: list[dict] = field(default_factory=list)  # {"day" (None for a quiz), "user_ids"} still awaited
    decided: bool = False  # the data decide the challenge now (settlement may run)
    winners: list[int] = field(default_factory=list)
    outcome: dict | None = None
    missing_counts_as_zero: bool = True  # said up front: after the report deadline, no data is zero

    def as_json(self) -> dict:
        out = asdict(self)
        for key in ("start_day", "join_deadline", "report_deadline"):
            out[key] = out[key].isoformat()
        out["counted_days"] = [d.isoformat() for d in self.counted_days]
        out["group"] = list(self.group) if self.group else None
        if self.outcome and "withheld" in self.outcome:  # whose prize was withheld and why (a ban): operators only
            out["outcome"] = {k: v for k, v in self.outcome.items() if k != "withheld"}
        return out


def standings(challenge_id: int, now: datetime) -> Standings:
    challenge = get_challenge(challenge_id)
    members = participants_of(challenge_id)
    user_ids = [p.user_id for p in members]
    names = display_names(user_ids)
    if challenge.status == ChallengeStatus.SETTLED and all(p.total is not None for p in members):
        totals, counted, waiting, decided, winners = _settled(challenge, members)
    elif challenge.kind == ChallengeKind.QUIZ:
        totals, counted, waiting, decided, winners = _quiz(challenge, user_ids, now)
    else:
        totals, counted, waiting, decided, winners = _daily(challenge, user_ids, now)
    results = {p.user_id: p.result for p in members}
    order = sorted(user_ids, key=lambda u: (-totals[u][0], u))
    rows, rank = [], 0
    for i, uid in enumerate(order):
        if i == 0 or totals[uid][0] != totals[order[i - 1]][0]:
            rank = i + 1
        rows.append(StandingRow(uid, names.get(uid), totals[uid][0], totals[uid][1], rank, results.get(uid)))
    return Standings(
        challenge_id=challenge.id,
        kind=challenge.kind,
        title=challenge.title,
        status=challenge.status,
        rule=challenge.rule,
        goal=challenge.goal,
        start_day=challenge.start_day,
        days=challenge.days,
        stake_source=challenge.stake_source,
        stake=challenge.stake,
        prize_fen=challenge.prize_fen,
        direction=challenge.direction,
        join_deadline=challenge.join_deadline,
        report_deadline=challenge.report_deadline,
        participants=challenge.participants,
        max_participants=challenge.max_participants,
        group=(challenge.group_transport, challenge.group_id) if challenge.group_id else None,
        rows=rows,
        counted_days=counted,
        waiting=waiting,
        decided=decided,
        winners=winners,
        outcome=challenge.outcome,
    )


def _settled(challenge: Challenge, members: list):
    """A settled challenge stands as it was settled: the totals, counted days and winners its money moved on (data
    arriving later, a WeRun upload after the report deadline, changes nothing of it)."""
    outcome = challenge.outcome or {}
    counted = [date.fromisoformat(d) for d in outcome.get("counted_days") or []]
    days = 1 if challenge.kind == ChallengeKind.QUIZ else len(counted)  # a settled quiz counted everyone's score
    totals = {p.user_id: (p.total, days) for p in members}
    return totals, counted, [], True, sorted(outcome.get("winners") or [])


def _daily(challenge: Challenge, user_ids: list[int], now: datetime):
    days = period(challenge.start_day, challenge.days)
    data = daily_data(challenge, user_ids, days, now) if user_ids else {}
    late = now >= challenge.report_deadline
    counted, waiting = [], []
    for day in days:
        if now < day_end(day):
            waiting.append({"day": day.isoformat(), "user_ids": list(user_ids)})
            continue
        missing = [u for u in user_ids if not data[u, day].arrived]
        if missing and not late:
            waiting.append({"day": day.isoformat(), "user_ids": missing})
        else:
            counted.append(day)
    totals = {u: (sum(data[u, d].value for d in counted), len(counted)) for u in user_ids}
    if challenge.rule == WinRule.FIRST_TO_GOAL:
        winners, decided = _first_to_goal(challenge, user_ids, data, days, counted)
    else:
        decided = len(counted) == len(days)
        winners = _highest(totals) if decided else []
    return totals, counted, waiting, decided, winners


def _first_to_goal(challenge: Challenge, user_ids: list[int], data: dict, days: list[date], counted: list[date]):
    """The earliest counted day (in order, stopping at the first not counted) someone's running total reached
    the goal; everyone who reached it that day wins."""
    running = dict.fromkeys(user_ids, 0)
    for day in days:
        if day not in counted:
            return [], False
        for u in user_ids:
            running[u] += data[u, day].value
        reached = [u for u in user_ids if running[u] >= challenge.goal]
        if reached:
            return reached, True
    return [], True  # nobody reached it: decided, nobody wins or loses


def _highest(totals: dict[int, tuple[int, int]]) -> list[int]:
    if not totals:
        return []
    best = max(t for t, _ in totals.values())
    return sorted(u for u, (t, _) in totals.items() if t == best)


def _quiz(challenge: Challenge, user_ids: list[int], now: datetime):
    scores = quiz_data(challenge.id, user_ids, now)
    late = now >= challenge.report_deadline
    missing = [u for u in user_ids if not scores[u][1]]
    decided = not missing or late
    waiting = [] if decided else [{"day": None, "user_ids": missing}]
    totals = {u: (scores[u][0], 1 if scores[u][1] or late else 0) for u in user_ids}
    return totals, [], waiting, decided, _highest(totals) if decided else []
