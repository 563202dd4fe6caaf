"""Review cases: opened by the payment (an order whose rebates are held) and by the collusion job.

Opening is idempotent: one case per order and one per community (unique keys); a second opening of
the same order adds nothing. Deciding a case moves money and lives above (``rebate.reviews``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from models import CaseStatus, ReviewCase, db


def open_order_case(
    order_id: int, user_id: int, merchant_id: int, held_fen: int, score: int | None, reasons: list[str], now: datetime
) -> ReviewCase:
    """The order's case (opened now, or the one already open), holding ``held_fen`` of rebates."""
    return _open(
        ReviewCase.order_id,
        kind="order",
        order_id=order_id,
        user_id=user_id,
        merchant_id=merchant_id,
        held_fen=held_fen,
        score=score,
        reasons=list(reasons),
        opened_at=now,
    )


def open_community_case(
    community_id: int, merchant_id: int | None, concerned_fen: int, reasons: list[str], now: datetime
) -> ReviewCase:
    """The community's case (opened now, or the one already there)."""
    return _open(
        ReviewCase.community_id,
        kind="community",
        community_id=community_id,
        merchant_id=merchant_id,
        held_fen=concerned_fen,
        reasons=list(reasons),
        opened_at=now,
    )


def _open(key, **fields) -> ReviewCase:
    """The case whose unique ``key`` column has the value in ``fields``, or a new open one with ``fields``."""
    found = db.session.execute(select(ReviewCase).where(key == fields[key.key])).scalar_one_or_none()
    if found is not None:
        return found
    case = ReviewCase(status=CaseStatus.OPEN, **fields)
    db.session.add(case)
    db.session.flush()
    return case


def lock_case(case_id: int) -> ReviewCase | None:
    """The case, row-locked and read as it is now (two reviewers deciding at once: one after the other)."""
    stmt = (
        select(ReviewCase).where(ReviewCase.id == case_id).with_for_update().execution_options(populate_existing=True)
    )
    return db.session.execute(stmt).scalar_one_or_none()


def members_by_kind(members: list[str]) -> dict[str, list[str]]:
    """A community's members (``"user:12"``, ``"device:ab…"``) grouped by kind: {"user": ["12"], …}."""
    grouped: dict[str, list[str]] = {"user": [], "device": [], "merchant": [], "net": []}
    for member in members:
        kind, _, value = str(member).partition(":")
        if kind in grouped and value:
            grouped[kind].append(value)
    return grouped
