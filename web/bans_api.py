"""Bans: ``POST /admin/api/bans``, ``DELETE /admin/api/bans/<id>``, ``POST /admin/api/bans/<id>/lift/approve`` and
``…/lift/reject`` (admin, support), ``GET /admin/api/bans`` and ``GET /admin/api/bans/<id>`` (platform roles). What a
ban does is ``rebate.ban_ops``.

A lift ends the ban in its request; what the ban held on many orders is released by a job afterwards, a batch per
transaction: the ban's ``release`` shows how far (``running``, the orders walked and left; ``done``; ``stopped`` by
the same ban put back), and whether it has ``stalled``.

A ban two operators made (``lift_needs_approval``: a review case a second reviewer approved) is lifted by two:
``DELETE`` answers 202 with the ban still in force and the proposal recorded (``lift_pending``; another proposal
meanwhile: 409 ``lift_pending``); a different operator's ``…/lift/approve`` lifts it (the proposer: 403
``same_operator``; an account of the proposer's making: 403 ``approver_not_independent``; nothing waiting: 409
``no_lift_proposed``), ``…/lift/reject`` closes the proposal with the ban in force."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from flask import Blueprint, current_app
from pydantic import BeforeValidator, Field

from models import BanSubject, OperatorRole, utcnow
from payouts import MoneySettings
from rebate import ban_ops
from risk.bans import made_by_two
from web.admin import PLATFORM, actor
from web.api import endpoint
from web.errors import ValidationFailed
from web.schemas import Instant, Model, Page, Reason

bp = Blueprint("bans", __name__, url_prefix="/admin/api")

BANNERS = (OperatorRole.ADMIN, OperatorRole.SUPPORT)


def _not_a_flag(value):
    """A JSON true or false is no number of days (pydantic's int would take true as 1: a one-day ban)."""
    if isinstance(value, bool):
        raise ValueError("a ban lasts a whole number of days, not true or false")
    return value


# 1 to 3650 days: a number, or its digits as the console's form sends them; never a boolean
BanDays = Annotated[int, Field(ge=1, le=3650), BeforeValidator(_not_a_flag)]


class CreateBan(Model):
    subject: BanSubject
    value: Annotated[str, Field(min_length=1, max_length=64)]
    reason: Reason
    ends_at: Instant | None = None
    days: BanDays | None = None


class LiftBan(Model):
    reason: Reason


class BanQuery(Page):
    subject: Literal["user", "device", "merchant", "net"] | None = None
    value: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    active: bool | None = None


@endpoint(bp, "/bans", methods=["POST"], auth="operator", roles=BANNERS, body=CreateBan, idempotent=True, status=201)
def create_ban(body: CreateBan):
    """Ban a user, device, merchant or network address (one IP, an IPv4 /24 or IPv6 /48), until ends_at or for
    ``days`` (neither: until lifted)."""
    now = utcnow()
    if body.ends_at is not None and body.days is not None:
        raise ValidationFailed("send ends_at or days, not both", code="ban_ends_at")
    ends_at = body.ends_at or (now + timedelta(days=body.days) if body.days else None)
    ban = ban_ops.create_ban(actor(), body.subject, body.value, body.reason, now, ends_at=ends_at)
    return ban_ops.ban_json(ban, now), 201


@endpoint(bp, "/bans/<int:ban_id>", methods=["DELETE"], auth="operator", roles=BANNERS, body=LiftBan)
def lift_ban(ban_id: int, body: LiftBan):
    """Lift a ban (again: the same answer); the person or merchant is active again unless another ban remains.

    A ban two operators made is not lifted yet: 202 with the proposal recorded, for another operator to approve."""
    now = utcnow()
    ban = ban_ops.lift_ban(actor(), ban_id, body.reason, now, money=MoneySettings.from_config(current_app.config))
    return ban_ops.ban_json(ban, now), 200 if ban.lifted_at is not None else 202


# /openapi.json lists every status an operation answers (web/openapi.py reads ``also`` beside the success status)
lift_ban._api["also"] = {
    202: "Accepted, not lifted: a ban two operators made; the lift is proposed (lift_pending) and the ban stays in "
    "force until a second operator approves it (POST …/lift/approve)"
}


@endpoint(
    bp,
    "/bans/<int:ban_id>/lift/approve",
    methods=["POST"],
    auth="operator",
    roles=BANNERS,
    body=LiftBan,
    idempotent=True,
)
def approve_ban_lift(ban_id: int, body: LiftBan):
    """Approve another operator's proposal to lift a ban two operators made: it is lifted now (once lifted: the same
    answer)."""
    now = utcnow()
    money = MoneySettings.from_config(current_app.config)
    return ban_ops.ban_json(ban_ops.approve_lift(actor(), ban_id, body.reason, now, money=money), now)


@endpoint(
    bp,
    "/bans/<int:ban_id>/lift/reject",
    methods=["POST"],
    auth="operator",
    roles=BANNERS,
    body=LiftBan,
    idempotent=True,
)
def reject_ban_lift(ban_id: int, body: LiftBan):
    """Reject (or, its proposer, withdraw) the proposal to lift a ban: the ban stays in force."""
    now = utcnow()
    return ban_ops.ban_json(ban_ops.reject_lift(actor(), ban_id, body.reason, now), now)


@endpoint(bp, "/bans/<int:ban_id>", auth="operator", roles=PLATFORM)
def get_ban(ban_id: int):
    """One ban; lifted, how far the release of what it held has gone (``release``: ``running``, ``done`` or
    ``stopped``, the orders walked and left, the fen paid, whether it has ``stalled``)."""
    now = utcnow()
    return ban_ops.ban_json(ban_ops.get_ban(ban_id), now)


@endpoint(bp, "/bans", auth="operator", roles=PLATFORM, query=BanQuery)
def list_bans(query: BanQuery):
    """Bans, newest first, by subject, value and whether active now."""
    now = utcnow()
    bans = ban_ops.list_bans(query.subject, query.value, query.active, now, query.limit, query.offset)
    by_two = made_by_two(b.id for b in bans)
    return {"items": [ban_ops.ban_json(b, now, by_two=b.id in by_two) for b in bans]}
