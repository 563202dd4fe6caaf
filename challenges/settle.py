"""Settlement, exactly once: the challenge's row is locked (``SKIP LOCKED``: another node has it, we move on)
and its status moves in the same transaction as every ledger entry, packet and notice, each keyed by the
challenge. A crash rolls the whole settlement back and the next pass does it again; a second node finds it
settled and does nothing.

Money (docs/architecture.md §16): winners' stakes go back to them; each loser's stake funds a red
packet *issued by the loser* to each winner (split evenly among tied winners, rounding down; the remainder
returns to the loser), through a campaign funded by the loser's stake (``FunderType.USER_STAKE``), so the
normal two-way rebate applies when the winner spends it. A quiz reverses the direction (winners' stakes fund
the losers' packets). A points stake moves as points (nothing to spend at a merchant). A sponsor challenge
pays its prize as packets of the sponsor's campaign, split evenly (rounding down); the outcome accounts for every
fen of it: ``prizes`` paid, ``refused`` (the campaign said no, or a share under one fen), ``withheld`` (a banned
winner) and the ``remainder`` the sponsor keeps (the whole prize when nobody won it). Nobody losing (all tied,
nobody reached the goal) releases every stake; a sponsor's ``first_to_goal`` that everyone reached on the same day
is won by all of them (the prize needs no loser), while everyone equal under ``highest_total`` wins nothing.
Fewer than two by the join deadline cancels the challenge and releases every stake.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from challenges import stakes
from challenges.operations import current_settings, participants_of
from challenges.spec import ChallengeSettings
from challenges.standings import standings
from models import (
    Campaign,
    CampaignRules,
    CampaignStatus,
    Challenge,
    ChallengeKind,
    ChallengePrize,
    ChallengeStatus,
    Direction,
    FunderType,
    IssuerType,
    StakeSource,
    User,
    UserStatus,
    WinRule,
    db,
)
from notices import Draft, NoticeEvent, enqueue_many
from rebate.errors import RebateError
from rebate.packets import STAKE_SOURCE, issue_packet
from rebate.rules import Form
from rebate.tell import packet_received
from risk import Claimant, ClaimGate, ClaimLimits, LimitHit, PlatformLimits, campaign_slots

SOURCE = STAKE_SOURCE  # the packets' source; source_ref names (challenge, payer, payee)


def due_challenges(now: datetime, limit: int = 100, after: int = 0) -> list[int]:
    """Challenges whose joining has closed and that are not finished yet (settlement decides if it can), after
    id ``after``: page on with the last id, as a running challenge stays due (and first) for its whole period."""
    return list(
        db.session.execute(
            select(Challenge.id)
            .where(
                Challenge.id > after,
                Challenge.status.in_([ChallengeStatus.OPEN, ChallengeStatus.RUNNING]),
                Challenge.join_deadline <= now,
            )
            .order_by(Challenge.id)
            .limit(limit)
        ).scalars()
    )


def settle_due(now: datetime, *, settings: ChallengeSettings | None = None) -> int:
    """Settle (or start, or cancel) every due challenge in the caller's transaction; how many were settled or
    cancelled. The job instead settles one challenge per transaction (jobs/challenges.py)."""
    done, after = 0, 0
    while ids := due_challenges(now, after=after):
        done += sum(1 for cid in ids if settle_challenge(cid, now, settings=settings))
        after = ids[-1]
    return done


def settle_challenge(challenge_id: int, now: datetime, *, settings: ChallengeSettings | None = None) -> bool:
    """Move a due challenge on: cancel it (too few), start it, settle it once its data decide it. True when
    this call settled or cancelled it; False when there was nothing to do yet, it was done, or another node
    holds it."""
    settings = settings or current_settings()
    challenge = db.session.execute(
        select(Challenge)
        .where(Challenge.id == challenge_id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if challenge is None or challenge.status in (ChallengeStatus.SETTLED, ChallengeStatus.CANCELLED):
        return False
    if now < challenge.join_deadline:
        return False
    if challenge.participants < 2:
        _cancel(challenge, now)
        return True
    challenge.status = ChallengeStatus.RUNNING
    table = standings(challenge_id, now)
    if not table.decided:
        db.session.flush()
        return False
    _settle(challenge, table, now, settings)
    return True


def _cancel(challenge: Challenge, now: datetime) -> None:
    drafts = []
    for p in participants_of(challenge.id):
        if challenge.stake_source != StakeSource.SPONSOR:
            stakes.release(challenge.id, challenge.stake_source, p.user_id, p.stake, "cancelled")
        drafts.append(_told(challenge, p.user_id, NoticeEvent.CHALLENGE_CANCELLED, "cancelled", p.stake))
    challenge.status, challenge.settled_at = ChallengeStatus.CANCELLED, now
    challenge.outcome = {"cancelled": "fewer than two joined by the join deadline"}
    enqueue_many(drafts)
    db.session.flush()


def _settle(challenge: Challenge, table, now: datetime, settings: ChallengeSettings) -> None:
    members = participants_of(challenge.id)
    winners = set(table.winners)
    losers = {p.user_id for p in members} - winners if winners else set()
    if challenge.direction == Direction.WINNER_TO_LOSER and challenge.stake_source != StakeSource.SPONSOR:
        payers, payees = winners, losers  # (a quiz's stakes; a sponsor's prize always goes to the winners)
    else:
        payers, payees = losers, winners
    if not losers:
        payers, payees = set(), set()
        if challenge.stake_source == StakeSource.SPONSOR and winners and challenge.rule == WinRule.FIRST_TO_GOAL:
            # everyone reached the sponsor's goal on the same day: each of them won it (a stake needs a loser to
            # pay; a sponsor's prize does not). Everyone equal under ``highest_total`` wins nothing: equal totals
            # (all zero, say) meet no goal of the sponsor's.
            payees = winners
    totals = {row.user_id: row.total for row in table.rows}
    prizes, received, withheld = [], dict.fromkeys(totals, 0), []
    banned = _banned(payees)
    for p in members:
        p.total = totals[p.user_id]
        p.result = ("tied" if len(winners) > 1 else "won") if p.user_id in winners else ("lost" if losers else "tied")
        if challenge.stake_source == StakeSource.SPONSOR:
            continue
        paid = (
            _pay_from(challenge, p.user_id, p.stake, sorted(payees), banned, now, settings)
            if p.user_id in payers
            else []
        )
        for payee, amount in paid:
            if payee in banned:
                withheld.append({"from": p.user_id, "to": payee, "amount": amount, "why": "banned"})
                continue
            prizes.append({"from": p.user_id, "to": payee, "amount": amount})
            received[payee] += amount
        paid = [(payee, amount) for payee, amount in paid if payee not in banned]
        given = sum(amount for _, amount in paid)
        stakes.release(challenge.id, challenge.stake_source, p.user_id, p.stake - given, "settled")
    refused: list[dict] = []
    remainder = None
    if challenge.stake_source == StakeSource.SPONSOR:
        remainder = challenge.prize_fen  # nobody won it: the sponsor keeps the whole prize (and the outcome says so)
    if challenge.stake_source == StakeSource.SPONSOR and payees:
        share, remainder = divmod(challenge.prize_fen, len(payees))  # rounding down: the sponsor keeps the rest
        for payee in sorted(banned):
            withheld.append({"from": None, "to": payee, "amount": share, "why": "banned"})
        for payee, amount in _sponsor_prizes(challenge, sorted(payees), share, banned, now, refused):
            prizes.append({"from": None, "to": payee, "amount": amount})
            received[payee] += amount
    challenge.status, challenge.settled_at = ChallengeStatus.SETTLED, now
    outcome = {
        "winners": sorted(winners),
        "totals": {str(u): t for u, t in sorted(totals.items())},
        "prizes": prizes,
        "counted_days": [d.isoformat() for d in table.counted_days],
        "refused": refused,
        "withheld": withheld,
    }
    if remainder is not None:  # a sponsor's prize: paid + refused + withheld + remainder is the whole prize
        outcome["remainder"] = remainder
    challenge.outcome = outcome
    enqueue_many(
        [_told(challenge, p.user_id, NoticeEvent.CHALLENGE_SETTLED, p.result, received[p.user_id]) for p in members]
    )
    db.session.flush()


def _banned(people: set[int]) -> set[int]:
    """Who of ``people`` is banned now: a banned person claims nothing, earns nothing."""
    if not people:
        return set()
    return set(
        db.session.execute(select(User.id).where(User.id.in_(people), User.status != UserStatus.ACTIVE)).scalars()
    )


def _pay_from(
    challenge: Challenge,
    payer: int,
    stake: int,
    payees: list[int],
    banned: set[int],
    now: datetime,
    settings: ChallengeSettings,
) -> list[tuple[int, int]]:
    """The payer's stake split among the payees (rounding down): a packet each (points: a transfer). A banned
    payee's share is listed but nothing moves to them: the caller releases it back to the payer."""
    share = stake // len(payees) if payees else 0
    if share <= 0:
        return []
    paying = [payee for payee in payees if payee not in banned]
    withheld = [(payee, share) for payee in payees if payee in banned]
    if not paying:
        return withheld
    if challenge.stake_source == StakeSource.POINTS:
        for payee in paying:
            stakes.transfer_points(challenge.id, payer, payee, share)
            db.session.add(
                ChallengePrize(challenge_id=challenge.id, payer_user_id=payer, payee_user_id=payee, amount=share)
            )
        return [(payee, share) for payee in paying] + withheld
    campaign = _loser_campaign(challenge, payer, share, now, settings)
    drafts = []
    for payee in paying:
        owner = db.session.get(User, payee)
        packet = issue_packet(
            campaign, owner, source=SOURCE, source_ref=f"{challenge.id}:{payer}:{payee}", now=now, face_fen=share
        )
        drafts.append(_prize(challenge, payer, payee, share, campaign, packet, now))
    enqueue_many(drafts)
    return [(payee, share) for payee in paying] + withheld


def _loser_campaign(
    challenge: Challenge, payer: int, share: int, now: datetime, settings: ChallengeSettings
) -> Campaign:
    """The payer's packets of this challenge: issued by them, their face value from their stake; the rebate
    they earn back when a packet is spent (``loser_rebate_bps`` of what the spender paid, capped at half the
    packet's value: losing still costs something) is the platform's marketing: as balance ("change"), or as
    points ("reading credit") for a reading challenge."""
    form = Form.POINTS if challenge.kind == ChallengeKind.READING else Form.BALANCE
    campaign = Campaign(
        name=f"challenge {challenge.id} · a loser's packets",  # public (its rules page): never a person's id
        status=CampaignStatus.ACTIVE,
        issuer_type=IssuerType.USER,
        issuer_user_id=payer,
        funder_type=FunderType.USER_STAKE,
        funder_user_id=payer,
        packet_amount_fen=share,
        packet_valid_days=settings.packet_valid_days,
        created_at=now,
    )
    db.session.add(campaign)
    db.session.flush()
    issuer = {"role": "issuer", "rate_bps": settings.loser_rebate_bps, "form": form, "cap_fen": max(share // 2, 1)}
    rules = {"roles": [issuer]}
    db.session.add(CampaignRules(campaign_id=campaign.id, version=1, rules=rules, created_at=now))
    db.session.flush()
    return campaign


def _sponsor_prizes(
    challenge: Challenge, payees: list[int], share: int, banned: set[int], now: datetime, refused: list[dict]
) -> list[tuple[int, int]]:
    """The sponsor's prize, ``share`` to each payee (the caller's even split), as packets of its campaign (its
    budget and limits apply); a packet the campaign refuses is recorded in ``refused`` (the settlement still
    completes: the people's results stand, and the sponsor's failure to pay is on the record for an operator)."""
    campaign = db.session.get(Campaign, challenge.sponsor_campaign_id)
    out, drafts = [], []
    for payee in payees:
        if payee in banned:  # a banned winner gets nothing (recorded as withheld by the caller)
            continue
        if share <= 0 or campaign is None:  # the prize split to less than a fen each, or no campaign: on the record
            why = "share_below_one_fen" if share <= 0 else "campaign_not_found"
            refused.append({"to": payee, "amount": share, "refused": why})
            continue
        owner = db.session.get(User, payee)
        try:
            with db.session.begin_nested():  # the sponsor's budget, deposit, validity or claim limits may refuse one
                packet = issue_packet(
                    campaign,
                    owner,
                    source=SOURCE,
                    source_ref=f"{challenge.id}:sponsor:{payee}",
                    now=now,
                    face_fen=share,
                    gate=_sponsor_gate(campaign, payee, now),
                )
        except (RebateError, LimitHit) as exc:
            refused.append({"to": payee, "amount": share, "refused": exc.code})
            continue
        drafts.append(_prize(challenge, None, payee, share, campaign, packet, now, closed=True))
        out.append((payee, share))
    enqueue_many(drafts)
    return out


def _sponsor_gate(campaign: Campaign, payee: int, now: datetime) -> ClaimGate:
    """The sponsor's own claim limits for the payee (per person, interval, …), as a self-serve claim of the same
    campaign would take them: a challenge is no way round "one per person". The platform-wide limits of a
    request (address, device) do not apply: nobody is at a counter."""
    claimant = Claimant(payee)
    slots = campaign_slots(
        ClaimLimits.parse(campaign.claim_limits), campaign_id=campaign.id, claimant=claimant, now=now
    )
    return ClaimGate(claimant, PlatformLimits.off(), slots)


def _told(challenge: Challenge, user_id: int, event: NoticeEvent, result: str | None, amount: int) -> Draft:
    """The person's notice, in the stake's unit: a points stake tells of points (its own templates), never of
    yuan. The key stays the cash event's, so one notice per (challenge, person, event) whatever the unit."""
    key = f"challenge:{challenge.id}:{user_id}:{event.value}"
    facts = {"challenge_id": challenge.id, "title": challenge.title, "result": RESULT_WORDS.get(result or "", "平局")}
    if challenge.stake_source == StakeSource.POINTS:
        event, facts["points"] = POINTS_EVENTS[event], amount
    else:
        facts["amount_fen"] = amount
    return Draft(user_id=user_id, event=event, key=key, facts=facts, page=f"pages/challenges/detail?id={challenge.id}")


POINTS_EVENTS = {
    NoticeEvent.CHALLENGE_SETTLED: NoticeEvent.CHALLENGE_POINTS_SETTLED,
    NoticeEvent.CHALLENGE_CANCELLED: NoticeEvent.CHALLENGE_POINTS_CANCELLED,
}


RESULT_WORDS = {"won": "获胜", "lost": "未获胜", "tied": "并列", "cancelled": "已取消"}


def _prize(challenge, payer, payee, share, campaign, packet, now, *, closed=False):
    """The prize's row (a sponsor's, ``payer`` None, is closed: nothing of it returns to anyone) and the
    payee's "packet received" notice draft."""
    db.session.add(
        ChallengePrize(
            challenge_id=challenge.id,
            payer_user_id=payer,
            payee_user_id=payee,
            amount=share,
            campaign_id=campaign.id,
            packet_id=packet.id,
            closed=closed,
            created_at=now,
        )
    )
    return packet_received(packet)
