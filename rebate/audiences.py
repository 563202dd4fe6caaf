"""Audiences over purchase history, and batches that issue a campaign's packets to them with a holdout.

**The definition** is a JSON tree of clauses (``Definition``; pydantic, so the admin API answers 422 naming
the field, and /openapi.json publishes its schema):

* ``{"kind": "lapsed", "days": N}``: no purchase in the last N days, but at least one before;
* ``{"kind": "bought_in_category", "category": X, "days": N}``: a purchase with a line of category X in the
  last N days;
* ``{"kind": "spent_at_least", "amount_fen": Y, "days": N}``: paid at least Y fen, net of refunds, on orders
  paid in the last N days;
* ``{"kind": "never_used_packet"}``: never spent a red packet on an order that was paid (one a refund gave back
  since was spent all the same, as the lift's uptake counts it);
* ``{"kind": "all_of" | "any_of", "clauses": [...]}`` and ``{"kind": "not", "clause": {...}}``.

A *purchase* is an order paid and not refunded in full (status ``paid``); spending counts every paid order
at what was paid less what was refunded. Everything is evaluated in SQL as one ``SELECT`` of user ids
(correlated ``EXISTS`` / sums per person): nothing loads every user into Python. Banned people are never
members. A **merchant-scoped** audience (``merchant_id``) only ever sees that merchant's buyers (people with
a paid order at it) and judges every clause on that merchant's orders only, so its staff learn nothing of
other shops.

**A run** (one batch issue) is worked in steps, each in the caller's transaction (``work_run``; a job or a
small run's own request commits each): first the members are chosen — the audience as it is then, each
with a holdout flag from ``sha256(seed:user_id) mod 10000 < holdout_bps`` (deterministic: the same run
always holds out the same people) — then the treated members are issued one packet each, a chunk at a
time, through ``rebate.packets.issue_packet`` (source ``audience``, source_ref ``<run>:<user>``), each in a
savepoint: the campaign's budget, packet count, deposit, audience (regions) and its own per-person claim
limits decide; a refusal is recorded on the member with its code and is no failure of the batch. Each
packet issued writes its ``packet_received`` notice (``notices.enqueue_many``, key
``packet:<id>:received``) in the same transaction. A member row is marked done with its packet in the
chunk's transaction, and the packet itself is unique per (campaign, source, source_ref): a crash
mid-way resumes at the first member not done, and nobody is issued twice.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from sqlalchemy import Select, and_, exists, func, not_, or_, select, update

from models import (
    Audience,
    AudienceMember,
    AudienceRun,
    Campaign,
    Order,
    OrderLine,
    OrderPacket,
    OrderStatus,
    PacketStatus,
    RedPacket,
    RunStatus,
    User,
    UserStatus,
    alert_once,
    db,
    net_paid_sql,
)
from models.operators import Actor, audit, merchant_scope
from models.sql import insert_ignoring, read_apart
from money import MAX_FEN
from notices import enqueue_many
from rebate import tell
from rebate.campaigns import is_running
from rebate.deposits import pause_refused
from rebate.errors import BudgetExhausted, DepositExhausted, Invalid, NotFound, RebateError, StateConflict
from rebate.packets import budget_refusal, issue_packet, refuse_user_stake, reservation_for, top_face_fen
from rebate.scope import visible_campaign, visible_merchant
from risk import Claimant, ClaimGate, ClaimLimits, LimitHit, PlatformLimits, campaign_slots

SOURCE = "audience"
MAX_DEPTH = 4  # all_of / any_of / not nested at most this deep
MAX_CLAUSES = 20  # clauses in one definition, combinations included
MEMBER_PAGE = 2000  # ids read (and members written) per statement while a run's members are chosen


class _Clause(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


Days = Annotated[StrictInt, Field(ge=1, le=3650, description="the period: the last N days")]


class Lapsed(_Clause):
    kind: Literal["lapsed"]
    days: Days


class BoughtInCategory(_Clause):
    kind: Literal["bought_in_category"]
    category: Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[\w\-]+$")]
    days: Days


class SpentAtLeast(_Clause):
    kind: Literal["spent_at_least"]
    amount_fen: Annotated[StrictInt, Field(gt=0, le=MAX_FEN)]
    days: Days


class NeverUsedPacket(_Clause):
    kind: Literal["never_used_packet"]


class AllOf(_Clause):
    kind: Literal["all_of"]
    clauses: Annotated[list[Clause], Field(min_length=1, max_length=10)]


class AnyOf(_Clause):
    kind: Literal["any_of"]
    clauses: Annotated[list[Clause], Field(min_length=1, max_length=10)]


class Not(_Clause):
    kind: Literal["not"]
    clause: Clause


Clause = Annotated[
    Lapsed | BoughtInCategory | SpentAtLeast | NeverUsedPacket | AllOf | AnyOf | Not, Field(discriminator="kind")
]
for _model in (AllOf, AnyOf, Not):
    _model.model_rebuild()


def _walk(clause, depth: int = 1) -> Iterator[tuple[object, int]]:
    yield clause, depth
    for child in getattr(clause, "clauses", None) or ([clause.clause] if isinstance(clause, Not) else []):
        yield from _walk(child, depth + 1)


def _bounded(clause):
    walked = list(_walk(clause))
    if len(walked) > MAX_CLAUSES:
        raise ValueError(f"at most {MAX_CLAUSES} clauses in one definition")
    if max(depth for _, depth in walked) > MAX_DEPTH:
        raise ValueError(f"combinations nest at most {MAX_DEPTH} deep")
    return clause


# An audience's definition: one clause (a combination for several), of bounded size and depth.
Definition = Annotated[Clause, AfterValidator(_bounded)]
_DEFINITION: TypeAdapter = TypeAdapter(Definition)


def parse_definition(data: object):
    """The one parser (``Invalid`` naming the field), for callers other than the admin API (which validates
    the same type in its body model)."""
    try:
        return _DEFINITION.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise Invalid(f"definition{'.' + field if field else ''}: {first['msg']}", code="invalid_definition") from None


def definition_json(clause) -> dict:
    """A parsed definition as stored: every default written out."""
    return _DEFINITION.dump_python(clause, mode="json")


# -- evaluation in SQL ------------------------------------------------------------------------------------


def _orders(merchant_id: int | None, *conditions):
    """The person's (``users.id``, correlated) orders matching ``conditions``, at ``merchant_id`` only if given."""
    scope = [Order.merchant_id == merchant_id] if merchant_id is not None else []
    return and_(Order.user_id == User.id, *scope, *conditions)


def _purchase(merchant_id: int | None, *conditions):
    return exists().where(_orders(merchant_id, Order.status == OrderStatus.PAID, *conditions))


def _condition(clause, merchant_id: int | None, now: datetime):
    """A clause as a boolean SQL expression over ``users.id``."""
    if isinstance(clause, AllOf):
        return and_(*(_condition(c, merchant_id, now) for c in clause.clauses))
    if isinstance(clause, AnyOf):
        return or_(*(_condition(c, merchant_id, now) for c in clause.clauses))
    if isinstance(clause, Not):
        return not_(_condition(clause.clause, merchant_id, now))
    if isinstance(clause, NeverUsedPacket):
        used = [RedPacket.owner_id == User.id, RedPacket.status == PacketStatus.USED]
        if merchant_id is not None:
            used.append(exists().where(Order.id == RedPacket.order_id, Order.merchant_id == merchant_id))
        # a packet spent on an order that was paid is used even if a refund gave it back since (the lift's basis)
        spent = exists().where(OrderPacket.order_id == Order.id, _orders(merchant_id, Order.paid_at.is_not(None)))
        return not_(or_(exists().where(*used), spent))
    since = now - timedelta(days=clause.days)
    if isinstance(clause, Lapsed):
        return and_(not_(_purchase(merchant_id, Order.paid_at >= since)), _purchase(merchant_id, Order.paid_at < since))
    if isinstance(clause, BoughtInCategory):
        return exists().where(
            _orders(merchant_id, Order.status == OrderStatus.PAID, Order.paid_at >= since),
            OrderLine.order_id == Order.id,
            OrderLine.category == clause.category,
        )
    spent = (
        select(func.coalesce(func.sum(net_paid_sql()), 0))
        .where(_orders(merchant_id, Order.paid_at.is_not(None), Order.paid_at >= since))
        .scalar_subquery()
    )
    return spent >= clause.amount_fen


def members_query(definition, merchant_id: int | None, now: datetime) -> Select:
    """The ids of everyone in the audience at ``now``: not banned, in the merchant's buyers if scoped."""
    stmt = select(User.id).where(User.status != UserStatus.BANNED, _condition(definition, merchant_id, now))
    if merchant_id is not None:
        stmt = stmt.where(exists().where(_orders(merchant_id, Order.paid_at.is_not(None))))
    return stmt


def preview_count(
    definition, merchant_id: int | None, now: datetime, *, apart: bool = False, at_most: int | None = None
) -> int:
    """How many people the definition holds now. ``apart``: read on a connection of its own after ending the caller's
    transaction, which must have written nothing (``models.sql.read_apart``: on SQLite a count of seconds over a big
    shop's orders no longer holds every other request). ``at_most``: counted no further than one past it (whether
    a run is small enough for its request: a big audience is not counted to its end inside the request's writes)."""
    members = members_query(definition, merchant_id, now)
    if at_most is not None:
        members = members.limit(at_most + 1)
    count = select(func.count()).select_from(members.subquery())
    if apart:
        return read_apart(count)[0][0]
    return db.session.execute(count).scalar_one()


# -- audiences --------------------------------------------------------------------------------------------


def scoped_merchant(actor: Actor, merchant_id: int | None) -> int | None:
    """The merchant an audience is scoped to: merchant staff's own always (another merchant: 404)."""
    scope = actor.merchant_scope
    if scope is not None:
        merchant_id = merchant_id or scope
    if merchant_id is not None:
        visible_merchant(actor.operator, merchant_id)
    return merchant_id


def create_audience(
    actor: Actor, name: str, definition, merchant_id: int | None, reason: str | None = None
) -> Audience:
    """A new audience (``definition``: parsed, ``parse_definition``), audited with the operator's ``reason``.
    Merchant staff's audiences are always scoped to their own merchant (another merchant: 404)."""
    merchant_id = scoped_merchant(actor, merchant_id)
    audience = Audience(
        name=name,
        definition=definition_json(definition),
        merchant_id=merchant_id,
        created_by=actor.operator.id,
    )
    db.session.add(audience)
    db.session.flush()
    audit(actor, "audience.create", "audience", audience.id, reason, name=name, merchant_id=merchant_id)
    return audience


def visible_audience(operator, audience_id: int) -> Audience:
    """An audience the operator may see: every one for platform roles, their merchant's for its staff."""
    audience = db.session.get(Audience, audience_id)
    scope = merchant_scope(operator)
    if audience is None or (scope is not None and audience.merchant_id != scope):
        raise NotFound(f"audience {audience_id} not found")
    return audience


def visible_run(operator, run_id: int) -> AudienceRun:
    """A run of an audience the operator may see (another merchant's: not found)."""
    run = db.session.get(AudienceRun, run_id)
    scope = merchant_scope(operator)
    if run is None or (scope is not None and db.session.get(Audience, run.audience_id).merchant_id != scope):
        raise NotFound(f"audience run {run_id} not found")
    return run


def definition_of(audience: Audience):
    return _DEFINITION.validate_python(audience.definition)


# -- runs -------------------------------------------------------------------------------------------------


def start_run(
    actor: Actor, audience_id: int, campaign_id: int, holdout_bps: int, now: datetime, reason: str | None = None
) -> AudienceRun:
    """A new run of ``campaign_id`` on the audience (members chosen by ``work_run``), audited with the operator's
    ``reason``. A merchant-funded campaign runs only on an audience scoped to its own merchant (its money goes to
    its own buyers); a campaign that is not running, or has no room for one more packet, runs none (409)."""
    audience = visible_audience(actor.operator, audience_id)
    campaign = visible_campaign(actor.operator, campaign_id)
    refuse_user_stake(campaign)
    if campaign.funder_merchant_id is not None and audience.merchant_id != campaign.funder_merchant_id:
        raise StateConflict(
            "a merchant-funded campaign runs only on an audience of its own merchant's buyers", code="audience_scope"
        )
    if not 0 <= holdout_bps <= 5000:
        raise Invalid("holdout_bps is 0 to 5000", code="holdout_bps")
    if not top_face_fen(campaign):
        raise StateConflict("this campaign issues no packets", code="campaign_issues_no_packets")
    if not is_running(campaign, now):
        raise StateConflict("the campaign is not running", code="campaign_not_running")
    _refuse_spent(campaign)
    run = AudienceRun(
        audience_id=audience.id,
        campaign_id=campaign.id,
        holdout_bps=holdout_bps,
        seed=secrets.token_hex(8),
        status=RunStatus.PENDING,
        created_by=actor.operator.id,
        created_at=now,
    )
    db.session.add(run)
    db.session.flush()
    audit(
        actor, "audience.run", "audience_run", run.id, reason,
        audience_id=audience.id, campaign_id=campaign.id, holdout_bps=holdout_bps,
    )  # fmt: skip
    return run


def _refuse_spent(campaign: Campaign) -> None:
    """A campaign whose packet count or budget cannot take one more packet (as its first member's would be refused):
    the run would only write a refusal on every member, and a lift of a treated group that received nothing."""
    if campaign.max_packets is not None and campaign.packets_issued >= campaign.max_packets:
        raise budget_refusal(count_spent=True)
    if campaign.budget_limit_fen is not None and reservation_for(campaign) > campaign.budget_available_fen:
        raise budget_refusal(count_spent=False)


def held_out(seed: str, user_id: int, holdout_bps: int) -> bool:
    """Whether a person is in a run's holdout: the same answer for the same seed, always."""
    digest = hashlib.sha256(f"{seed}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < holdout_bps


def _choose_members(run: AudienceRun, now: datetime) -> None:
    """Write the run's members (the audience at ``now``), a page of ids at a time (bounded memory)."""
    audience = db.session.get(Audience, run.audience_id)
    query = members_query(definition_of(audience), audience.merchant_id, now).order_by(User.id)
    last, members, holdout = 0, 0, 0
    while True:
        ids = db.session.execute(query.where(User.id > last).limit(MEMBER_PAGE)).scalars().all()
        if not ids:
            break
        rows = [
            {"run_id": run.id, "user_id": uid, "holdout": held_out(run.seed, uid, run.holdout_bps), "done": False}
            for uid in ids
        ]
        insert_ignoring(AudienceMember.__table__, rows, ("run_id", "user_id"))
        members += len(rows)
        holdout += sum(1 for r in rows if r["holdout"])
        last = ids[-1]
    run.members, run.holdout, run.treated = members, holdout, members - holdout
    run.status, run.started_at = RunStatus.ISSUING, now


def _issue_member(campaign: Campaign, user: User, run: AudienceRun, now: datetime) -> tuple[RedPacket | None, str]:
    """One treated member's packet in a savepoint, or the code of the campaign's refusal."""
    if user.status == UserStatus.BANNED:  # banned since the members were chosen
        return None, "banned"
    claimant = Claimant(user.id)
    own = campaign_slots(ClaimLimits.parse(campaign.claim_limits), campaign_id=campaign.id, claimant=claimant, now=now)
    gate = ClaimGate(claimant, PlatformLimits.off(), own).bans_already_checked()
    try:
        with db.session.begin_nested():
            packet = issue_packet(campaign, user, source=SOURCE, source_ref=f"{run.id}:{user.id}", now=now, gate=gate)
        return packet, ""
    except DepositExhausted as refused:
        pause_refused(campaign.id)
        return None, refused.code
    except BudgetExhausted as refused:
        alert_once("budget_exhausted", f"campaign {campaign.id}", text=f"audience run {run.id} ran out of budget")
        return None, refused.code
    except (LimitHit, RebateError) as refused:
        return None, refused.code


def work_run(run_id: int, now: datetime, chunk: int) -> str | None:
    """One step of a run in the caller's transaction (flushes; the caller commits): choose its members, or
    issue the next ``chunk`` treated members their packets, or finish it. The run's row is locked for the
    step (``SKIP LOCKED``: a run another node is working answers None); the run's status after the step."""
    run = db.session.execute(
        select(AudienceRun)
        .where(AudienceRun.id == run_id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if run is None or run.status == RunStatus.DONE:
        return None if run is None else run.status
    if run.status == RunStatus.PENDING:
        _choose_members(run, now)
        db.session.flush()
        return run.status
    todo = (
        db.session.execute(
            select(AudienceMember)
            .where(AudienceMember.run_id == run.id, AudienceMember.done.is_(False), AudienceMember.holdout.is_(False))
            .order_by(AudienceMember.id)
            .limit(chunk)
        )
        .scalars()
        .all()
    )
    if not todo:
        run.status, run.finished_at = RunStatus.DONE, now
        db.session.flush()
        return run.status
    campaign = db.session.execute(
        select(Campaign).where(Campaign.id == run.campaign_id).execution_options(populate_existing=True)
    ).scalar_one()
    users = {u.id: u for u in db.session.execute(select(User).where(User.id.in_([m.user_id for m in todo]))).scalars()}
    drafts, issued, refused = [], 0, 0
    for member in todo:
        packet, refusal = _issue_member(campaign, users[member.user_id], run, now)
        member.done = True
        if packet is None:
            member.refusal, refused = refusal[:40], refused + 1
            continue
        member.packet_id, issued = packet.id, issued + 1
        drafts.append(tell.packet_received(packet))  # the same notice as every packet given by another
    enqueue_many(drafts)
    db.session.execute(
        update(AudienceRun)
        .where(AudienceRun.id == run.id)
        .values(issued=AudienceRun.issued + issued, refused=AudienceRun.refused + refused)
        .execution_options(synchronize_session=False)
    )
    db.session.flush()
    return run.status


def open_runs(limit: int = 20) -> list[int]:
    """Runs not done yet, oldest first (a job works them off)."""
    return list(
        db.session.execute(
            select(AudienceRun.id)
            .where(AudienceRun.status.in_([RunStatus.PENDING, RunStatus.ISSUING]))
            .order_by(AudienceRun.id)
            .limit(limit)
        ).scalars()
    )
