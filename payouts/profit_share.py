"""Profit sharing (分账) as a payout rail: a merchant-funded cash rebate leaves the merchant's own frozen order money.

Service-provider mode only (``FUND_FLOW=service_provider``): an order paid with ``settle_info.profit_sharing``
stays frozen at its sub-merchant. Its merchant-funded cash rebates to persons are payout rows on
``Rail.PROFIT_SHARING`` (the outbox's rows, numbers, states and ledger flows); the dispatcher never claims
them. One ``ProfitShare`` per order carries them together, after the order's refund window
(``ShareSettings.hold``) and once no refund nor risk review of the order is open and no person it pays is
banned, in one request of at most 50 receivers, within the merchant's maximum ratio, with ``unfreeze_unsplit``
so the rest goes to the merchant; an order with nothing to share is unfrozen.

The outbox's rules hold: the share's number (from the order id) and its body are fixed and committed at the
claim, before any call; no transaction is open during a call (the job commits between the steps); a call whose
outcome is unknown is followed by a query of the same number before anything is sent again, and the same body
is resent only when the query says WeChat never saw it; a 400 refusal is definite only when no share of this
number can exist; one refused because a receiver we remember adding is no longer the sub-merchant's (the relation
was removed at WeChat) forgets those receivers and is resent, the same body, once they are added again. Results are
asynchronous: each receiver's ``SUCCESS`` pays its payouts, ``CLOSED`` returns
their money to the person's balance (owed again) with an alert.

Ledger: queued and sent as every payout (the person's balance → ``rebate_payable`` → ``payout_in_transit``);
a share that succeeds leaves from ``merchant_frozen_sales`` of the order's merchant (its own money at WeChat),
never through the platform's ``wechat_settlement``. A refund before the share reduces the pending payout (the
clawback's ``pending_payouts_for_rebate``); after it, the money cannot be returned from a person and becomes a
receivable, as for any payout that left.

Money that does not fit the merchant's ratio is never dropped: its payouts wait for an operator
(``needs_operator``, alert ``profit_share_over_ratio``).

WeChat unfreezes an order's unshared money to its merchant by itself ``FROZEN_FOR`` after the payment (the order's
``paid_at``: WeChat's success_time, never our own times). From then on our books follow (``release_lapsed``): what is
still frozen is released as an unfreeze releases it (``order:<id>:released``, once), the share is finished (kind
``unfreeze`` when it was never sent, nothing shared) and its payouts still waiting go to an operator (alert
``profit_share_frozen_lapsed``). A share that may be at WeChat (sent, or PROCESSING there) is asked about first, as
always: WeChat's answer decides, and only one it never saw is booked so, never sent after the deadline (nor in its
last ``SEND_MARGIN``, checked again just before the call: a share claimed in time may be sent late); a refund still
open is decided first. A query is not a new share: shares WeChat may hold are asked about with the rail switched off
too (``may_send=False``: an answer is recorded, nothing is sent). Every share not finished ``FROZEN_WARNING`` before
the deadline warns an operator once (``warn_frozen_deadline``, alert ``profit_share_frozen_deadline``), whatever
it waits for: the rail, a ban, a refund, a review, an operator, WeChat's answer.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, null, or_, select, update

from ledger import Leg, post
from models import (
    Alert,
    Campaign,
    Merchant,
    Order,
    OrderStatus,
    Payout,
    PayoutStatus,
    ProfitShare,
    ProfitShareConfig,
    ProfitShareReceiver,
    RailControl,
    Rebate,
    RebateStatus,
    ReceiverType,
    ShareKind,
    ShareStatus,
    User,
    UserIdentity,
    UserStatus,
    alert_once,
    db,
    raise_alert,
    utcnow,
)
from models.base import beijing
from models.orders import refund_open
from models.payouts import Rail
from models.sql import insert_ignoring
from money import share
from payouts.controls import rail_is_on
from payouts.transitions import frozen_ref, mark_returned, mark_sent, mark_shared, move, own_sales_ref
from wechat.errors import WeChatBusinessError, WeChatError, WeChatInvalidRequest, WeChatNotFound, WeChatRateLimited
from wechat.profitsharing import MAX_RECEIVERS

S = PayoutStatus
SHARE_TAG = "PS"
DESCRIPTION = "订单返利"  # what the person sees on the share
UNFREEZE_DESCRIPTION = "解冻全部剩余资金"
FROZEN_FOR = timedelta(days=180)  # WeChat unfreezes an order's unshared money to its merchant this long after payment
LAPSED = "profit_share_frozen_lapsed"  # the alert: WeChat unfroze the order's money before its share went
FROZEN_WARNING = timedelta(days=7)  # a share not finished this long before that warns an operator, once
DEADLINE_NEAR = "profit_share_frozen_deadline"  # that warning
SEND_MARGIN = timedelta(hours=1)  # no share is sent this close to that (WeChat may take it after its unfreeze)
OPERATOR_REQUERY = timedelta(hours=1)  # how often a handed-over share waiting for an operator is asked about
RATIO_REFUSAL = "比例"  # 分账金额超出最大分账比例: our cached ratio is stale
NOT_ENOUGH = "NOT_ENOUGH"  # 可分账金额不足: not settled yet, or refunded
RECEIVER_MISSING = "接收方不存在"  # 分账接收方不存在，请先添加分账接收方: the relation was removed at WeChat


@dataclass(frozen=True)
class ShareSettings:
    """``hold``: after payment, how long before sharing (``PROFIT_SHARING_HOLD_DAYS``); ``sp_appid``: the
    service provider's appid (``WECHAT_APPID``); ``number_prefix`` as every number we send WeChat."""

    hold: timedelta = timedelta(days=7)
    sp_appid: str = ""
    number_prefix: str = ""
    batch: int = 50
    lease: timedelta = timedelta(minutes=5)
    ratio_ttl: timedelta = timedelta(hours=24)
    poll: timedelta = timedelta(minutes=1)  # results are asynchronous: asked again after this
    max_attempts: int = 8
    backoff_cap: timedelta = timedelta(hours=6)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ShareSettings:
        return cls(
            hold=timedelta(days=int(cfg.get("PROFIT_SHARING_HOLD_DAYS", 7))),
            sp_appid=cfg.get("WECHAT_APPID") or "",
            number_prefix=cfg.get("WECHAT_NUMBER_PREFIX") or "",
            batch=int(cfg.get("PAYOUT_BATCH", 50)),
            lease=timedelta(seconds=int(cfg.get("PAYOUT_LEASE_SECONDS", 300))),
            max_attempts=int(cfg.get("PAYOUT_MAX_ATTEMPTS", 8)),
        )


def out_order_no_for(order_id: int, number_prefix: str) -> str:
    """The share's number, one per order, fixed: the environment prefix + ``PS`` + the order id."""
    return f"{number_prefix}{SHARE_TAG}{order_id:012d}"


# -- finding orders due ------------------------------------------------------------------------------


def open_shares(now: datetime, settings: ShareSettings, limit: int = 500) -> int:
    """A share row for each paid profit-sharing order that has none yet, due when its refund window closes.

    Idempotent (one row per order, insert-or-skip): any number of runners may call it at once."""
    has_share = exists().where(ProfitShare.order_id == Order.id)
    orders = db.session.execute(
        select(Order.id, Order.merchant_id, Order.sub_mchid, Order.transaction_id, Order.paid_at)
        .where(
            Order.profit_sharing.is_(True),
            Order.status.in_([OrderStatus.PAID, OrderStatus.REFUNDED]),
            Order.transaction_id.is_not(None),
            Order.sub_mchid.is_not(None),
            ~has_share,
        )
        .order_by(Order.id)
        .limit(limit)
    ).all()
    rows = [
        {
            "order_id": order_id,
            "merchant_id": merchant_id,
            "sub_mchid": sub_mchid,
            "transaction_id": transaction_id,
            "out_order_no": out_order_no_for(order_id, settings.number_prefix),
            "status": ShareStatus.PENDING.value,
            "due_at": paid_at + settings.hold,
            "next_attempt_at": paid_at + settings.hold,
            "attempts": 0,
            "posted": False,
            "shared_fen": 0,
            "held_fen": 0,
            "created_at": now,
        }
        for order_id, merchant_id, sub_mchid, transaction_id, paid_at in orders
    ]
    insert_ignoring(ProfitShare.__table__, rows, ("order_id",))
    db.session.flush()
    return len(rows)


def strand_late_payouts(limit: int = 100) -> int:
    """Profit-sharing payouts queued after their order's share was planned (a rebate released later, once its
    condition is met) can no longer leave by that share: its rest was unfrozen to the merchant. An operator
    decides (alert ``profit_share_too_late``); they are never sent from the platform's own account. Nor are
    those of an order opened without profit sharing (alert ``profit_share_not_frozen``)."""
    planned = exists().where(ProfitShare.order_id == Payout.order_id, ProfitShare.kind.is_not(None))
    late = _strand(
        select(Payout).where(planned),
        "profit_share_too_late",
        "queued after its order's profit share: the order's frozen money was already released",
        limit,
    )
    unshareable = _strand(  # its merchant's money was never frozen for it: no share can carry it
        select(Payout).join(Order, Order.id == Payout.order_id).where(Order.profit_sharing.is_(False)),
        "profit_share_not_frozen",
        "a merchant-funded rebate on an order paid without profit sharing: the order's money went to the "
        "merchant at once, so no share can carry it (it is never sent from the platform's own account)",
        limit,
    )
    db.session.flush()
    return late + unshareable


def _strand(query, kind: str, why: str, limit: int) -> int:
    """Move the pending, unheld profit-sharing payouts ``query`` selects to an operator, with an alert each."""
    stranded = (
        db.session.execute(
            query.where(Payout.rail == Rail.PROFIT_SHARING, Payout.status == S.PENDING, Payout.held.is_(False))
            .order_by(Payout.id)
            .limit(limit)
            .with_for_update(of=Payout, skip_locked=True)
        )
        .scalars()
        .all()
    )
    for payout in stranded:
        move(payout, S.NEEDS_OPERATOR)
        payout.last_error = why
        raise_alert(kind, payout.external_no, why)
    return len(stranded)


def frozen_until(paid_at: datetime) -> datetime:
    """When WeChat unfreezes an order's unshared money to its merchant: ``FROZEN_FOR`` after WeChat's payment time."""
    return paid_at + FROZEN_FOR


def lapsed(paid_at: datetime | None, now: datetime) -> bool:
    return paid_at is not None and now >= frozen_until(paid_at)


def send_before(paid_at: datetime | None) -> datetime | None:
    """No share of the order is sent from then on (``SEND_MARGIN`` before WeChat unfreezes its money by itself)."""
    return None if paid_at is None else frozen_until(paid_at) - SEND_MARGIN


def too_late_to_send(paid_at: datetime | None, now: datetime) -> bool:
    last = send_before(paid_at)
    return last is not None and now >= last


def release_lapsed(now: datetime, limit: int = 100) -> int:
    """The shares never sent whose order's money WeChat has unfrozen to the merchant by itself (``FROZEN_FOR`` after
    the payment): the rest is released in our books and their payouts go to an operator (``_lapse``). Runs whether
    or not the rail is switched on (WeChat released the money regardless). A share that may be at WeChat (``posted``)
    is never taken here: it is queried (``claim``), and booked so only if WeChat never saw it.

    Each order and share row is locked, skipping any another runner holds (nothing waits): any number of runners may
    call it at once, and each share is booked once (its status, and the release's key per order)."""
    rows = db.session.execute(
        select(ProfitShare, Order.paid_at)
        .join(Order, Order.id == ProfitShare.order_id)
        .where(
            ProfitShare.posted.is_(False),
            ProfitShare.status.in_([ShareStatus.PENDING, ShareStatus.NEEDS_OPERATOR]),
            Order.paid_at.is_not(None),
            Order.paid_at <= now - FROZEN_FOR,
        )
        .order_by(ProfitShare.id)
        .limit(limit)
        .with_for_update(of=[Order, ProfitShare], skip_locked=True)
        .execution_options(populate_existing=True)
    ).all()
    for row, paid_at in rows:
        if refund_open(row.order_id):  # the refund decides first what is left frozen (its success releases it)
            continue
        _lapse(row, paid_at, now, [])
    db.session.flush()
    return len(rows)


def _lapse(row: ProfitShare, paid_at: datetime, now: datetime, carried: list[Payout]) -> None:
    """WeChat unfroze the order's unshared money to its merchant (``frozen_until``) and no share of this order took
    any of it: our books release what is still frozen (``release_frozen``: as an unfreeze), the share is finished,
    sharing nothing, and the payouts it was to carry (``carried``) or still waiting on it go to an operator, who decides
    (the merchant may pay them from its own money; they are never sent from the platform's account). The caller holds
    the order's and the share's row locks."""
    deadline = frozen_until(paid_at)
    when = beijing(deadline).strftime("%Y-%m-%d %H:%M")
    why = (
        f"WeChat unfroze order {row.order_id}'s unshared money to its merchant at {when} Beijing time "
        f"({FROZEN_FOR.days} days after its payment) before share {row.out_order_no} took any: no share can carry "
        "this payout any more"
    )
    _to_operator(carried, row, why, kind=LAPSED)
    for payout in carried:  # WeChat never had them: SQL NULL (not JSON null), "never handed over" to the clawback
        payout.request = null()
    stranded = _strand(select(Payout).where(Payout.order_id == row.order_id), LAPSED, why, 1000)
    released = release_frozen(row.order_id, row.merchant_id)
    row.kind = row.kind or ShareKind.UNFREEZE  # WeChat's own unfreeze: nothing was shared
    row.status, row.finished_at, row.lease_until, row.shared_fen = ShareStatus.FINISHED, deadline, None, 0
    note = f"WeChat unfroze the order's money to its merchant {FROZEN_FOR.days} days after its payment ({when})"
    row.last_error = "; ".join(filter(None, [row.last_error, note]))[:2000]
    alert_once(
        LAPSED,
        row.out_order_no,
        text=f"{note}, before share {row.out_order_no} went: {released} fen still frozen in our books were released "
        f"to the merchant; {len(carried) + stranded} payout(s) waiting on the share went to an operator.",
    )


def _due(now: datetime, querying: bool):
    if querying:  # accepted and still sharing, or handed over with no answer we could read
        where = or_(
            and_(ProfitShare.status == ShareStatus.PROCESSING, ProfitShare.next_attempt_at <= now),
            and_(ProfitShare.status == ShareStatus.SENDING, ProfitShare.lease_until < now),
            and_(
                ProfitShare.status == ShareStatus.PENDING,
                ProfitShare.posted.is_(True),
                ProfitShare.next_attempt_at <= now,
            ),
            # waiting for an operator after it was handed over: still asked now and then (a query changes
            # nothing at WeChat), so a share WeChat finished is recorded and its order's rest released
            and_(
                ProfitShare.status == ShareStatus.NEEDS_OPERATOR,
                ProfitShare.posted.is_(True),
                ProfitShare.next_attempt_at <= now,
            ),
        )
    else:
        where = and_(
            ProfitShare.status == ShareStatus.PENDING,
            ProfitShare.posted.is_(False),
            ProfitShare.due_at <= now,
            ProfitShare.next_attempt_at <= now,
        )
    return where


def ratios_to_fetch(now: datetime, settings: ShareSettings) -> list[str]:
    """Sub-merchants of due shares still to plan whose maximum ratio is unknown or older than a day."""
    fresh = exists().where(
        ProfitShareConfig.sub_mchid == ProfitShare.sub_mchid,
        ProfitShareConfig.fetched_at > now - settings.ratio_ttl,
    )
    return list(
        db.session.execute(
            select(ProfitShare.sub_mchid)
            .where(_due(now, querying=False), ProfitShare.kind.is_(None), ~fresh)
            .distinct()
            .limit(settings.batch)
        ).scalars()
    )


def store_ratio(sub_mchid: str, ratio_bps: int, now: datetime) -> None:
    """Record the ratio WeChat gave; two runners that fetched it at once both store it (the row is
    inserted by whichever comes first, then written by each), neither fails on the other's row."""
    table = ProfitShareConfig.__table__
    values = {"sub_mchid": sub_mchid, "max_ratio_bps": ratio_bps, "fetched_at": now}
    if not insert_ignoring(table, [values], ("sub_mchid",), ("sub_mchid",)):
        db.session.execute(
            update(table).where(table.c.sub_mchid == sub_mchid).values(max_ratio_bps=ratio_bps, fetched_at=now)
        )
    stale = db.session.identity_map.get(db.session.identity_key(ProfitShareConfig, sub_mchid))
    if stale is not None:
        db.session.expire(stale)


def rail_enabled(now: datetime) -> bool:
    """The operators' switch for the rail (``PUT /admin/api/rails/profit_sharing``) and any pause."""
    return rail_is_on(db.session.get(RailControl, Rail.PROFIT_SHARING), now)


# -- the claim: plan, fix and commit the request ------------------------------------------------------


@dataclass(frozen=True)
class ShareJob:
    """What the call needs, as plain values (the call touches no database)."""

    share_id: int
    out_order_no: str
    sub_mchid: str
    transaction_id: str
    kind: str
    body: dict
    query_first: bool
    receivers_to_add: tuple[tuple[str, str, str | None], ...] = ()  # (type, account, sub_appid)
    lapsed: bool = False  # too late to send (``too_late_to_send``): WeChat has unfrozen, or is about to, the money
    send_before: datetime | None = None  # checked again just before the POST (the call may come late)
    may_send: bool = True  # False: the rail is switched off, WeChat is only asked (a query is not a new share)
    was: str = ShareStatus.PENDING  # the share's status before this claim


def claim(now: datetime, settings: ShareSettings, client, *, querying: bool, may_send: bool = True) -> list[ShareJob]:
    """Claim due shares (the caller commits before any call): the first claim of a share plans it and fixes
    its body; ``querying`` takes the shares whose answer is awaited instead of those due to be sent.
    ``may_send=False`` (the rail switched off; only with ``querying``): WeChat is only asked about them."""
    if not (querying or may_send):
        raise ValueError("only queries can be claimed without sending")
    shares = (
        db.session.execute(
            select(ProfitShare)
            .where(_due(now, querying))
            .order_by(ProfitShare.next_attempt_at, ProfitShare.id)
            .limit(settings.batch)
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    on = select(Order.id, Order.paid_at).where(Order.id.in_([r.order_id for r in shares]))
    paid = dict(db.session.execute(on).tuples().all())  # WeChat's payment times: ``lapsed``
    jobs = []
    for row in shares:
        if row.kind is None and not _plan(row, now, settings, client):
            continue
        if row.kind == ShareKind.NOTHING:
            continue
        query_first = row.posted  # an earlier claim may have POSTed it: only a query may decide
        was = row.status
        row.status, row.lease_until, row.posted = ShareStatus.SENDING, now + settings.lease, True
        row.attempts += 1
        jobs.append(
            ShareJob(
                row.id,
                row.out_order_no,
                row.sub_mchid,
                row.transaction_id,
                row.kind,
                dict(row.request),
                query_first=query_first,
                receivers_to_add=_receivers_to_add(row),
                lapsed=too_late_to_send(paid.get(row.order_id), now),
                send_before=send_before(paid.get(row.order_id)),
                may_send=may_send,
                was=was,
            )
        )
    db.session.flush()
    return jobs


def _plan(row: ProfitShare, now: datetime, settings: ShareSettings, client) -> bool:
    """Decide what this order shares and fix the body; False when it is not to be sent now."""
    order = db.session.execute(
        select(Order).where(Order.id == row.order_id).with_for_update().execution_options(populate_existing=True)
    ).scalar_one()
    if refund_open(order.id):  # the refund decides first what is still owed (and left frozen); its payouts are held
        row.next_attempt_at = now + settings.poll * 10
        return False
    if lapsed(order.paid_at, now):  # WeChat has unfrozen its money to the merchant: nothing can be shared any more
        _lapse(row, order.paid_at, now, [])
        return False
    if too_late_to_send(order.paid_at, now):  # WeChat may take a share sent now after its unfreeze: none is sent
        row.next_attempt_at = frozen_until(order.paid_at)  # (released then: ``release_lapsed``)
        return False
    if _under_review(order.id):  # so does a reviewer: a rebate released after the share could not leave by it
        row.next_attempt_at = now + settings.poll * 10
        return False
    payouts = _order_payouts(order.id, [S.PENDING], locked=True, unheld=True)
    left = order.net_paid_fen  # the buyer's part left (0 may still leave a coupon-paid order's fen frozen)
    if order.refunded_fen >= order.payable_fen:  # refunded in full: nothing is frozen any more
        row.kind, row.status, row.finished_at = ShareKind.NOTHING, ShareStatus.FINISHED, now
        release_frozen(order.id, order.merchant_id)  # the refunds took it all: nothing is left (kept for safety)
        _to_operator(payouts, row, "the order was refunded in full before its share")
        return False
    banned = _payee_banned(payouts)
    if banned:  # their payouts that never left wait for the ban; shared without them, never could
        row.next_attempt_at = now + settings.poll * 10
        alert_once(
            "profit_share_waits_for_ban",
            row.out_order_no,
            text=f"share {row.out_order_no} waits: a person it pays is banned (their payouts wait until the ban is "
            "lifted; cancel the payout to share the rest now)",
        )
        return False
    config = db.session.get(ProfitShareConfig, row.sub_mchid)
    if config is None or config.fetched_at <= now - settings.ratio_ttl:
        row.next_attempt_at = now + settings.poll  # its ratio is fetched first (no call inside a claim)
        return False
    merchant = db.session.get(Merchant, row.merchant_id)
    receivers, over, unreachable = _fit(payouts, share(left, config.max_ratio_bps), merchant, settings)
    _to_operator(unreachable, row, "the person has no openid under the service provider's or the merchant's appid")
    if over:
        row.held_fen += sum(p.amount_fen for p in over)
        _to_operator(
            over,
            row,
            f"{sum(p.amount_fen for p in over)} fen do not fit the merchant's maximum profit-sharing ratio "
            f"({config.max_ratio_bps} bps of {left} fen)",
            kind="profit_share_over_ratio",
        )
    row.ratio_bps = config.max_ratio_bps
    try:
        if receivers:
            row.kind = ShareKind.SHARE
            row.request = client.order_body(
                row.sub_mchid,
                row.transaction_id,
                row.out_order_no,
                [
                    {"type": t, "account": a, "amount": amount, "description": DESCRIPTION}
                    for (t, a), (amount, _) in receivers.items()
                ],
                unfreeze_unsplit=True,
                sub_appid=merchant.sub_appid
                if any(t == ReceiverType.PERSONAL_SUB_OPENID for t, _ in receivers)
                else None,
            )
        else:
            row.kind = ShareKind.UNFREEZE
            row.request = client.unfreeze_body(
                row.sub_mchid, row.transaction_id, row.out_order_no, UNFREEZE_DESCRIPTION
            )
    except WeChatInvalidRequest as exc:  # refused before anything was sent: an operator must look
        row.kind, row.request = None, null()
        _share_to_operator(row, f"the share could not be built: {exc.message}")
        _to_operator([p for _, ps in receivers.values() for p in ps], row, f"share not built: {exc.message}")
        return False
    row.shared_fen = sum(amount for amount, _ in receivers.values())
    for (t, a), (_, included) in receivers.items():
        for payout in included:
            move(payout, S.SENDING)
            payout.request = {"share": row.out_order_no, "type": t, "account": a}
            payout.attempts += 1
    return True


def _under_review(order_id: int) -> bool:
    """A rebate of the order that its merchant funds from sales is held for a risk review (nothing queued yet):
    released, it leaves by this share; after the share the order's money is the merchant's and it never could."""
    held = select(Rebate.id).join(Campaign, Campaign.id == Rebate.campaign_id)
    held = held.where(
        Rebate.order_id == order_id, Rebate.status == RebateStatus.REVIEW, Campaign.funded_from_sales.is_(True)
    )
    return db.session.execute(held.limit(1)).first() is not None


def _payee_banned(payouts: list[Payout]) -> list[Payout]:
    """The payouts of the share whose person is banned now (none: an empty list). They never left and wait until
    the ban is lifted, as the dispatcher leaves them; the share waits with them: sent without them, it would unfreeze
    the order's rest to the merchant and their payouts could never leave by it (an operator cancelling them lets the
    share go)."""
    users = {p.user_id for p in payouts}
    if not users:
        return []
    banned = set(
        db.session.execute(select(User.id).where(User.id.in_(users), User.status == UserStatus.BANNED)).scalars()
    )
    return [p for p in payouts if p.user_id in banned]


def warn_frozen_deadline(now: datetime, rail_on: bool, limit: int = 100) -> int:
    """Every share not finished ``FROZEN_WARNING`` before WeChat unfreezes its order's money to the merchant by
    itself (``FROZEN_FOR`` after the payment), whatever it waits for (the rail switched off, a ban, a refund, a risk
    review, an operator, WeChat's answer), warns an operator once (alert ``profit_share_frozen_deadline``, one per
    share, even once resolved): the order, the deadline, what waits on it and why. After the deadline a share never
    sent shares nothing: its payouts can no longer leave by it, whoever waited. Runs whether the rail is on or not.

    Each share row is locked, skipping any another runner holds: any number of runners may call it at once."""
    warned = exists().where(Alert.kind == DEADLINE_NEAR, Alert.subject == ProfitShare.out_order_no)
    rows = db.session.execute(
        select(ProfitShare, Order)
        .join(Order, Order.id == ProfitShare.order_id)
        .where(
            ProfitShare.status != ShareStatus.FINISHED,
            Order.paid_at.is_not(None),
            Order.paid_at <= now - (FROZEN_FOR - FROZEN_WARNING),
            ~warned,
        )
        .order_by(ProfitShare.id)
        .limit(limit)
        .with_for_update(of=ProfitShare, skip_locked=True)
    ).all()
    for row, order in rows:
        just = select(Alert.id).where(Alert.kind == DEADLINE_NEAR, Alert.subject == row.out_order_no).limit(1)
        if db.session.execute(just).first() is not None:  # another runner warned and committed meanwhile
            continue
        _warn_deadline(row, order, rail_on, now)
    db.session.flush()
    return len(rows)


def _warn_deadline(row: ProfitShare, order: Order, rail_on: bool, now: datetime) -> None:
    deadline = frozen_until(order.paid_at)
    when = beijing(deadline).strftime("%Y-%m-%d %H:%M")
    fate, act = ("unfroze", "Now") if now >= deadline else ("unfreezes", "Before then")
    waiting = _order_payouts(order.id, [S.PENDING, S.SENDING, S.UNKNOWN, S.NEEDS_OPERATOR])
    why, todo = _why_waiting(row, order, [p for p in waiting if p.status == S.PENDING], rail_on)
    raise_alert(
        DEADLINE_NEAR,
        row.out_order_no,
        (
            f"share {row.out_order_no} of order {order.id} ({order.out_trade_no}) is not finished: {why}. WeChat "
            f"{fate} the order's frozen money to the merchant at {when} Beijing time ({FROZEN_FOR.days} days after "
            f"its payment); no share is sent from {SEND_MARGIN.seconds // 60} minutes before then, and one never sent "
            f"shares nothing: {len(waiting)} payout(s) ({sum(p.amount_fen for p in waiting)} fen) wait on it "
            f"(ids {', '.join(str(p.id) for p in waiting) or 'none'}). {act}, {todo}"
        )[:4000],
    )


def _why_waiting(row: ProfitShare, order: Order, pending: list[Payout], rail_on: bool) -> tuple[str, str]:
    """Why the share is not finished, and what an operator can do about it before the deadline."""
    if row.status == ShareStatus.PROCESSING:
        return "WeChat is still working on it (PROCESSING)", "check the share at WeChat: its answer is asked for"
    if row.status == ShareStatus.NEEDS_OPERATOR:
        return (
            f"it waits for an operator ({row.last_error or 'no reason recorded'})",
            "decide it: GET /admin/api/profit-shares?order_id=" + str(order.id),
        )
    if row.posted:
        return "it was handed to WeChat and its answer is awaited", "check the share at WeChat"
    reasons, todo = [], []
    if not rail_on:
        reasons.append("the profit-sharing rail is switched off")
        todo.append("switch the rail on (PUT /admin/api/rails/profit_sharing)")
    if refund_open(order.id):
        reasons.append("a refund of the order is still open")
        todo.append("see the refund decided")
    if _under_review(order.id):
        reasons.append("a rebate of the order is held for a risk review")
        todo.append("decide the review")
    banned = _payee_banned(pending)
    if banned:
        reasons.append("a person it pays is banned")
        todo.append(
            "lift the ban if it was wrong (DELETE /admin/api/bans/<id>), or cancel the banned person's payouts "
            f"(ids {', '.join(str(p.id) for p in banned)}: POST /admin/api/payouts/<id>/cancel, the money stays the "
            "merchant's) so the share goes to the others, the other persons' payouts too"
        )
    if not reasons:
        reasons.append(f"not sent yet ({row.last_error or 'due ' + beijing(row.next_attempt_at).isoformat()})")
        todo.append("see why it is not sent (its sub-merchant's maximum ratio, say)")
    return "; ".join(reasons), "; ".join(todo) + "."


def _fit(payouts: list[Payout], cap: int, merchant: Merchant, settings: ShareSettings):
    """The receivers (type, account) → (amount, payouts) that fit ``cap``, whole payouts in id order; the
    payouts that do not fit; the payouts whose person has no openid to share to."""
    users = {p.user_id for p in payouts}
    appids = [a for a in (settings.sp_appid, merchant.sub_appid) if a]
    openids: dict[tuple[int, str], str] = {}
    if users and appids:
        for user_id, appid, openid in db.session.execute(
            select(UserIdentity.user_id, UserIdentity.appid, UserIdentity.openid).where(
                UserIdentity.user_id.in_(users), UserIdentity.appid.in_(appids)
            )
        ).tuples():
            openids[user_id, appid] = openid
    receivers: dict[tuple[str, str], tuple[int, list[Payout]]] = {}
    over, unreachable, used = [], [], 0
    for payout in payouts:
        if (payout.user_id, settings.sp_appid) in openids:
            key = (ReceiverType.PERSONAL_OPENID.value, openids[payout.user_id, settings.sp_appid])
        elif merchant.sub_appid and (payout.user_id, merchant.sub_appid) in openids:
            key = (ReceiverType.PERSONAL_SUB_OPENID.value, openids[payout.user_id, merchant.sub_appid])
        else:
            unreachable.append(payout)
            continue
        if used + payout.amount_fen > cap or (key not in receivers and len(receivers) >= MAX_RECEIVERS):
            over.append(payout)
            continue
        used += payout.amount_fen
        amount, included = receivers.get(key, (0, []))
        receivers[key] = (amount + payout.amount_fen, [*included, payout])
    return receivers, over, unreachable


def _receivers_to_add(row: ProfitShare) -> tuple[tuple[str, str, str | None], ...]:
    if row.kind != ShareKind.SHARE:
        return ()
    wanted = [(r["type"], r["account"]) for r in row.request["receivers"]]
    known = set(
        db.session.execute(
            select(ProfitShareReceiver.type, ProfitShareReceiver.account).where(
                ProfitShareReceiver.sub_mchid == row.sub_mchid,
                ProfitShareReceiver.account.in_([a for _, a in wanted]),
            )
        ).tuples()
    )
    sub_appid = row.request.get("sub_appid")
    return tuple(
        (t, a, sub_appid if t == ReceiverType.PERSONAL_SUB_OPENID else None) for t, a in wanted if (t, a) not in known
    )


# -- the call (no database) ---------------------------------------------------------------------------


@dataclass
class ShareCall:
    """What WeChat said. ``outcome``: answered (``answer`` holds the share), not_found, unknown, retry,
    refused (400: definite when ``definite``), receiver_refused."""

    outcome: str
    code: str | None = None
    message: str = ""
    answer: dict = field(default_factory=dict)
    definite: bool = False
    added: list[tuple[str, str, str]] = field(default_factory=list)  # (type, account, appid) added now
    calls: list[str] = field(default_factory=list)


def call(job: ShareJob, client) -> ShareCall:
    """Query first when the share may be at WeChat; add missing receivers; POST only a share WeChat has not got."""
    result = ShareCall("unknown")
    try:
        if job.query_first:
            result.calls.append("query")
            try:
                answer = client.query_order(job.sub_mchid, job.transaction_id, job.out_order_no)
            except WeChatNotFound:
                if job.lapsed:  # never seen, and the order's money is the merchant's now: nothing is sent
                    result.outcome = "lapsed"
                    return result
                if not job.may_send:  # never seen, and the rail is switched off: nothing is sent now
                    result.outcome = "held"
                    return result
                # WeChat never saw this number: the same body may be sent
            else:
                return _answered(result, answer, job)
        elif job.lapsed or not job.may_send:  # (planned before the deadline, never sent: the same)
            result.outcome = "lapsed" if job.lapsed else "held"
            return result
        for receiver_type, account, sub_appid in job.receivers_to_add:
            if _too_late(job):
                result.outcome = "lapsed"
                return result
            result.calls.append("add_receiver")
            try:
                client.add_receiver(job.sub_mchid, receiver_type, account, "USER", sub_appid=sub_appid)
            except WeChatError as exc:
                if exc.outcome_unknown or isinstance(exc, WeChatRateLimited):
                    return _error(result, exc)
                result.outcome, result.code, result.message = "receiver_refused", exc.code, exc.message
                return result
            result.added.append((receiver_type, account, client.sp_appid))
        if _too_late(job):  # claimed in time, but this call comes late: nothing is sent after the deadline
            result.outcome = "lapsed"
            return result
        result.calls.append("send")
        answer = client.post_order(job.body) if job.kind == ShareKind.SHARE else client.unfreeze(job.body)
        return _answered(result, answer, job)
    except WeChatError as exc:
        result = _error(result, exc)
        # reached the POST only when no share of this number can exist (never claimed before, or the query
        # just said WeChat never saw it): a 400 (or NOT_ENOUGH) then refuses this request, nothing else
        refusal = result.outcome == "refused" or result.code == NOT_ENOUGH
        result.definite = refusal and result.calls[-1] == "send"
        return result


def _too_late(job: ShareJob) -> bool:
    return job.send_before is not None and utcnow() >= job.send_before


def _answered(result: ShareCall, answer: Any, job: ShareJob) -> ShareCall:
    if not isinstance(answer, dict) or answer.get("out_order_no") != job.out_order_no:
        result.outcome, result.code = "mismatch", "ANSWER_MISMATCH"
        result.message = f"the answer is not about share {job.out_order_no}"
        return result
    result.outcome, result.answer = "answered", answer
    return result


def _error(result: ShareCall, exc: WeChatError) -> ShareCall:
    result.code, result.message = exc.code, exc.message
    if isinstance(exc, WeChatRateLimited) or exc.code == NOT_ENOUGH:  # 频率超限; not settled yet or refunded
        result.outcome = "retry"
    elif exc.outcome_unknown:
        result.outcome = "unknown"
    elif isinstance(exc, WeChatBusinessError) and exc.http_status == 400:
        result.outcome = "refused"
    else:
        result.outcome = "unknown"
    return result


# -- recording the answer -----------------------------------------------------------------------------


def record(job: ShareJob, result: ShareCall, now: datetime, settings: ShareSettings) -> str:
    """Apply what WeChat said (the caller commits); returns the share's status.

    The order's row is locked first, as a refund locks it before its payouts: the share's answer moves the
    order's frozen money (``Order.frozen_fen``), and releases the rest when the share is finished."""
    paid_at = db.session.execute(
        select(Order.paid_at)
        .join(ProfitShare, ProfitShare.order_id == Order.id)
        .where(ProfitShare.id == job.share_id)
        .with_for_update(of=Order)
    ).scalar_one()
    row = db.session.execute(
        select(ProfitShare)
        .where(ProfitShare.id == job.share_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one()
    _remember_receivers(row.sub_mchid, result.added, now)
    if row.status != ShareStatus.SENDING:  # decided meanwhile (an operator)
        return row.status
    row.lease_until = None
    if result.outcome == "held":  # the rail is off and WeChat never saw it: it waits as it was (not an attempt)
        row.attempts = max(0, row.attempts - 1)
        row.status = job.was if job.was == ShareStatus.NEEDS_OPERATOR else ShareStatus.PENDING
        row.next_attempt_at = now + (OPERATOR_REQUERY if job.was == ShareStatus.NEEDS_OPERATOR else settings.poll * 10)
        db.session.flush()
        return row.status
    row.last_error = None if result.outcome in ("answered", "lapsed") else f"{result.code}: {result.message}"[:2000]
    if result.outcome == "answered":
        _apply_answer(row, result.answer, now, settings)
    elif result.outcome == "lapsed" and (not lapsed(paid_at, now) or refund_open(row.order_id)):
        # never sent, and too late to send: released at the deadline, after the open refund is decided
        _unplan(row, max(frozen_until(paid_at), now + settings.poll * 10))
    elif result.outcome == "lapsed":  # WeChat never saw it and has unfrozen the order's money to the merchant
        _lapse(row, paid_at, now, _share_payouts(row))
    elif result.outcome == "refused" and result.definite and RATIO_REFUSAL in result.message:
        _replan(row, now)  # our cached ratio was stale: fetch it again and plan anew (nothing exists at WeChat)
    elif result.outcome == "refused" and result.definite and RECEIVER_MISSING in result.message:
        _add_receivers_again(row, now, settings)  # a relation removed at WeChat: added again, the same body resent
    elif result.outcome == "retry" and result.definite and _refunded_in_full(row.order_id):
        _refunded_before_shared(row, now)  # nothing is frozen at WeChat any more: it can never be shared
    elif result.outcome in ("refused", "receiver_refused", "mismatch"):
        why = "WeChat refused the share" if result.outcome != "receiver_refused" else "WeChat refused a receiver"
        if result.outcome == "refused" and not result.definite:
            why += " (a share of this number may exist)"
        _share_to_operator(row, f"{why}: {result.code} {result.message}")
    else:  # unknown: the next pass queries first (posted); retry: the same body later
        row.status = ShareStatus.PENDING
        row.next_attempt_at = now + _backoff(row.attempts, settings)
    if row.status in (ShareStatus.PENDING, ShareStatus.PROCESSING) and row.attempts >= settings.max_attempts:
        _share_to_operator(row, f"still not final after {row.attempts} attempts ({result.code})")
    db.session.flush()
    return row.status


def _apply_answer(row: ProfitShare, answer: dict, now: datetime, settings: ShareSettings) -> None:
    row.wechat_order_id = answer.get("order_id") or row.wechat_order_id
    payouts = _share_payouts(row)
    for payout in payouts:
        mark_sent(payout, now)  # handed to WeChat: the money is in transit
        if payout.status == S.SENDING:
            move(payout, S.UNKNOWN)
    results = {(r.get("type"), r.get("account")): r for r in answer.get("receivers") or []}
    waiting = False
    for payout in payouts:
        got = results.get((payout.request["type"], payout.request["account"]))
        outcome = (got or {}).get("result")
        if outcome == "SUCCESS":
            _shared(payout, row, now, got.get("detail_id"))
        elif outcome == "CLOSED":
            reason = f"profit share closed: {got.get('fail_reason') or 'CLOSED'}; the money is back with the merchant"
            mark_returned(payout, S.FAILED, now, reason)
            raise_alert("profit_share_closed", payout.external_no, reason)
        else:
            waiting = True
    if answer.get("state") == "FINISHED" and not waiting:
        row.status, row.finished_at = ShareStatus.FINISHED, now
        release_frozen(row.order_id, row.merchant_id)  # unfreeze_unsplit / the unfreeze: the rest is the merchant's
    else:
        row.status, row.next_attempt_at = ShareStatus.PROCESSING, now + settings.poll


def _shared(payout: Payout, row: ProfitShare, now: datetime, detail_id: str | None) -> None:
    memo = f"payout {payout.external_no} shared from the merchant's order money ({row.out_order_no})"
    mark_shared(payout, now, detail_id or row.wechat_order_id, memo, row.merchant_id)


def release_legs(merchant_id: int, amount_fen: int) -> list[Leg]:
    """The order money WeChat unfroze to the merchant leaves our books: its frozen money and its claim on it."""
    return [Leg(frozen_ref(merchant_id), amount_fen), Leg(own_sales_ref(merchant_id), -amount_fen)]


def release_key(order_id: int) -> str:
    return f"order:{order_id}:released"


def release_frozen(order_id: int, merchant_id: int) -> int:
    """The order's share is finished (or it was only unfrozen): what is still frozen in our books is released
    to the merchant, once (``order:<id>:released``); returns it. The order's row is locked by the caller.
    Rebates its merchant funded that no share carried (an operator's, a closed receiver's) stay owed by it:
    ``merchant_own_sales`` below zero."""
    rest = db.session.execute(
        select(Order.frozen_fen).where(Order.id == order_id).execution_options(populate_existing=True)
    ).scalar_one()
    if not rest:
        return 0
    if rest < 0:  # more left the frozen money than it held: never posted as a release, an operator looks
        raise_alert(
            "profit_share_overdrawn",
            release_key(order_id),
            f"order {order_id}'s frozen money is {rest} fen after its share and refunds: nothing was released",
        )
        return 0
    post(
        release_key(order_id),
        f"order {order_id}'s frozen money released to its merchant",
        release_legs(merchant_id, rest),
    )
    db.session.execute(
        update(Order).where(Order.id == order_id).values(frozen_fen=0).execution_options(synchronize_session=False)
    )
    return rest


def _share_payouts(row: ProfitShare) -> list[Payout]:
    """The payouts this share carries (claimed for it: ``request.share`` is its number), locked in id order."""
    candidates = _order_payouts(row.order_id, [S.SENDING, S.UNKNOWN], locked=True)
    return [p for p in candidates if (p.request or {}).get("share") == row.out_order_no]


def _order_payouts(order_id: int, statuses: list[str], *, locked: bool = False, unheld: bool = False) -> list[Payout]:
    """The order's profit-sharing payouts in ``statuses``, in id order (``locked``: each row locked; ``unheld``: none
    an open refund holds)."""
    stmt = select(Payout).where(
        Payout.order_id == order_id, Payout.rail == Rail.PROFIT_SHARING, Payout.status.in_(statuses)
    )
    if unheld:
        stmt = stmt.where(Payout.held.is_(False))
    stmt = stmt.order_by(Payout.id)
    return list(db.session.execute(stmt.with_for_update() if locked else stmt).scalars())


def _replan(row: ProfitShare, now: datetime) -> None:
    db.session.execute(ProfitShareConfig.__table__.delete().where(ProfitShareConfig.sub_mchid == row.sub_mchid))
    for payout in _share_payouts(row):
        move(payout, S.PENDING)
        payout.request = null()  # SQL NULL (not JSON null): "never handed over", as the clawback reads it
    row.status, row.kind, row.request, row.shared_fen = ShareStatus.PENDING, None, null(), 0
    row.next_attempt_at, row.posted = now, False  # WeChat refused it outright: no share of this number exists


def _unplan(row: ProfitShare, when: datetime) -> None:
    """WeChat has no share of this number (never sent, or a query said it never saw it) and none may be sent any
    more: the plan is undone, its payouts wait unplanned again (never handed over, as the clawback reads them) and
    ``release_lapsed`` books the order's release at ``when`` (at the deadline, once no refund is open). A share
    WeChat once answered (its payouts in transit) is only asked about again then."""
    payouts = _share_payouts(row)
    row.attempts = max(0, row.attempts - 1)  # nothing was sent: not an attempt
    if any(p.status != S.SENDING for p in payouts):
        row.status, row.next_attempt_at = ShareStatus.PENDING, when
        return
    for payout in payouts:
        move(payout, S.PENDING)
        payout.request = null()
    row.status, row.kind, row.request, row.shared_fen = ShareStatus.PENDING, None, null(), 0
    row.next_attempt_at, row.posted = when, False


def _add_receivers_again(row: ProfitShare, now: datetime, settings: ShareSettings) -> None:
    """WeChat refused the share outright: a receiver we remember adding is not one of the sub-merchant's any more
    (the relation was removed at WeChat: ``receivers/delete``, or the sub-merchant on its merchant platform). No
    share of this number exists, so its receivers are forgotten and the next pass (which queries first) adds them
    again and sends the same body; ``max_attempts`` still bounds it."""
    accounts = [r["account"] for r in row.request["receivers"]] if row.kind == ShareKind.SHARE else []
    db.session.execute(
        ProfitShareReceiver.__table__.delete().where(
            ProfitShareReceiver.sub_mchid == row.sub_mchid, ProfitShareReceiver.account.in_(accounts)
        )
    )
    row.status, row.next_attempt_at = ShareStatus.PENDING, now + _backoff(row.attempts, settings)


def _refunded_in_full(order_id: int) -> bool:
    refunded, payable = db.session.execute(
        select(Order.refunded_fen, Order.payable_fen).where(Order.id == order_id)
    ).one()
    return refunded >= payable


def _refunded_before_shared(row: ProfitShare, now: datetime) -> None:
    """WeChat refused the share for NOT_ENOUGH, no share of its number exists, and the order has been refunded in
    full since the share was planned: nothing is frozen any more, so it can never be made. Its payouts come back
    to the merchant (``mark_returned``: what the refund made the persons owe for them is settled, they never got
    it) and what the books still hold frozen for the order is released, as for an order refunded before its plan."""
    why = "the order was refunded in full before WeChat took its share: nothing is left to share"
    for payout in _share_payouts(row):
        mark_returned(payout, S.FAILED, now, why)
    row.kind, row.status, row.finished_at = ShareKind.NOTHING, ShareStatus.FINISHED, now
    row.last_error = "; ".join(filter(None, [row.last_error, why]))[:2000]
    release_frozen(row.order_id, row.merchant_id)


def _remember_receivers(sub_mchid: str, added: list[tuple[str, str, str]], now: datetime) -> None:
    rows = [{"sub_mchid": sub_mchid, "type": t, "account": a, "appid": appid, "added_at": now} for t, a, appid in added]
    insert_ignoring(ProfitShareReceiver.__table__, rows, ("sub_mchid", "type", "account"))


def _to_operator(payouts: list[Payout], row: ProfitShare, why: str, kind: str = "payout_needs_operator") -> None:
    for payout in payouts:
        move(payout, S.NEEDS_OPERATOR)
        payout.last_error = why[:2000]
        raise_alert(kind, payout.external_no, f"{why} (order share {row.out_order_no})")


def _share_to_operator(row: ProfitShare, why: str) -> None:
    row.status, row.lease_until, row.last_error = ShareStatus.NEEDS_OPERATOR, None, why[:2000]
    row.next_attempt_at = utcnow() + OPERATOR_REQUERY
    alert_once("profit_share_needs_operator", row.out_order_no, text=why)


def _backoff(attempts: int, settings: ShareSettings) -> timedelta:
    ceiling = min(settings.backoff_cap.total_seconds(), 30.0 * 2 ** max(0, attempts - 1))
    return timedelta(seconds=ceiling * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not secrecy
