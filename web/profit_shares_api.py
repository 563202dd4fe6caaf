"""Profit shares (分账, service-provider mode) as operators read them: ``GET /admin/api/profit-shares``.

One row per profit-sharing order (``models.profit_sharing.ProfitShare``): its order, status, what it asked to
share and what it held for an operator, WeChat's answer (its order id, the last refusal or error) and the
receivers — the order's payouts on the ``profit_sharing`` rail, each with its amount, status and WeChat's
detail id. Read-only. Merchant staff see their own merchant's shares only (a filter naming another merchant
lists nothing); receivers' openids are masked as in the logs.
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, g
from pydantic import Field
from sqlalchemy import func, select

from models import Payout, ProfitShare, db
from models.operators import merchant_scope
from models.payouts import Rail
from models.profit_sharing import ShareStatus
from rebate.scope import visible_merchant
from web.admin import ANY_OPERATOR
from web.api import endpoint
from web.guards import MAX_ID
from web.logs import mask_value
from web.schemas import Page

bp = Blueprint("profit_shares", __name__, url_prefix="/admin/api")
STATUSES = tuple(s.value for s in ShareStatus)


class ShareQuery(Page):
    merchant_id: int | None = Field(None, gt=0, le=MAX_ID)
    order_id: int | None = Field(None, gt=0, le=MAX_ID)
    status: Literal[STATUSES] | None = None  # type: ignore[valid-type]


def _iso(moment) -> str | None:
    return moment.isoformat() if moment is not None else None


def receiver_json(p: Payout) -> dict:
    asked = p.request if isinstance(p.request, dict) else {}
    return {
        "payout_id": p.id,
        "user_id": p.user_id,
        "type": asked.get("type"),
        "account": mask_value(asked["account"]) if asked.get("account") else None,
        "amount_fen": p.amount_fen,
        "status": p.status,
        "wechat_ref": p.wechat_ref,
        "last_error": p.last_error,
    }


def share_json(row: ProfitShare, receivers: list[Payout]) -> dict:
    return {
        "id": row.id,
        "order_id": row.order_id,
        "merchant_id": row.merchant_id,
        "sub_mchid": row.sub_mchid,
        "transaction_id": row.transaction_id,
        "out_order_no": row.out_order_no,
        "status": row.status,
        "kind": row.kind,
        "due_at": _iso(row.due_at),
        "next_attempt_at": _iso(row.next_attempt_at),
        "attempts": row.attempts,
        "ratio_bps": row.ratio_bps,
        "shared_fen": row.shared_fen,
        "held_fen": row.held_fen,
        "wechat_order_id": row.wechat_order_id,
        "last_error": row.last_error,
        "created_at": _iso(row.created_at),
        "finished_at": _iso(row.finished_at),
        "receivers": [receiver_json(p) for p in receivers],
    }


@endpoint(bp, "/profit-shares", auth="operator", roles=ANY_OPERATOR, query=ShareQuery, tags=("profit_shares",))
def list_profit_shares(query: ShareQuery):
    """Profit shares newest first, by merchant, order and status, each with its receivers and WeChat's answer;
    ``counts`` by status over the other filters. Merchant staff: their own merchant's only."""
    where = []
    scope = merchant_scope(g.operator)
    if scope is not None:
        where.append(ProfitShare.merchant_id == scope)
    if query.merchant_id is not None:
        visible_merchant(g.operator, query.merchant_id)  # another merchant's: 404, as for its other things
        where.append(ProfitShare.merchant_id == query.merchant_id)
    if query.order_id is not None:
        where.append(ProfitShare.order_id == query.order_id)
    counts = dict(
        db.session.execute(select(ProfitShare.status, func.count()).where(*where).group_by(ProfitShare.status)).all()
    )
    if query.status is not None:
        where.append(ProfitShare.status == query.status)
    rows = list(
        db.session.execute(
            select(ProfitShare).where(*where).order_by(ProfitShare.id.desc()).limit(query.limit).offset(query.offset)
        ).scalars()
    )
    by_order: dict[int, list[Payout]] = {row.order_id: [] for row in rows}
    if by_order:
        payouts = db.session.execute(
            select(Payout).where(Payout.order_id.in_(by_order), Payout.rail == Rail.PROFIT_SHARING).order_by(Payout.id)
        ).scalars()
        for payout in payouts:
            by_order[payout.order_id].append(payout)
    return {
        "items": [share_json(row, by_order[row.order_id]) for row in rows],
        "counts": {status: counts.get(status, 0) for status in STATUSES},
        "limit": query.limit,
        "offset": query.offset,
    }
