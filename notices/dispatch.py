"""The notices dispatcher's steps: claim due notices, choose each one's channel, record WeChat's answer.

The steps never commit and never call WeChat: the job (``jobs.notices``) commits the claim, calls WeChat with
no transaction open, then records each answer and commits (the shape of ``models.call_between_commits``).

Claims take ``FOR UPDATE SKIP LOCKED`` rows and a lease, so several dispatchers share the work. Channels, in
the person's order of reach: the mini-program subscribe message when a consent for the event's template is
left (taken at claim, once: a retry reuses it), else the official account's template message when the person
follows the OA, else the in-app inbox only (every notice is in the inbox whatever its channel).

Never twice: neither WeChat API can be asked afterwards whether a message went out. A notice found ``sending``
after its lease lapsed (its worker died between the call and the record) is sent only if WeChat's
``subscribe_msg_sent_event`` told us its msgid meanwhile (``notices.consents``); otherwise it goes to the
inbox with a note, never to WeChat again by another pass; the worker still holding it (a slow call, a long wait
for a turn) applies its own answer when it comes, since it alone called: put back when it never called, retried or
refused when WeChat certainly did not send it. Anti-spam: at most ``daily_cap`` messages per person per Beijing
day through WeChat (a transfer waiting for confirmation is exempt: money is at stake); the rest: inbox only.

Quiet hours (``NOTICE_QUIET_HOURS``, Beijing time): a notice whose turn comes then is left pending until they end (a
subscribe retry keeps the consent it holds), so it goes out once, in the morning; one about something over by then
(``OVER_AT``: a packet's expiry, a transfer's closing) stays in the inbox only. ``events.URGENT`` kinds go at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, func, or_, select

from models import (
    Notice,
    NoticeStatus,
    PacketStatus,
    Payout,
    PayoutStatus,
    RedPacket,
    User,
    UserIdentity,
    UserStatus,
    alert_once,
    db,
)
from models.base import BEIJING, beijing
from models.messages import following_openid, record_follow
from notices.consents import OUTCOME_UNKNOWN, drop_consents, give_back_consent, record_delivery, take_consent
from notices.events import FIRST_TOLD, URGENT, NoticeEvent
from notices.quiet import QuietHours
from notices.templates import TemplateError, Templates, render_data

S = NoticeStatus
MONEY_CRITICAL = frozenset({NoticeEvent.TRANSFER_TO_CONFIRM, NoticeEvent.TRANSFER_REMINDER})
NOT_FOLLOWING = "43004"  # WeChat's answer to an official-account message for a person who no longer follows
UNKNOWN_OUTCOME = (
    f"{OUTCOME_UNKNOWN} (the lease lapsed between the call and its record): kept in the inbox, not sent again"
)


OVER_AT = ("expires_at", "closes_at")  # facts saying when what a notice tells of is over


class ChannelName(StrEnum):
    SUBSCRIBE = "subscribe"
    OA_TEMPLATE = "oa_template"
    INBOX = "inbox"


class Answer(StrEnum):
    OK = "ok"
    CONSENT_GONE = "consent_gone"  # 43101
    REFUSED = "refused"  # 47003 / 41030 / …: never retried
    RETRY = "retry"  # certainly not sent: -1 (system busy), quota / frequency, no connection made
    UNKNOWN = "unknown"  # a read timeout, a 5xx, an answer we cannot read: WeChat may have sent it


@dataclass(frozen=True)
class NoticeSettings:
    mp_appid: str = ""
    oa_appid: str = ""
    lease: timedelta = timedelta(seconds=60)
    batch: int = 50
    daily_cap: int = 3
    max_attempts: int = 6
    backoff: timedelta = timedelta(seconds=30)
    backoff_most: timedelta = timedelta(hours=1)
    miniprogram_state: str = "formal"
    quiet: QuietHours | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> NoticeSettings:
        simulator = cfg.get("WECHAT_MODE") == "simulator"
        return cls(
            mp_appid=cfg.get("WECHAT_APPID") or "",
            oa_appid=cfg.get("WECHAT_OA_APPID") or "",
            daily_cap=int(cfg.get("NOTICE_DAILY_CAP", 3)),
            miniprogram_state="developer" if simulator else "formal",
            quiet=QuietHours.of(cfg),
        )


@dataclass(frozen=True)
class Claimed:
    """What the call needs, fixed at claim (plain values: the call touches no row)."""

    notice_id: int
    user_id: int
    channel: str
    touser: str
    template_id: str
    data: dict
    page: str | None
    claimed_at: datetime | None = None  # the call came after this


# -- who can be reached how -----------------------------------------------------------------------


def follows_official_account(user_id: int, oa_appid: str) -> str | None:
    """The person's OA openid while they follow the OA (follow / unfollow from message push,
    ``models.messages``), else None: an OA template message reaches only a follower."""
    if not oa_appid:
        return None
    return following_openid(user_id, oa_appid)


def _mp_openid(user_id: int, mp_appid: str) -> str | None:
    return db.session.execute(
        select(UserIdentity.openid).where(UserIdentity.user_id == user_id, UserIdentity.appid == mp_appid)
    ).scalar_one_or_none()


def _instant(text: object) -> datetime | None:
    """An aware instant written by ``isoformat`` in a notice's facts; None when there is none to read."""
    try:
        at = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return at if at is None or at.tzinfo is not None else at.replace(tzinfo=UTC)


def still_true(notice: Notice, now: datetime) -> bool:
    """Whether what the notice tells of still holds when its turn comes (a reminder of a settled fact is noise)."""
    facts = notice.facts or {}
    if notice.event in (NoticeEvent.TRANSFER_REMINDER, NoticeEvent.TRANSFER_TO_CONFIRM) and facts.get("payout_id"):
        status = db.session.execute(select(Payout.status).where(Payout.id == int(facts["payout_id"]))).scalar()
        if status not in (PayoutStatus.WAITING_USER_CONFIRM, PayoutStatus.SENDING, PayoutStatus.UNKNOWN):
            return False
        # "confirm before …" past that time: WeChat closed the bill (its money comes back, told apart), nothing to tap
        closes = _instant(facts.get("closes_at"))
        return closes is None or closes > now
    if notice.event in (NoticeEvent.PACKET_EXPIRING, NoticeEvent.PACKET_RECEIVED) and facts.get("packet_id"):
        packet = db.session.execute(
            select(RedPacket.status, RedPacket.expires_at, User.status.label("owner_status"))
            .outerjoin(User, User.id == RedPacket.owner_id)
            .where(RedPacket.id == int(facts["packet_id"]))
        ).first()
        if packet is None:  # no such packet (packets are never deleted): "received" is told as written
            return notice.event == NoticeEvent.PACKET_RECEIVED
        # both say "use it before …": not for a packet revoked or expired meanwhile (the sweep marks it within
        # minutes), nor for an owner banned meanwhile (they cannot sign in to use it)
        if packet.expires_at <= now or packet.owner_status == UserStatus.BANNED:
            return False
        if notice.event == NoticeEvent.PACKET_RECEIVED:
            return packet.status not in (PacketStatus.REVOKED, PacketStatus.EXPIRED)
        return packet.status in (PacketStatus.ISSUED, PacketStatus.UNCLAIMED)  # "expires soon": still unused
    return True


def _quiet_now(notice: Notice, now: datetime, settings: NoticeSettings) -> bool:
    return settings.quiet is not None and notice.event not in URGENT and settings.quiet.covers(now)


def over_by(notice: Notice, at: datetime) -> bool:
    """Whether what the notice tells of is over by ``at`` (a packet expired, a transfer closed): no use then."""
    facts = notice.facts or {}
    ends = [end for end in (_instant(facts.get(name)) for name in OVER_AT) if end is not None]
    return any(end <= at for end in ends)


def _sent_today(user_id: int, now: datetime) -> int:
    local = beijing(now)
    start = datetime.combine(local.date(), datetime.min.time(), BEIJING)
    outside = Notice.channel.in_([ChannelName.SUBSCRIBE, ChannelName.OA_TEMPLATE])
    return db.session.execute(
        select(func.count())
        .select_from(Notice)
        .where(
            Notice.user_id == user_id,
            outside,
            or_(
                and_(Notice.status == S.SENT, Notice.sent_at >= start),
                Notice.status == S.SENDING,
                # a subscribe message waiting for its retry holds its consent and is sent past the cap when due
                # (``_decide``): it keeps the place it took when first claimed
                and_(Notice.status == S.PENDING, Notice.channel == ChannelName.SUBSCRIBE),
            ),
        )
    ).scalar_one()


# -- claim ---------------------------------------------------------------------------------------


def _due(now: datetime, batch: int):
    due = or_(
        and_(Notice.status == S.PENDING, Notice.next_attempt_at <= now),
        and_(Notice.status == S.SENDING, Notice.lease_until < now),
    )
    return (
        select(Notice)
        .where(due)
        .order_by(Notice.next_attempt_at, Notice.id)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )


def _to_inbox(notice: Notice, now: datetime, note: str | None = None) -> None:
    """Terminal: the inbox keeps it; ``channel`` keeps the channel tried (if any), else says inbox."""
    notice.status, notice.lease_until = S.INBOX, None
    notice.channel = notice.channel or ChannelName.INBOX
    if note:
        notice.last_error = note[:2000]


_RANK = {event: rank for rank, event in enumerate(FIRST_TOLD)}


def _rank(event: str) -> int:
    """The event's place in ``FIRST_TOLD`` (any other kind after them all)."""
    return _RANK.get(event, len(_RANK))


def held_until(morning: datetime, event: str) -> datetime:
    """When a notice held by the quiet hours falls due: their end, plus a second per place in ``FIRST_TOLD``, so the
    morning's pick (by time, a batch at a time) meets what matters most first whichever batch a person's fall in."""
    return morning + timedelta(seconds=_rank(event))


def _told_first(notice: Notice) -> tuple[int, datetime, int]:
    return _rank(notice.event), notice.next_attempt_at, notice.id


def claim(now: datetime, templates: Templates, settings: NoticeSettings) -> list[Claimed]:
    """Claim due notices (the caller commits before any call): each decided now or fixed for one call."""
    return claim_batch(now, templates, settings)[0]


def claim_batch(now: datetime, templates: Templates, settings: NoticeSettings) -> tuple[list[Claimed], int]:
    """``claim``, also saying how many due rows it took (some decided at once): go on while it finds any."""
    claimed = []
    due = db.session.execute(_due(now, settings.batch)).scalars().all()
    capped = sorted({n.user_id for n in due if n.event not in MONEY_CRITICAL})
    if capped:  # the daily cap counts what each person was sent: two dispatchers claim for one person in turn
        db.session.execute(
            select(User.id).where(User.id.in_(capped)).order_by(User.id).with_for_update(key_share=True)
        ).all()
    # the daily cap's places go to what matters most first (several due at once: the morning after quiet hours)
    for notice in sorted(due, key=_told_first):
        job = _claim_one(notice, now, templates, settings)
        if job is not None:
            claimed.append(job)
    db.session.flush()
    return claimed, len(due)


def _claim_one(notice: Notice, now: datetime, templates: Templates, settings: NoticeSettings) -> Claimed | None:
    if notice.status == S.SENDING:  # its worker died mid-call; WeChat's sent event would have made it sent
        lease = notice.lease_until
        _to_inbox(notice, now, UNKNOWN_OUTCOME)
        notice.lease_until = lease  # about when it was called: WeChat's sent event, handled later, still settles it
        return None
    # a consent taken by an earlier attempt that WeChat certainly did not use (its answer said so, or no call)
    held = notice.template_id if notice.channel == ChannelName.SUBSCRIBE and notice.template_id else None
    if _quiet_now(notice, now, settings) and still_true(notice, now):
        morning = settings.quiet.end_after(now)
        if not over_by(notice, morning):
            notice.next_attempt_at = held_until(morning, notice.event)  # left pending as it is (a held consent
            # stays held): sent once, then
            return None
        _to_inbox(notice, now, f"quiet hours: over before they end ({morning.isoformat()}), inbox only")
        if held:
            give_back_consent(notice.user_id, held)
        return None
    job = _decide(notice, now, templates, settings, held)
    if held and (job is None or job.channel != ChannelName.SUBSCRIBE or job.template_id != held):
        give_back_consent(notice.user_id, held)  # not sent on it (cancelled, another channel): WeChat still counts it
    return job


def _decide(
    notice: Notice, now: datetime, templates: Templates, settings: NoticeSettings, held: str | None
) -> Claimed | None:
    if not still_true(notice, now):
        notice.status, notice.lease_until = S.CANCELLED, None
        return None
    template = templates[notice.event]
    facts = notice.facts or {}
    page = notice.page or template.page
    if not held and notice.event not in MONEY_CRITICAL and _sent_today(notice.user_id, now) >= settings.daily_cap:
        notice.channel = ChannelName.INBOX
        _to_inbox(notice, now, f"daily cap ({settings.daily_cap}) reached: inbox only")
        return None
    try:  # a fact that cannot be rendered: nothing to send on any channel (the inbox leaves it out)
        subscribe_data = render_data(template.subscribe, facts) if template.subscribe else None
        oa_data = render_data(template.oa, facts) if template.oa else None
    except TemplateError as exc:
        _to_inbox(notice, now, f"not sent: {exc}")
        alert_once("notice_facts", f"notice {notice.event}", text=f"notice {notice.id}: {exc}")
        return None
    channel = touser = template_id = None
    data: dict = {}
    mp_openid = _mp_openid(notice.user_id, settings.mp_appid)
    reachable = template.subscribe is not None and mp_openid
    if reachable and (
        held == template.subscribe.template_id or take_consent(notice.user_id, template.subscribe.template_id)
    ):
        channel, touser, template_id = ChannelName.SUBSCRIBE, mp_openid, template.subscribe.template_id
        data = subscribe_data
    if channel is None and template.oa is not None:
        oa_openid = follows_official_account(notice.user_id, settings.oa_appid)
        if oa_openid:
            channel, touser, template_id = ChannelName.OA_TEMPLATE, oa_openid, template.oa.template_id
            data = oa_data
    if channel is None:
        notice.channel = ChannelName.INBOX
        _to_inbox(notice, now)
        return None
    notice.status, notice.lease_until = S.SENDING, now + settings.lease
    notice.channel, notice.template_id = channel, template_id
    notice.attempts += 1
    return Claimed(notice.id, notice.user_id, channel, touser, template_id, data, page, now)


# -- record --------------------------------------------------------------------------------------


def _lock(notice_id: int) -> Notice:
    return db.session.execute(
        select(Notice).where(Notice.id == notice_id).with_for_update().execution_options(populate_existing=True)
    ).scalar_one()


def _outcome_unknown(notice: Notice) -> bool:
    return notice.status == S.INBOX and (notice.last_error or "").startswith(OUTCOME_UNKNOWN)


def record(job: Claimed, answer: Answer, detail: str, now: datetime, settings: NoticeSettings, msgid: str = "") -> None:
    """Apply WeChat's answer to the claimed notice (flushes only)."""
    notice = _lock(job.notice_id)
    # A notice another pass gave up as "outcome unknown" (the lease lapsed during this call) waited for this very
    # answer: nobody else calls a notice in the inbox, so WeChat's word here is the whole truth and is applied as if
    # the lease held (sent; or certainly not sent: retried, refused, its consent given back or dropped).
    if notice.status != S.SENDING and not _outcome_unknown(notice):  # WeChat's sent event settled it meanwhile
        if answer == Answer.OK and notice.status == S.SENT and not notice.wechat_msgid:
            notice.wechat_msgid = msgid or None
        db.session.flush()
        return
    notice.lease_until = None
    if answer == Answer.OK:
        notice.status, notice.sent_at, notice.last_error = S.SENT, now, None
        notice.wechat_msgid = msgid or notice.wechat_msgid
    elif answer == Answer.CONSENT_GONE and job.channel != ChannelName.SUBSCRIBE:
        # the official account's 43101: the person turned its messages off (no consent of ours to drop); the next
        # channel after it is the inbox (falling through "at once" would knock at the same OA again, every pass)
        _to_inbox(notice, now, f"43101: the person refuses the official account's messages: {detail}")
    elif answer == Answer.CONSENT_GONE:  # fall through to the next channel at once
        drop_consents(job.user_id, job.template_id)
        notice.status, notice.next_attempt_at, notice.last_error = S.PENDING, now, f"43101: {detail}"[:2000]
        notice.channel = notice.template_id = None
    elif answer == Answer.UNKNOWN:  # never sent twice: the inbox keeps it; WeChat's sent event may still settle it
        _to_inbox(notice, now, f"{OUTCOME_UNKNOWN} ({detail}): kept in the inbox, not sent again")
        notice.lease_until = now  # when it was called: the sent event, handled after this record, still finds it
        notice.wechat_msgid = notice.wechat_msgid or msgid or None
    elif answer == Answer.REFUSED:
        unfollowed = job.channel != ChannelName.SUBSCRIBE and detail.startswith(f"{NOT_FOLLOWING}:")
        if job.channel == ChannelName.SUBSCRIBE:  # not sent: WeChat did not use the consent
            give_back_consent(job.user_id, job.template_id)
        elif unfollowed and settings.oa_appid:
            # WeChat says they no longer follow (the unfollow push was lost, or not applied yet): recorded, so the next
            # notice does not knock at the official account again; a later follow push sets it back. Dated at the
            # claim's whole second, not at this record: WeChat dates a follow in whole seconds, and one made right
            # after the call (its second earlier than this record) must still read as newer.
            # (a microsecond before it: a follow WeChat timed in that very second and applied first still wins)
            unfollowed_at = (job.claimed_at or now).replace(microsecond=0) - timedelta(microseconds=1)
            record_follow(settings.oa_appid, job.touser, False, unfollowed_at)
        _to_inbox(notice, now, f"refused by WeChat, not retried: {detail}")
        if not unfollowed:  # the person's own choice is no fault of ours: an alert of it would hide the next real one
            alert_once(
                "notice_refused",
                f"{job.channel} {job.template_id}",
                text=f"WeChat refused a {notice.event} notice: {detail}",
            )
    else:
        notice.last_error = detail[:2000]
        if notice.attempts >= settings.max_attempts:
            if job.channel == ChannelName.SUBSCRIBE:  # every try certainly failed: the consent is still there
                give_back_consent(job.user_id, job.template_id)
            _to_inbox(notice, now, f"gave up after {notice.attempts} attempts: {detail}")
        else:
            wait = min(settings.backoff * (2 ** (notice.attempts - 1)), settings.backoff_most)
            notice.status, notice.next_attempt_at = S.PENDING, now + wait
            if notice.channel != ChannelName.SUBSCRIBE:  # a subscribe retry keeps the consent it took
                notice.channel = notice.template_id = None
    db.session.flush()


def release(job: Claimed) -> None:
    """No turn in the channel's rate before the deadline: no call was made, put it back as it was due."""
    notice = _lock(job.notice_id)
    if notice.status == S.SENDING or _outcome_unknown(notice):  # the lease lapsed while it waited: still not called
        if notice.status != S.SENDING:
            notice.last_error = None
        notice.status, notice.lease_until = S.PENDING, None
        notice.attempts -= 1
    db.session.flush()


def apply_template_finish(user_id: int | None, msgid: str, status: str, at: datetime) -> bool:
    """The official account's ``TEMPLATESENDJOBFINISH``: whether WeChat delivered a template message we sent
    (``success``, ``failed:user block``: the person blocks the account's messages, ``failed: system failed``), kept
    on its notice as ``delivery`` like a subscribe message's sent event. A msgid of no notice of ours (a message
    sent by another system on the same account, or a person unknown here) changes nothing. Whether a notice took it
    (called by the message-push worker in its transaction; flushes only)."""
    if user_id is None or not msgid:
        return False
    delivery = " ".join(status.split()) or "unknown"
    return record_delivery(user_id, msgid[:64], delivery, at, Notice.channel == ChannelName.OA_TEMPLATE)
