"""The mini-program API under /api/v1: packets, orders, wallet and rebates of the signed-in user.

Amounts and openids come from our records and the session, never from the
client. Someone else's packet or order answers 404.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated

from flask import Blueprint, current_app
from pydantic import Field, model_validator
from sqlalchemy import or_, select, update

from ledger import balances, ref
from models import (
    AccountKind,
    Campaign,
    CampaignStatus,
    LedgerAccount,
    Order,
    Payout,
    Product,
    Rebate,
    RebateAdjustment,
    Receivable,
    RedPacket,
    User,
    db,
    utcnow,
)
from models.payouts import TERMINAL
from payouts import MoneySettings
from payouts.rails import unconfigured_because
from rebate import create_order
from rebate.awards import RAIL_OF_FORM
from rebate.claims import claim_by_code
from rebate.orders import LineRequest
from rebate.preferences import PERSON_FORMS, Reach, choices, rebate_form_of, set_rebate_form
from rebate.rules import Form
from rebate.wallet import WalletAsk
from web.api import client_ip, endpoint
from web.auth import current_user
from web.errors import NotFound, TooManyRequests
from web.growth_api import channel, claimant, device_id, platform_limits, refusal_answered
from web.payment_api import prepay_after_commit, service_provider
from web.rules_page import rules_links
from web.schemas import Category, Id, Model, NonNegativeFen, Page
from web.views import order_json, packet_json, rebate_json

bp = Blueprint("user_api", __name__, url_prefix="/api/v1")


class Claim(Model):
    code: Annotated[str, Field(min_length=6, max_length=32, pattern=r"^[A-Za-z0-9]+$")]


class Line(Model):
    product_id: Id
    quantity: Annotated[int, Field(strict=True, ge=1, le=999)]


class CreateOrder(Model):
    lines: Annotated[list[Line], Field(min_length=1, max_length=50)]
    red_packet_id: Id | None = None
    red_packet_ids: Annotated[list[Id], Field(min_length=1, max_length=5)] | None = None  # stacking
    use_balance_fen: NonNegativeFen = 0  # the caller's rebate balance to spend (capped: 1 fen is always paid)
    use_points: NonNegativeFen = 0  # … and points, at POINT_VALUE_FEN each

    @model_validator(mode="after")
    def one_way_to_name_packets(self):
        if self.red_packet_id is not None and self.red_packet_ids is not None:
            raise ValueError("send red_packet_id or red_packet_ids, not both")
        return self

    @property
    def packets(self) -> list[int]:
        return self.red_packet_ids or ([self.red_packet_id] if self.red_packet_id else [])


@endpoint(bp, "/red-packets/claim", methods=["POST"], body=Claim, idempotent=True, status=201)
def claim(body: Claim):
    """Claim a red packet by its code; claim limits apply and the budget is reserved now."""
    user = current_user()
    with refusal_answered():
        packet = claim_by_code(
            body.code, user, utcnow(), claimant=claimant(user), limits=platform_limits(), channel=channel()
        )
    return packet_json(packet), 201


@endpoint(bp, "/me/red-packets", query=Page)
def my_packets(query: Page):
    """The caller's red packets, newest first, each with links to its campaign's public rules at the
    rules version the packet pays under."""
    rows = db.session.execute(
        select(RedPacket)
        .where(RedPacket.owner_id == current_user().id)
        .order_by(RedPacket.id.desc())
        .limit(query.limit)
        .offset(query.offset)
    ).scalars()
    return {"items": [{**packet_json(p), **rules_links(p.campaign_id, p.rules_version)} for p in rows]}


@endpoint(bp, "/orders", methods=["POST"], body=CreateOrder, idempotent=True, status=201)
def new_order(body: CreateOrder):
    """Create an order from product lines, optionally spending the caller's red packets, rebate balance
    (``use_balance_fen``) and points (``use_points``). The wallet use is capped so at least 1 fen is paid; the
    answer's ``wallet`` says what was asked and what was used. Asking for more than the caller holds is 409
    (``insufficient_balance`` / ``insufficient_points``), as is any wallet use when FUND_FLOW is
    service_provider (``wallet_not_in_service_provider_mode``)."""
    lines = [LineRequest(li.product_id, li.quantity) for li in body.lines]
    cfg = current_app.config
    wallet = WalletAsk(
        body.use_balance_fen,
        body.use_points,
        point_value_fen=MoneySettings.from_config(cfg).point_value_fen,
        service_provider=service_provider(),
    )
    order = create_order(
        current_user(),
        lines,
        body.packets,
        utcnow(),
        channel(),
        device=device_id(),
        ip=client_ip(),
        wallet=wallet,
        service_provider=service_provider(),
    )
    prepay_after_commit(order.id, order.user_id)  # runs after the commit: no transaction across the WeChat call
    body_json = order_json(order)
    body_json["wallet"]["asked"] = {"balance_fen": body.use_balance_fen, "points_count": body.use_points}
    return body_json, 201


def own_order(order_id: int) -> Order:
    order = db.session.get(Order, order_id)
    if order is None or order.user_id != current_user().id:
        raise NotFound("no such order")
    return order


@endpoint(bp, "/orders/<int:order_id>")
def get_order(order_id: int):
    """One of the caller's orders, with the caller's rebates on it (the consumer's, and any the caller earns):
    what the issuer or an inviter earned, or why not, is theirs to see."""
    order = own_order(order_id)
    viewer = current_user().id
    mine = (Rebate.role == "consumer") | ((Rebate.beneficiary_type == "user") & (Rebate.beneficiary_id == viewer))
    stmt = select(Rebate).where(Rebate.order_id == order.id, mine).order_by(Rebate.id)
    rebates = db.session.execute(stmt).scalars().all()
    told = adjustments_of([r.id for r in rebates])
    return {**order_json(order), "rebates": [rebate_json(r, adjustments=told.get(r.id, [])) for r in rebates]}


def adjustments_of(rebate_ids: list[int]) -> dict[int, list[RebateAdjustment]]:
    """What was clawed back or cancelled of each rebate, in order (its explanation says so), in one statement."""
    rows = db.session.execute(
        select(RebateAdjustment).where(RebateAdjustment.rebate_id.in_(rebate_ids)).order_by(RebateAdjustment.id)
    ).scalars()
    by_rebate: dict[int, list[RebateAdjustment]] = {}
    for adj in rows:
        by_rebate.setdefault(adj.rebate_id, []).append(adj)
    return by_rebate


WALLET_ACCOUNTS = (
    AccountKind.USER_CASH,
    AccountKind.USER_POINTS,
    AccountKind.USER_CASH_HELD,
    AccountKind.USER_POINTS_HELD,
    AccountKind.USER_OWES_MERCHANTS,
    AccountKind.USER_STAKE,
    AccountKind.USER_POINT_STAKE,
)


def _one_snapshot() -> None:
    """Read what follows as of one moment. On PostgreSQL each statement of a READ COMMITTED transaction sees what
    was committed when it began: a withdrawal committed between reading the payouts in progress and the balance
    showed its money in neither (and an order's hold between the balance and the held one, in both). A fresh
    REPEATABLE READ transaction reads everything in the snapshot of its first statement. (On SQLite the read's
    ``BEGIN IMMEDIATE`` already keeps every writer out until it ends.)"""
    if db.engine.dialect.name != "postgresql":
        return
    db.session.rollback()  # nothing written: the signed-in user's row was only read
    db.session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


@endpoint(bp, "/me/wallet")
def wallet():
    """Cash balance, points, what unpaid orders and challenge stakes hold of them, and anything owed back after
    refunds."""
    user_id = current_user().id
    _one_snapshot()
    owed = (
        db.session.execute(
            select(Receivable).where(
                Receivable.beneficiary_type == "user",
                Receivable.beneficiary_id == user_id,
                Receivable.outstanding_fen > 0,
            )
        )
        .scalars()
        .all()
    )
    in_transit = (
        db.session.execute(select(Payout).where(Payout.user_id == user_id, Payout.status.notin_(list(TERMINAL))))
        .scalars()
        .all()
    )
    # the person's accounts that exist (one never used holds 0; a read creates none), their balances in one statement
    codes = {ref(kind, "user", user_id).code: kind for kind in WALLET_ACCOUNTS}
    accounts = db.session.execute(select(LedgerAccount).where(LedgerAccount.code.in_(codes))).scalars().all()
    amounts = balances(accounts)
    by_kind = {codes[a.code]: amounts[a.id] for a in accounts}
    held = {kind: by_kind.get(kind, 0) for kind in WALLET_ACCOUNTS}
    return {
        "cash_fen": held[AccountKind.USER_CASH],
        "points": held[AccountKind.USER_POINTS],
        # reserved by the caller's unpaid orders (``use_balance_fen`` / ``use_points``): back if they close unpaid
        "held_for_orders_fen": held[AccountKind.USER_CASH_HELD],
        "points_held_for_orders": held[AccountKind.USER_POINTS_HELD],
        # reserved as stakes in challenges not yet settled, and a lost stake funding prize packets not yet spent
        # (README, "Challenges among friends": the stake column): out of ``cash_fen`` / ``points`` meanwhile
        "staked_fen": held[AccountKind.USER_STAKE],
        "points_staked": held[AccountKind.USER_POINT_STAKE],
        # what refunds took back after it had left: ``cash``/``points`` from the next rebate of that kind;
        # ``share`` is owed to the merchant whose share it was, settled only by that merchant's next share
        "receivables": [
            {"kind": r.kind, "outstanding_fen": r.outstanding_fen, "campaign_id": r.campaign_id} for r in owed
        ],
        "owed_to_merchants_fen": -held[AccountKind.USER_OWES_MERCHANTS],
        "payouts_in_progress_fen": sum(p.amount_fen for p in in_transit),
    }


@endpoint(bp, "/me/rebates", query=Page)
def my_rebates(query: Page):
    """Every rebate decision about the caller: paid, reduced or missed, with the reason in words."""
    user = current_user()
    rows = db.session.execute(
        select(Rebate, Order)
        .join(Order, Order.id == Rebate.order_id)
        .where(
            ((Order.user_id == user.id) & (Rebate.role == "consumer"))
            | ((Rebate.beneficiary_type == "user") & (Rebate.beneficiary_id == user.id))
        )
        .order_by(Rebate.id.desc())
        .limit(query.limit)
        .offset(query.offset)
    ).all()
    by_rebate = adjustments_of([r.id for r, _ in rows])
    return {"items": [rebate_json(r, order, by_rebate.get(r.id, []), viewer_id=user.id) for r, order in rows]}


@endpoint(bp, "/merchants/<int:merchant_id>/products", query=Page)
def merchant_products(merchant_id: int, query: Page):
    """What a merchant sells (active products only)."""
    rows = db.session.execute(
        select(Product)
        .where(Product.merchant_id == merchant_id, Product.active.is_(True))
        .order_by(Product.id)
        .limit(query.limit)
        .offset(query.offset)
    ).scalars()
    return {"items": [{"id": p.id, "name": p.name, "category": p.category, "price_fen": p.price_fen} for p in rows]}


RebateForm = StrEnum("RebateForm", {f.name: f.value for f in PERSON_FORMS})  # every form but a merchant's credit


class Preferences(Model):
    rebate_form: RebateForm | None = Field(
        description="how you would like rebates paid where a campaign lets you choose; null: each campaign's default"
    )


def reach() -> Reach:
    """The WeChat rails this deployment runs and the appid each pays openids under (from the settings)."""
    cfg = current_app.config
    rails_on = frozenset(form for form, rail in RAIL_OF_FORM.items() if unconfigured_because(rail, cfg) is None)
    appids = {
        Form.WECHAT_CHANGE: cfg["WECHAT_APPID"],
        Form.WECHAT_COUPON: cfg["WECHAT_APPID"],
        Form.CASH_RED_PACKET: cfg.get("WECHAT_OA_APPID"),
    }
    return Reach(rails_on=rails_on, appids=appids)


def preferences_json(user) -> dict:
    form = rebate_form_of(user.id)
    return {"rebate_form": form.value if form else None, "choices": choices(user, reach())}


@endpoint(bp, "/me/preferences")
def get_preferences():
    """The caller's rebate form (null: each campaign's default) and every form, with whether they can receive it.

    A choice applies where a campaign's rule allows several forms for the caller's side; elsewhere the rule's
    form is paid."""
    return preferences_json(current_user())


@endpoint(bp, "/me/preferences", methods=["PUT"], body=Preferences, idempotent=True)
def put_preferences(body: Preferences):
    """Choose how rebates are paid where a campaign allows several forms (null: the campaigns' defaults).

    A form the caller cannot receive (paid to an openid they have none for, or a rail not switched on) is
    409 ``rebate_form_unavailable``, with the reason; nothing changes."""
    user = current_user()
    set_rebate_form(user, None if body.rebate_form is None else Form(body.rebate_form), reach())
    return preferences_json(user)


# A person's region: a campaign limited to ``regions`` takes only people whose region is one of them (the same words,
# compared exactly: ``rebate.packets.check_audience`` and the claim in one statement, ``rebate.claim_at_once``).
# The person says it; it changes at most once every REGION_CHANGE_EVERY after they set it, so nobody hops from region
# to region collecting every region's packets: a month is longer than a flash campaign runs, and a packet of the old
# region's campaigns cannot be spent while the person is elsewhere (the order checks the audience again). The first
# setting is free; setting the region one has changes nothing (and does not start the wait again).
REGION_CHANGE_EVERY = timedelta(days=30)
MAX_CAMPAIGN_REGIONS = 200  # the regions running campaigns name, offered to pick from


class RegionIn(Model):
    region: Category = Field(
        description="the person's region, in the words campaigns use for their ``regions`` (``campaign_regions`` "
        "of GET /api/v1/me/region lists them): 1 to 32 letters, digits, ``_`` or ``-``"
    )


def _changeable_at(user: User) -> datetime | None:
    return None if user.region_set_at is None else user.region_set_at + REGION_CHANGE_EVERY


def campaign_regions() -> list[str]:
    """The regions active campaigns are limited to, sorted: what a person picks from for their region to match
    (they are published on each campaign's rules page already)."""
    rows = db.session.execute(select(Campaign.regions).where(Campaign.status == CampaignStatus.ACTIVE)).scalars()
    named = sorted({r for regions in rows for r in (regions or []) if isinstance(r, str)})
    return named[:MAX_CAMPAIGN_REGIONS]


def region_json(user: User, now: datetime) -> dict:
    changeable_at = _changeable_at(user)
    return {
        "region": user.region,
        "set_at": user.region_set_at.isoformat() if user.region_set_at else None,
        # null: the region may be set or changed now
        "changeable_at": changeable_at.isoformat() if changeable_at is not None and changeable_at > now else None,
        "change_every_days": REGION_CHANGE_EVERY.days,
        "campaign_regions": campaign_regions(),
    }


@endpoint(bp, "/me/region")
def get_region():
    """The caller's region (null: not set: no campaign limited to regions takes them), when they set it, from when
    they may change it, and the regions running campaigns are limited to."""
    return region_json(current_user(), utcnow())


@endpoint(bp, "/me/region", methods=["PUT"], body=RegionIn, idempotent=True, key_with_effects=True)
def put_region(body: RegionIn):
    """Set the caller's region, which campaigns limited to regions match exactly (see ``campaign_regions``).

    The first setting is free; a change waits 30 days after the last one: sooner is 429 ``region_change_too_soon``
    with ``Retry-After`` and ``details.changeable_at``, and nothing changes. Setting the region one has answers it as
    it is (the wait does not start again)."""
    user, now = current_user(), utcnow()
    region = body.region
    changed = db.session.execute(  # one conditional UPDATE: of two changes at once, the second finds the wait begun
        update(User)
        .where(
            User.id == user.id,
            or_(User.region_set_at.is_(None), User.region_set_at <= now - REGION_CHANGE_EVERY),
            or_(User.region.is_(None), User.region != region),
        )
        .values(region=region, region_set_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.refresh(user)
    if changed != 1 and user.region != region:
        changeable_at = _changeable_at(user)
        wait = max(1, math.ceil((changeable_at - now).total_seconds()))
        raise TooManyRequests(
            f"your region was set on {user.region_set_at.date().isoformat()} and changes at most once every "
            f"{REGION_CHANGE_EVERY.days} days: it can change from {changeable_at.isoformat()}",
            code="region_change_too_soon",
            retry_after=wait,
            details={"region": user.region, "changeable_at": changeable_at.isoformat()},
        )
    return region_json(user, now)
