"""A warm claim compiles no SQL (issue 11): every statement comes from SQLAlchemy's compiled cache.

Compiling a statement cost more than running it on the claim path (the limits' multi-row upsert was
compiled again on every claim: a dialect ``insert().on_conflict_do_update()`` has no cache key). So a
second claim of the same shape must find every statement it sends in the cache: a count of cache
misses, never a time. And the limits' upsert, now a text statement, still marks the transaction as
written (``rebate.claims`` runs a claim after other writes in a savepoint).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.engine.default import CACHE_HIT

from models import User, db, utcnow
from rebate.claims import _own_transaction, claim_from_campaign
from risk import Claimant, PlatformLimits, take_or_refuse
from risk.limits import Slot

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]}
ON = PlatformLimits()  # the settings' defaults: every platform-wide limit on


@contextmanager
def not_cached() -> Iterator[list[str]]:
    """The statements sent inside the block that were compiled for it (not found in the compiled cache)."""
    compiled: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if context is not None and context.compiled is not None and context.cache_hit is not CACHE_HIT:
            compiled.append(f"{context.cache_hit.name}: {statement.split(chr(10))[0][:120]}")

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield compiled
    finally:
        event.remove(db.engine, "before_cursor_execute", record)


def claim(campaign_id: int, user: User, ip: str) -> None:
    claimant = Claimant(user.id, ip, f"device-{user.id}")
    claim_from_campaign(campaign_id, db.session.get(User, user.id), utcnow(), claimant=claimant, limits=ON)
    db.session.commit()


def test_a_warm_claim_compiles_no_statement(app, make_campaign, make_user):
    # given: a self-serve campaign with its default limits, claimed once (the statements compiled then)
    campaign_id = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00, trigger={"kind": "claim"}).id
    amy, ben = make_user(), make_user()
    db.session.commit()
    claim(campaign_id, amy, "203.0.113.1")

    # when: another person claims, from another address and device (the same shape of limits)
    with not_cached() as compiled:
        claim(campaign_id, ben, "203.0.113.2")

    # then: every statement came from the compiled cache
    assert compiled == []


def test_taking_limit_slots_marks_the_transaction_written(app, make_user):
    # given: a transaction that has written nothing yet
    cy = make_user()
    db.session.commit()
    assert _own_transaction()

    # when: a limit slot is taken (the text upsert)
    take_or_refuse([Slot(f"test:{cy.id}", "-", "test_limit", "at most one", limit=1)], utcnow())

    # then: the claim machinery knows the transaction wrote
    assert not _own_transaction()
    db.session.rollback()
