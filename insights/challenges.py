"""Challenges as operators see them (docs/architecture.md §12): a filtered list with counts by status, and one
challenge in full — its participants, the day grid (what arrived, what is missing, what risk flagged), the
prizes with their packets and what came back, the settlement, and the ledger entries and notices it wrote.

Reads only: what counts is the domain's own answer (``challenges.standings`` and ``challenges.measures
.daily_data``), never computed a second way. ``platform=False`` is a merchant's staff member looking at a
challenge their merchant's campaign sponsors: they see the people as ids (no names, no openids), that a day
was flagged but not why nor its raw value, and neither the ledger nor the notices. ``mask`` hides an
identifier (a group's id, an openid) the way the shell masks it in logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from challenges.days import day_end, period
from challenges.measures import daily_data
from challenges.standings import standings
from models import (
    Campaign,
    Challenge,
    ChallengeKind,
    ChallengeParticipant,
    ChallengePrize,
    LedgerEntry,
    LedgerPosting,
    Notice,
    OrderPacket,
    QuizAttempt,
    QuizQuestion,
    Rebate,
    RedPacket,
    StakeSource,
    StepDay,
    User,
    UserIdentity,
    db,
)
from notices import NoticeEvent

NO_GROUP = "none"  # the transport filter's word for a challenge started in the mini-program, in no group
Mask = Callable[[str], str]


@dataclass(frozen=True)
class ChallengeFilter:
    status: str | None = None
    kind: str | None = None
    transport: str | None = None  # a group transport, or NO_GROUP
    stake_source: str | None = None
    since: datetime | None = None  # created at or after
    user_id: int | None = None  # a participant
    campaign_id: int | None = None  # the sponsor's campaign
    limit: int = 50
    offset: int = 0


# --- scope ----------------------------------------------------------------------------------------


def _sponsored_by(merchant_id: int):
    """Challenges whose prize a campaign funded by the merchant pays (a campaign is its funder's)."""
    return Challenge.sponsor_campaign_id.in_(select(Campaign.id).where(Campaign.funder_merchant_id == merchant_id))


def merchant_sees_challenge(challenge: Challenge, merchant_id: int) -> bool:
    if challenge.sponsor_campaign_id is None:
        return False
    campaign = db.session.get(Campaign, challenge.sponsor_campaign_id)
    return campaign is not None and campaign.funder_merchant_id == merchant_id


# --- the list -------------------------------------------------------------------------------------


def list_challenges(f: ChallengeFilter, *, merchant_id: int | None = None, mask: Mask = str) -> dict:
    """Counts by status over every filter but the status, the matching total, and a page, newest first."""
    where = []
    if merchant_id is not None:
        where.append(_sponsored_by(merchant_id))
    if f.kind is not None:
        where.append(Challenge.kind == f.kind)
    if f.transport == NO_GROUP:
        where.append(Challenge.group_transport.is_(None))
    elif f.transport is not None:
        where.append(Challenge.group_transport == f.transport)
    if f.stake_source is not None:
        where.append(Challenge.stake_source == f.stake_source)
    if f.since is not None:
        where.append(Challenge.created_at >= f.since)
    if f.campaign_id is not None:
        where.append(Challenge.sponsor_campaign_id == f.campaign_id)
    if f.user_id is not None:
        joined = select(ChallengeParticipant.challenge_id).where(ChallengeParticipant.user_id == f.user_id)
        where.append(Challenge.id.in_(joined))
    counts = dict(
        db.session.execute(select(Challenge.status, func.count()).where(*where).group_by(Challenge.status)).all()
    )
    if f.status is not None:
        where.append(Challenge.status == f.status)
    items = db.session.execute(
        select(Challenge).where(*where).order_by(Challenge.id.desc()).limit(f.limit).offset(f.offset)
    ).scalars()
    total = counts.get(f.status, 0) if f.status is not None else sum(counts.values())
    platform = merchant_id is None
    return {
        "counts": {"status": {k: int(v) for k, v in sorted(counts.items())}},
        "total": int(total),
        "items": [challenge_summary(c, platform=platform, mask=mask) for c in items],
    }


def challenge_summary(c: Challenge, *, platform: bool = True, mask: Mask = str) -> dict:
    last_day = period(c.start_day, c.days)[-1]
    return {
        "id": c.id,
        "kind": c.kind,
        "title": c.title,
        "status": c.status,
        "rule": c.rule,
        "goal": c.goal,
        "start_day": c.start_day.isoformat(),
        "last_day": last_day.isoformat(),
        "days": c.days,
        "participants": c.participants,
        "max_participants": c.max_participants,
        "stake_source": c.stake_source,
        "stake": c.stake,
        "stake_unit": "point" if c.stake_source == StakeSource.POINTS else "fen",
        "prize_fen": c.prize_fen,
        "sponsor_campaign_id": c.sponsor_campaign_id,
        "direction": c.direction,
        "creator_id": c.creator_id,
        "group_transport": c.group_transport,
        "group_id": mask(c.group_id) if c.group_id and platform else None,
        "join_deadline": c.join_deadline.isoformat(),
        "report_deadline": c.report_deadline.isoformat(),
        "created_at": c.created_at.isoformat(),
        "settled_at": _iso(c.settled_at),
    }


# --- one challenge --------------------------------------------------------------------------------


def challenge_detail(challenge: Challenge, now: datetime, *, platform: bool = True, mask: Mask = str) -> dict:
    """Everything an operator needs to answer "why did I lose / where is my packet" about one challenge."""
    table = standings(challenge.id, now)
    members = list(
        db.session.execute(
            select(ChallengeParticipant)
            .where(ChallengeParticipant.challenge_id == challenge.id)
            .order_by(ChallengeParticipant.user_id)
        ).scalars()
    )
    user_ids = [p.user_id for p in members]
    days = period(challenge.start_day, challenge.days)
    counted = set(table.counted_days)
    standing = {row.user_id: row for row in table.rows}
    cells = _day_cells(challenge, user_ids, days, now, platform) if challenge.kind != ChallengeKind.QUIZ else {}
    names = _names(user_ids) if platform else {}
    openids = _openids(user_ids, mask) if platform else {}
    participants = []
    for p in members:
        row = standing.get(p.user_id)
        participants.append(
            {
                "user_id": p.user_id,
                "name": names.get(p.user_id),
                "openids": openids.get(p.user_id, []),
                "stake": p.stake,
                "joined_at": p.joined_at.isoformat(),
                "total": p.total,  # as settled
                "result": p.result,
                "standing_total": row.total if row else 0,  # as it stands now
                "rank": row.rank if row else None,
                "days_counted": row.days_counted if row else 0,
                "days": [cells[p.user_id, day] for day in days] if cells else [],
            }
        )
    prizes = _prizes(challenge.id)
    detail = {
        "challenge": challenge_summary(challenge, platform=platform, mask=mask),
        "participants": participants,
        "days": [
            {"day": day.isoformat(), "ended": now >= day_end(day), "counted": day in counted}
            for day in (days if challenge.kind != ChallengeKind.QUIZ else [])
        ],
        "quiz": _quiz(challenge, platform) if challenge.kind == ChallengeKind.QUIZ else None,
        "settlement": {
            "status": challenge.status,
            "settled_at": _iso(challenge.settled_at),
            "decided": table.decided,
            "winners": table.winners,
            "waiting": table.waiting,
            "counted_days": [d.isoformat() for d in table.counted_days],
            "missing_counts_as_zero": table.missing_counts_as_zero,
            "outcome": challenge.outcome,
        },
        "prizes": prizes,
        "ledger": _ledger(_ledger_keys(challenge.id, user_ids, prizes)) if platform else None,
        "notices": _notices(challenge.id, user_ids) if platform else None,
    }
    detail["trace"] = {
        "users": user_ids,
        "packets": [p["packet"]["id"] for p in prizes if p["packet"]],
        "orders": sorted({p["packet"]["order_id"] for p in prizes if p["packet"] and p["packet"]["order_id"]}),
        "campaigns": sorted({p["campaign_id"] for p in prizes if p["campaign_id"]}),
    }
    return detail


def _day_cells(challenge: Challenge, user_ids: list[int], days: list, now: datetime, platform: bool) -> dict:
    """(user, day) → {"day", "status", "value", "counts", "flag", "uploaded_at"}.

    ``status``: ``open`` (the day has not ended), ``arrived`` (final: uploaded after the day ended, or a
    reading day that ended), ``partial`` (only an upload made during the day: not final), ``missing`` (no
    data), ``flagged`` (risk: counts as zero). ``counts``: what the domain counts for it."""
    if not user_ids:
        return {}
    data = daily_data(challenge, user_ids, days, now)
    raw = {}
    if challenge.kind == ChallengeKind.STEPS:
        rows = db.session.execute(
            select(StepDay).where(StepDay.user_id.in_(user_ids), StepDay.day >= days[0], StepDay.day <= days[-1])
        ).scalars()
        raw = {(r.user_id, r.day): r for r in rows}
    out = {}
    for uid in user_ids:
        for day in days:
            d, row = data[uid, day], raw.get((uid, day))
            value = row.steps if row is not None else d.value
            if d.flagged:
                status = "flagged"
            elif now < day_end(day):
                status = "open"
            elif d.arrived:
                status = "arrived"
            elif row is not None:
                status = "partial"
            else:
                status = "missing"
            out[uid, day] = {
                "day": day.isoformat(),
                "status": status,
                "value": None if status == "flagged" and not platform else value,
                "counts": d.value,
                "flag": (d.flagged if platform else None) if d.flagged else None,
                "uploaded_at": _iso(row.uploaded_at) if row is not None else None,
            }
    return out


def _quiz(challenge: Challenge, platform: bool) -> dict:
    questions = db.session.execute(select(func.count()).where(QuizQuestion.challenge_id == challenge.id)).scalar_one()
    attempts = db.session.execute(
        select(QuizAttempt).where(QuizAttempt.challenge_id == challenge.id).order_by(QuizAttempt.user_id)
    ).scalars()
    return {
        "questions": int(questions),
        "seconds": challenge.quiz_seconds,
        "attempts": [
            {
                "user_id": a.user_id,
                "started_at": a.started_at.isoformat(),
                "ends_at": a.ends_at.isoformat(),
                "submitted_at": _iso(a.submitted_at),
                "score": a.score,
            }
            for a in attempts
        ],
    }


def _prizes(challenge_id: int) -> list[dict]:
    """Settlement's prizes, each with its packet (and the order it was spent on), the rebates the packet
    triggered (the payer's, as its issuer) and what of a stake-funded packet went back to its payer."""
    prizes = list(
        db.session.execute(
            select(ChallengePrize).where(ChallengePrize.challenge_id == challenge_id).order_by(ChallengePrize.id)
        ).scalars()
    )
    packet_ids = [p.packet_id for p in prizes if p.packet_id is not None]
    packets, discounts, rebates = {}, {}, {}
    if packet_ids:
        packets = {p.id: p for p in db.session.execute(select(RedPacket).where(RedPacket.id.in_(packet_ids))).scalars()}
        for packet_id, order_id, discount in db.session.execute(
            select(OrderPacket.packet_id, OrderPacket.order_id, OrderPacket.discount_fen).where(
                OrderPacket.packet_id.in_(packet_ids)
            )
        ).all():
            discounts[packet_id] = (order_id, int(discount))
        for r in db.session.execute(
            select(Rebate).where(Rebate.packet_id.in_(packet_ids)).order_by(Rebate.id)
        ).scalars():
            rebates.setdefault(r.packet_id, []).append(
                {
                    "id": r.id,
                    "order_id": r.order_id,
                    "role": r.role,
                    "beneficiary_type": r.beneficiary_type,
                    "beneficiary_id": r.beneficiary_id,
                    "form": r.form,
                    "status": r.status,
                    "amount_fen": r.amount_fen,
                    "held_fen": r.held_fen,
                    "points_credited": r.points,
                }
            )
    out = []
    for p in prizes:
        packet = packets.get(p.packet_id) if p.packet_id is not None else None
        order_id, discount = discounts.get(p.packet_id, (None, None))
        out.append(
            {
                "id": p.id,
                "payer_user_id": p.payer_user_id,  # None: the sponsor's campaign paid
                "payee_user_id": p.payee_user_id,
                "amount": p.amount,
                "unit": "fen" if packet is not None or p.payer_user_id is None else "point",
                "campaign_id": p.campaign_id,
                "packet": None
                if packet is None
                else {
                    "id": packet.id,
                    "status": packet.status,
                    "amount_fen": packet.amount_fen,
                    "owner_id": packet.owner_id,
                    "issuer_user_id": packet.issuer_user_id,
                    "expires_at": _iso(packet.expires_at),
                    "used_at": _iso(packet.used_at),
                    "order_id": order_id if order_id is not None else packet.order_id,
                    "discount_fen": discount,
                },
                "rebates": rebates.get(p.packet_id, []),
                "returned_fen": p.returned_fen,
                "closed": p.closed,
                "created_at": p.created_at.isoformat(),
            }
        )
    return out


def _ledger_keys(challenge_id: int, user_ids: list[int], prizes: list[dict]) -> list[str]:
    """Every key the domain posts a challenge's movements under (``challenges.stakes``, ``challenges.sweep``):
    looked up exactly, so the unique index finds them (a ``LIKE 'challenge:N:%'`` would read the whole ledger
    on PostgreSQL, whose default collation gives a prefix no index)."""
    head = f"challenge:{challenge_id}"
    keys = []
    for uid in user_ids:
        keys += [f"{head}:stake:{uid}", f"{head}:release:{uid}:settled", f"{head}:release:{uid}:cancelled"]
    for p in prizes:
        if p["payer_user_id"] is None:
            continue
        keys.append(f"{head}:prize:{p['payer_user_id']}:{p['payee_user_id']}")
        if p["packet"] is not None:
            packet = p["packet"]["id"]
            keys += [f"{head}:release:{p['payer_user_id']}:packet:{packet}:{why}" for why in SWEEP_WHYS]
    return keys


SWEEP_WHYS = ("unused", "rest", "refunded")  # what a sweep gives back of an ended packet (challenges.sweep)


def _ledger(keys: list[str]) -> list[dict]:
    """The entries of the challenge (stakes reserved and released, points transferred), oldest first."""
    if not keys:
        return []
    entries = db.session.execute(
        select(LedgerEntry)
        .where(LedgerEntry.idempotency_key.in_(keys))
        .options(selectinload(LedgerEntry.postings).selectinload(LedgerPosting.account))
        .order_by(LedgerEntry.id)
    ).scalars()
    return [
        {
            "id": e.id,
            "key": e.idempotency_key,
            "memo": e.memo,
            "unit": e.unit,
            "created_at": e.created_at.isoformat(),
            "postings": [{"account": p.account.code, "amount": p.amount} for p in e.postings],
        }
        for e in entries
    ]


def _notices(challenge_id: int, user_ids: list[int]) -> list[dict]:
    """What settlement or a cancellation told each participant (keyed as ``challenges.settle`` keys them)."""
    events = (NoticeEvent.CHALLENGE_SETTLED, NoticeEvent.CHALLENGE_CANCELLED)
    keys = [f"challenge:{challenge_id}:{uid}:{event.value}" for uid in user_ids for event in events]
    if not keys:
        return []
    rows = db.session.execute(select(Notice).where(Notice.key.in_(keys)).order_by(Notice.id)).scalars()
    return [
        {
            "id": n.id,
            "user_id": n.user_id,
            "event": n.event,
            "status": n.status,
            "channel": n.channel,
            "sent_at": _iso(n.sent_at),
            "created_at": n.created_at.isoformat(),
        }
        for n in rows
    ]


def _names(user_ids: list[int]) -> dict[int, str | None]:
    return dict(db.session.execute(select(User.id, User.nickname).where(User.id.in_(user_ids))).all())


def _openids(user_ids: list[int], mask: Mask) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    rows = db.session.execute(
        select(UserIdentity.user_id, UserIdentity.openid)
        .where(UserIdentity.user_id.in_(user_ids))
        .order_by(UserIdentity.id)
    ).all()
    for uid, openid in rows:
        found.setdefault(uid, []).append(mask(openid))
    return found


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None
