"""The claim's hot path (issue 11): a warm claim compiles no SQL; a self-serve claim's refusals rank as before.

A warm claim's every statement comes from SQLAlchemy's compiled cache.

Compiling a statement cost more than running it on the claim path (the limits' multi-row upsert was
compiled again on every claim: a dialect ``insert().on_conflict_do_update()`` has no cache key). So a
second claim of the same shape must find every statement it sends in the cache: a count of cache
misses, never a time. And the limits' upsert, now a text statement, still marks the transaction as
written (``rebate.claims`` runs a claim after other writes in a savepoint).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event
from sqlalchemy.engine.default import CACHE_HIT

from ledger import account_ids, ref
from models import AccountKind, User, db, utcnow
from models.sql import wrote_nothing_yet
from rebate.claims import claim_from_campaign
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
    assert wrote_nothing_yet()

    # when: a limit slot is taken (the text upsert)
    take_or_refuse([Slot(f"test:{cy.id}", "-", "test_limit", "at most one", limit=1)], utcnow())

    # then: the claim machinery knows the transaction wrote
    assert not wrote_nothing_yet()
    db.session.rollback()


def test_a_ledger_insert_marks_the_transaction_written(app, make_user):
    # given: a transaction that has written nothing yet
    cy = make_user()
    db.session.commit()
    assert wrote_nothing_yet()

    # when: the ledger creates an account (models.sql.insert_ignoring, a text() statement)
    account_ids([ref(AccountKind.USER_POINTS, "user", cy.id)])

    # then: the claim machinery knows the transaction wrote (a refusal must not roll that back with it)
    assert not wrote_nothing_yet()
    db.session.rollback()


def test_a_core_statement_on_the_connection_notes_its_writes(app):
    """``models.sql.execute_core`` skips the ORM's execution layer but not what its event noted."""
    from sqlalchemy import func, select, text, update

    from models.sql import WRITES, execute_core

    users = User.__table__
    # given: a transaction that has written nothing yet
    db.session.commit()
    assert wrote_nothing_yet()
    # when: a plain read runs, and a write with writes=False (an Idempotency-Key written with the effects)
    execute_core(select(func.count()).select_from(users))
    execute_core(text("UPDATE users SET region = region WHERE id = 0").execution_options(**WRITES), writes=False)
    # then: still nothing written, as far as the claim machinery knows
    assert wrote_nothing_yet()
    # when: a text statement marked WRITES runs (it matches no row: what counts is that it may write)
    execute_core(text("UPDATE users SET region = region WHERE id = 0").execution_options(**WRITES))
    # then: the transaction is noted as written, until it ends
    assert not wrote_nothing_yet()
    db.session.rollback()
    assert wrote_nothing_yet()
    # and a Core UPDATE is a write without being marked
    execute_core(update(users).where(users.c.id == 0).values(region="x"))
    assert not wrote_nothing_yet()
    db.session.rollback()


def test_a_core_statement_on_the_connection_is_what_session_execute_does_for_it(app):
    from sqlalchemy import func, select, update

    from models.sql import execute_core

    users = User.__table__
    north = select(func.count()).select_from(users).where(users.c.region == "north")
    # given: a new user, pending in the session
    db.session.add(User(region="north"))
    # when: a Core statement reads, as Session.execute would run it and as execute_core does
    # then: neither flushes the pending row first (only ORM statements autoflush)
    assert db.session.execute(north).scalar_one() == 0
    assert execute_core(north).scalar_one() == 0
    # and an ORM statement is refused: it would lose the ORM's semantics
    with pytest.raises(TypeError, match="Core statements only"):
        execute_core(update(User).values(region="south"))
    with pytest.raises(TypeError, match="Core statements only"):
        execute_core(select(User.id))
    db.session.rollback()


# The refusals of a self-serve claim, which takes its limits before its budget (rebate.packets._budget_last),
# rank as they always have: the campaign's own limits, then the budget, then the platform-wide limits.


def refusal(campaign_id: int, user: User, limits: PlatformLimits) -> str:
    """What a claim answers: "granted", or the refusal's code (kept and committed, as the shell does)."""
    try:
        claim_from_campaign(
            campaign_id, db.session.get(User, user.id), utcnow(), claimant=Claimant(user.id), limits=limits
        )
    except Exception as refused:  # noqa: BLE001 - every refusal is checked by its code
        db.session.commit()  # what the shell does: keep the refusal
        return getattr(refused, "code", repr(refused))
    db.session.commit()
    return "granted"


def self_serve(make_campaign, **fields) -> int:
    return make_campaign(RULES, packet_amount_fen=10_00, trigger={"kind": "claim"}, **fields).id


def test_the_campaigns_own_limit_refuses_before_its_budget(app, make_campaign, make_user):
    # given: a campaign of one packet, which dee has
    campaign_id = self_serve(make_campaign, max_packets=1)
    dee = make_user()
    db.session.commit()
    assert refusal(campaign_id, dee, PlatformLimits.off()) == "granted"

    # when / then: she claims again: her per-person limit and the count budget both refuse; the limit is said
    assert refusal(campaign_id, dee, PlatformLimits.off()) == "person_limit"


def test_the_budget_refuses_before_a_platform_limit(app, make_campaign, make_user):
    # given: one packet a day per person across the platform, which eli took; a campaign whose one packet is gone
    one_a_day = PlatformLimits(0, 0, 1, 0, 0, 0)
    first, empty = self_serve(make_campaign), self_serve(make_campaign, max_packets=1)
    eli, flo = make_user(), make_user()
    db.session.commit()
    assert refusal(first, eli, one_a_day) == "granted"
    assert refusal(empty, flo, one_a_day) == "granted"

    # when / then: eli claims from the empty campaign: the budget and his daily limit refuse; the budget is said
    assert refusal(empty, eli, one_a_day) == "packets_exhausted"


def test_a_platform_limit_refuses_and_leaves_the_budget_as_it_was(app, make_campaign, make_user):
    # given: one packet a day per person across the platform, which gil took
    from models import Campaign, RedPacket
    from tests.test_claim_sql import count

    one_a_day = PlatformLimits(0, 0, 1, 0, 0, 0)
    first, second = self_serve(make_campaign), self_serve(make_campaign, budget_limit_fen=1_000_00)
    gil = make_user()
    db.session.commit()
    assert refusal(first, gil, one_a_day) == "granted"

    # when: gil claims from another campaign
    said = refusal(second, gil, one_a_day)

    # then: refused for the platform's daily limit; the other campaign's budget and packets as they were
    assert said == "platform_person_daily_limit"
    c = db.session.get(Campaign, second)
    assert (c.packets_issued, c.budget_reserved_fen) == (0, 0)
    assert count(RedPacket) == 1


def test_self_serve_and_code_claims_behind_one_address_race_without_deadlock(
    app, make_user, make_campaign, user_headers
):
    # given: a self-serve campaign with 5 claims a day per address, which also has codes; 24 people behind one
    # address (the test client's), half claiming straight from the campaign, half by a code, all at once
    from collections import Counter

    from sqlalchemy import func, select

    from models import RedPacket
    from rebate.packets import generate_batch
    from tests.concurrency import post_together

    ip_limits = {"per_ip_per_day": 5, "min_interval_seconds": None, "per_person": None}
    campaign = make_campaign(RULES, packet_amount_fen=10_00, trigger={"kind": "claim"}, claim_limits=ip_limits)
    codes = [p.claim_code for p in generate_batch(campaign, 12, utcnow(), batch_ref="race")]
    campaign_id = campaign.id
    db.session.commit()
    people = [make_user() for _ in range(24)]
    direct = [(f"/api/v1/campaigns/{campaign_id}/claim", user_headers(u), {}) for u in people[:12]]
    by_code = [
        ("/api/v1/red-packets/claim", user_headers(u), {"code": c}) for u, c in zip(people[12:], codes, strict=True)
    ]

    # when: all claim at once (the two paths lock the campaign row and the address's counters)
    results = post_together(app, [x for pair in zip(direct, by_code, strict=True) for x in pair])

    # then: exactly 5 granted, every other one refused for the address's limit: no deadlock, nothing busy
    assert Counter(results) == {(201, None): 5, (429, "ip_daily_limit"): 19}, results
    owned = select(func.count()).where(RedPacket.campaign_id == campaign_id, RedPacket.owner_id.is_not(None))
    assert db.session.execute(owned).scalar_one() == 5
