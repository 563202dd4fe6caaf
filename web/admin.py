"""Admin API: merchants, products, operators and the audit log.

Merchant staff see only their own merchant; anything else answers 404 (not
403), so they cannot learn what exists. Every mutating action is audited in
the same transaction.
"""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, g
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ledger import balance_if_any, ref
from models import AccountKind, AuditLog, Merchant, Operator, OperatorRole, Product, db, operators, utcnow
from models.operators import Actor, audit, merchant_scope
from models.sql import long_reads_by
from rebate.scope import visible_merchant
from web.api import client_ip, endpoint
from web.errors import Conflict
from web.guards import MAX_ID
from web.schemas import Category, Id, Instant, Model, Name, OperatorName, Page, PositiveFen, Reason

bp = Blueprint("admin", __name__, url_prefix="/admin/api")

PLATFORM = (OperatorRole.ADMIN, OperatorRole.FINANCE, OperatorRole.SUPPORT)
ANY_OPERATOR = (*PLATFORM, OperatorRole.MERCHANT_STAFF)


def actor() -> Actor:
    """The signed-in operator at work, from this request's network address (for scopes and the audit log)."""
    return Actor(g.operator, client_ip())


def long_reads():
    """The long reads inside are the signed-in operator's: one at a time (``models.sql.reading_apart``)."""
    return long_reads_by(f"operator:{g.operator.id}")


def merchant_json(m: Merchant) -> dict:
    return {"id": m.id, "name": m.name, "status": m.status, "created_at": m.created_at.isoformat()}


def product_json(p: Product) -> dict:
    return {
        "id": p.id,
        "merchant_id": p.merchant_id,
        "name": p.name,
        "category": p.category,
        "price_fen": p.price_fen,
        "active": p.active,
    }


class CreateMerchant(Model):
    name: Name
    reason: Reason | None = None


class CreateProduct(Model):
    name: Name
    category: Category
    price_fen: PositiveFen
    reason: Reason | None = None


class CreateOperator(Model):
    username: OperatorName
    display_name: OperatorName
    role: OperatorRole
    merchant_id: Id | None = None
    reason: Reason


@endpoint(
    bp,
    "/merchants",
    methods=["POST"],
    auth="operator",
    roles=(OperatorRole.ADMIN,),
    body=CreateMerchant,
    idempotent=True,
    status=201,
)
def create_merchant(body: CreateMerchant):
    """Create a merchant."""
    merchant = Merchant(name=body.name)
    db.session.add(merchant)
    try:
        db.session.flush()
    except IntegrityError:
        raise Conflict(f"a merchant named {body.name!r} exists", code="duplicate_merchant") from None
    audit(actor(), "merchant.create", "merchant", merchant.id, body.reason, name=body.name)
    return merchant_json(merchant), 201


@endpoint(bp, "/merchants", auth="operator", roles=ANY_OPERATOR, query=Page)
def list_merchants(query: Page):
    """List merchants (merchant staff: only their own)."""
    stmt = select(Merchant).order_by(Merchant.id).limit(query.limit).offset(query.offset)
    if merchant_scope(g.operator) is not None:
        stmt = stmt.where(Merchant.id == merchant_scope(g.operator))
    return {"items": [merchant_json(m) for m in db.session.execute(stmt).scalars()]}


@endpoint(bp, "/merchants/<int:merchant_id>", auth="operator", roles=ANY_OPERATOR)
def get_merchant(merchant_id: int):
    """One merchant."""
    return merchant_json(visible_merchant(g.operator, merchant_id))


@endpoint(bp, "/merchants/<int:merchant_id>/deposit", auth="operator", roles=ANY_OPERATOR)
def get_deposit(merchant_id: int):
    """What the merchant's marketing deposit holds (merchant staff: their own)."""
    visible_merchant(g.operator, merchant_id)
    deposit = balance_if_any(ref(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", merchant_id))  # creating none
    return {"merchant_id": merchant_id, "deposit_fen": deposit}


@endpoint(
    bp,
    "/merchants/<int:merchant_id>/products",
    methods=["POST"],
    auth="operator",
    roles=(OperatorRole.ADMIN, OperatorRole.MERCHANT_STAFF),
    body=CreateProduct,
    idempotent=True,
    status=201,
)
def create_product(merchant_id: int, body: CreateProduct):
    """Add a product to a merchant's catalogue."""
    visible_merchant(g.operator, merchant_id)
    product = Product(merchant_id=merchant_id, name=body.name, category=body.category, price_fen=body.price_fen)
    db.session.add(product)
    try:
        db.session.flush()
    except IntegrityError:
        raise Conflict(f"product {body.name!r} exists for this merchant", code="duplicate_product") from None
    audit(
        actor(), "product.create", "product", product.id, body.reason, merchant_id=merchant_id, price_fen=body.price_fen
    )
    return product_json(product), 201


@endpoint(bp, "/merchants/<int:merchant_id>/products", auth="operator", roles=ANY_OPERATOR, query=Page)
def list_products(merchant_id: int, query: Page):
    """A merchant's products."""
    visible_merchant(g.operator, merchant_id)
    stmt = (
        select(Product)
        .where(Product.merchant_id == merchant_id)
        .order_by(Product.id)
        .limit(query.limit)
        .offset(query.offset)
    )
    return {"items": [product_json(p) for p in db.session.execute(stmt).scalars()]}


@endpoint(
    bp,
    "/operators",
    methods=["POST"],
    auth="operator",
    roles=(OperatorRole.ADMIN,),
    body=CreateOperator,
    idempotent=True,
    status=201,
)
def create_operator(body: CreateOperator):
    """Create an operator and return their first personal token (shown once)."""
    operator, token = operators.create_operator(
        actor(), body.username, body.display_name, body.role, body.merchant_id, body.reason
    )
    answer = {"id": operator.id, "username": operator.username, "role": operator.role, "token": token}
    answer["confirmed"] = operator.confirmed_at is not None  # false: it works once a second admin confirms it
    return answer, 201


class ConfirmOperator(Model):
    reason: Reason


def operator_json(o: Operator) -> dict:
    return {
        "id": o.id,
        "username": o.username,
        "display_name": o.display_name,
        "role": o.role,
        "merchant_id": o.merchant_id,
        "active": o.active,
        "created_at": o.created_at.isoformat(),
        "created_by_operator_id": o.created_by_operator_id,
        "confirmed_at": o.confirmed_at.isoformat() if o.confirmed_at else None,
        "confirmed_by_operator_id": o.confirmed_by_operator_id,
    }


class OperatorQuery(Page):
    unconfirmed: bool = Field(False, description="Only accounts waiting for a second admin's confirmation.")


@endpoint(bp, "/operators", auth="operator", roles=(OperatorRole.ADMIN,), query=OperatorQuery)
def list_operators(query: OperatorQuery):
    """Operator accounts, newest first (``unconfirmed=true``: those a second admin has yet to confirm)."""
    stmt = select(Operator).order_by(Operator.id.desc()).limit(query.limit).offset(query.offset)
    if query.unconfirmed:  # (a disabled account waits for nobody)
        stmt = stmt.where(Operator.confirmed_at.is_(None), Operator.active.is_(True))
    return {"items": [operator_json(o) for o in db.session.execute(stmt).scalars()]}


@endpoint(
    bp,
    "/operators/<int:operator_id>/confirm",
    methods=["POST"],
    auth="operator",
    roles=(OperatorRole.ADMIN,),
    body=ConfirmOperator,
    idempotent=True,
)
def confirm_operator(operator_id: int, body: ConfirmOperator):
    """A second admin confirms an admin, finance or support account another admin made; its tokens work from then on.
    Not its creator (403 same_operator), nor an account the creator made recently (403 approver_not_independent)."""
    return operator_json(operators.confirm_operator(actor(), operator_id, body.reason, utcnow()))


class DisableOperator(Model):
    reason: Reason


@endpoint(
    bp,
    "/operators/<int:operator_id>/disable",
    methods=["POST"],
    auth="operator",
    roles=(OperatorRole.ADMIN,),
    body=DisableOperator,
    idempotent=True,
)
def disable_operator(operator_id: int, body: DisableOperator):
    """Disable an account (someone left, a token leaked): its tokens are revoked and its console sessions end at
    once; audited. Not one's own (403 own_account); again: the same answer. No enabling again: a new account."""
    return operator_json(operators.disable_operator(actor(), operator_id, body.reason, utcnow()))


class AuditQuery(Page):
    operator_id: int | None = Field(None, gt=0, le=MAX_ID)
    action: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z_.]+$")] | None = Field(
        None,
        description="An action (`campaign.activate`), or every action of a kind with a trailing dot (`campaign.`).",
    )
    target_type: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z_]+$")] | None = None
    target_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    since: Instant | None = Field(None, description="Lines at or after this instant.")
    until: Instant | None = Field(None, description="Lines before this instant.")


@endpoint(bp, "/audit-log", auth="operator", roles=(OperatorRole.ADMIN, OperatorRole.FINANCE), query=AuditQuery)
def list_audit_log(query: AuditQuery):
    """The audit log, newest first; filtered by operator, action (or a kind of action), target, time."""
    stmt = select(AuditLog)
    if query.operator_id is not None:
        stmt = stmt.where(AuditLog.operator_id == query.operator_id)
    if query.action is not None:
        exact = not query.action.endswith(".")
        # ``_`` is a LIKE wildcard: ``risk_rules.`` must not match ``riskXrules.`` (nor ``____.`` every 4-letter kind)
        kind = AuditLog.action.startswith(query.action, autoescape=True)
        stmt = stmt.where(AuditLog.action == query.action if exact else kind)
    if query.target_type is not None:
        stmt = stmt.where(AuditLog.target_type == query.target_type)
    if query.target_id is not None:
        stmt = stmt.where(AuditLog.target_id == query.target_id)
    if query.since is not None:
        stmt = stmt.where(AuditLog.created_at >= query.since)
    if query.until is not None:
        stmt = stmt.where(AuditLog.created_at < query.until)
    rows = db.session.execute(stmt.order_by(AuditLog.id.desc()).limit(query.limit).offset(query.offset)).scalars()
    return {
        "items": [
            {
                "id": a.id,
                "operator_id": a.operator_id,
                "action": a.action,
                "target_type": a.target_type,
                "target_id": a.target_id,
                "reason": a.reason,
                "details": a.details,
                "created_at": a.created_at.isoformat(),
            }
            for a in rows
        ]
    }
