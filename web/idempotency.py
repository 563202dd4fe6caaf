"""``Idempotency-Key`` for our own mutating APIs (docs/architecture.md §4).

Scoped to caller + route, kept ``IDEMPOTENCY_TTL_HOURS`` (25 by default).
Same key and body → the stored answer; same key, other body → 422; a
duplicate while the first is running → 409. A 403, 409 or 429 is not stored (the
request may succeed later, as things change): a retry with the key runs again. The claim is committed first in
its own short transaction; the answer is stored in the same transaction as the
view's effects, so an answer is never stored without its effects or the other
way round. A claim left ``in_progress`` by a crashed worker (its effects rolled
back with it) is taken over after ``STALE_AFTER``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from datetime import timedelta
from functools import cache

from flask import Response, current_app, jsonify, request
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from models import IdempotencyRecord, db, utcnow
from models.base import RECORD_TRIES, fernet, while_busy
from models.sql import execute_core, insert_ignoring, is_busy
from web.errors import ApiError, Conflict, ValidationFailed
from web.guards import loads_json

log = logging.getLogger(__name__)
STALE_AFTER = timedelta(seconds=60)
# Refusals of things as they stand, never kept as a key's answer: a retry with the key runs again (a conflict, a
# limit, and a refusal of who asks: a ban on the device or address that ends or is lifted, a suspended merchant).
NOT_STORED = {403, 409, 429}


FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


def request_fingerprint() -> str:
    """The request as a key stands for it: method, path and query, and the body (JSON canonically). A form (the
    console's) is read field by field: once parsed, its body is gone from ``get_data`` (Werkzeug keeps none), and
    every form would fingerprint alike: the same key with other values replayed the first answer as theirs."""
    if request.mimetype in FORMS:
        fields = sorted((k, v) for k, v in request.form.items(multi=True) if k != "csrf_token")
        canonical = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
    else:
        raw = request.get_data(cache=True)
        try:
            canonical = json.dumps(loads_json(raw), sort_keys=True, separators=(",", ":")).encode()
        except ValueError:
            canonical = raw
    return hashlib.sha256(request.method.encode() + b" " + request.full_path.encode() + b"\n" + canonical).hexdigest()


# Secrets an answer hands out once (a new operator's first token): the stored answer keeps them encrypted with the
# app's key (``DATA_ENCRYPTION_KEY``), opened only to replay it, so a read of the table or a backup holds none.
SEALED_FIELDS = ("token",)
SEAL = "sealed:"


def _sealed(body):
    if not isinstance(body, dict):
        return body
    secret = {k: body[k] for k in SEALED_FIELDS if isinstance(body.get(k), str)}
    return {**body, **{k: SEAL + fernet().encrypt(v.encode()).decode() for k, v in secret.items()}} if secret else body


def _opened(body):
    if not isinstance(body, dict):
        return body
    sealed = {k: body[k] for k in SEALED_FIELDS if isinstance(body.get(k), str) and body[k].startswith(SEAL)}
    return {**body, **{k: fernet().decrypt(v[len(SEAL) :].encode()).decode() for k, v in sealed.items()}}


def _replay(record: IdempotencyRecord) -> Response:
    response = jsonify(_opened(record.response_body))
    response.status_code = record.response_status
    response.headers["Idempotent-Replayed"] = "true"
    return response


# A key is printable ASCII, words with one space between them (a UUID, a hex token, "demo-1a2b-Alice orders"),
# 1 to ``MAX_KEY_CHARS``: it is stored and logged as sent and goes into ledger keys and refund numbers, so a key
# holding a control (a NUL PostgreSQL cannot store, a NEL or newline that breaks a log line), a text-direction mark,
# a zero-width or no-break space or another non-ASCII letter (a server hands a header's UTF-8 bytes on as Latin-1
# characters) was a key that looks like another one.
MAX_KEY_CHARS = 128  # the column's length (models.idempotency)
KEY = re.compile(r"[!-~]+(?: [!-~]+)*")


def _check_key(key: str) -> None:
    if not key or len(key) > MAX_KEY_CHARS:
        raise ValidationFailed(
            f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} characters", code="invalid_idempotency_key"
        )
    if not KEY.fullmatch(key):
        raise ValidationFailed(
            "Idempotency-Key may hold only printable ASCII (letters, digits, punctuation), words one space apart",
            code="invalid_idempotency_key",
        )


def _claim(scope: str, route: str, key: str, fingerprint: str) -> IdempotencyRecord | Response:
    _check_key(key)
    now = utcnow()
    ttl = timedelta(hours=current_app.config["IDEMPOTENCY_TTL_HOURS"])
    for _ in range(2):
        record = IdempotencyRecord(
            scope=scope, route=route, key=key, request_sha256=fingerprint, locked_at=now, expires_at=now + ttl
        )
        db.session.add(record)
        try:
            db.session.flush()
            record_id = record.id
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
        else:
            # kept loaded past the commit: read expired, its id and time would begin a transaction of their own,
            # which a busy database refuses (SQLite: another writer took the lock just now) after the key is
            # committed and before ``run`` can give it up: in progress for a minute, every retry 409
            set_committed_value(record, "id", record_id)
            set_committed_value(record, "locked_at", now)
            return record
        found = db.session.execute(
            select(IdempotencyRecord).filter_by(scope=scope, route=route, key=key)
        ).scalar_one_or_none()
        if found is None:  # released by its owner since our insert failed: try again
            continue
        if found.expires_at <= now:
            _delete(found.id)
            continue
        return _existing(found, fingerprint, now)
    raise Conflict("idempotency key is busy, retry", code="idempotency_in_progress")


def _answer_from(found: IdempotencyRecord, fingerprint: str, now) -> Response | None:
    """What a live key already answers: 422 (another request), its stored answer, 409 (still running); None when
    it was left in progress by a request that is gone (stale)."""
    if found.request_sha256 != fingerprint:
        raise ValidationFailed("Idempotency-Key was used with a different request", code="idempotency_key_reused")
    if found.state == "done":
        return _replay(found)
    if found.locked_at + STALE_AFTER > now:
        raise Conflict("a request with this Idempotency-Key is in progress", code="idempotency_in_progress")
    return None


def _existing(found: IdempotencyRecord, fingerprint: str, now) -> IdempotencyRecord | Response:
    answer = _answer_from(found, fingerprint, now)
    if answer is not None:
        return answer
    # A holder still running keeps its record's row locked (``_hold``): this waits for it to end, and then finds the
    # answer it stored (not taken: replayed below) or the row released (rolled back: taken, run again).
    taken = db.session.execute(
        update(IdempotencyRecord)
        .where(
            IdempotencyRecord.id == found.id,
            IdempotencyRecord.locked_at == found.locked_at,
            IdempotencyRecord.state != "done",
        )
        .values(locked_at=now)
    ).rowcount
    db.session.commit()
    if taken != 1:
        again = db.session.execute(
            select(IdempotencyRecord).filter_by(id=found.id).execution_options(populate_existing=True)
        ).scalar_one_or_none()
        if again is not None and again.state == "done":
            return _replay(again)
        raise Conflict("a request with this Idempotency-Key is in progress", code="idempotency_in_progress")
    return found


def _hold(record_id: int) -> None:
    """Lock the key's row for the view's transaction (PostgreSQL; SQLite's write lock already covers it): a request
    running longer than ``STALE_AFTER`` is not taken over by a retry while its transaction lives (a taker waits on
    the row, then replays what it stored); a holder that died released the row with its connection."""
    db.session.execute(_hold_statement(), {"record_id": record_id})


def _delete(record_id: int, held_since=None) -> None:
    """Delete the key's row, and make the session forget it (SQLite reuses the id of a deleted last row, and a stale
    identity would clash). ``held_since``: only while it is still a request's in progress since then."""
    table = IdempotencyRecord.__table__
    where = [table.c.id == record_id]
    if held_since is not None:
        where += [table.c.locked_at == held_since, table.c.state == "in_progress"]
    db.session.execute(delete(table).where(*where))
    forgotten = db.session.identity_map.get(identity_key(IdempotencyRecord, record_id))
    if forgotten is not None:
        db.session.expunge(forgotten)
    db.session.commit()


def _release(record_id: int, locked_at, tries: int = RECORD_TRIES) -> None:
    """Give the key up (the view failed): deleted only while it is still this request's, in progress since
    ``locked_at``; a retry that took it over once the view's transaction ended keeps it.

    The view may have failed because the database was busy (SQLite's write lock held past the lock timeout by a long
    writer): the release then waits for it again, up to ``RECORD_TRIES`` transactions, else the key is left to go
    stale (``STALE_AFTER``) and the view's own answer (503) goes out. Left in progress at once, the retry the 503
    invites was answered 409 ``idempotency_in_progress`` for a minute with nothing running. ``tries``: one after
    the answer's own store waited out the database already (the request's waits must end inside gunicorn's 60 s)."""

    def released() -> None:
        db.session.rollback()
        _delete(record_id, held_since=locked_at)

    try:
        while_busy(released, tries)
    except Exception as exc:
        if not is_busy(exc):
            raise
        db.session.rollback()


def run(scope: str, route: str, key: str, call: Callable[[], Response]) -> Response:
    claimed = _claim(scope, route, key, request_fingerprint())
    if isinstance(claimed, Response):
        return claimed
    record_id, locked_at = claimed.id, claimed.locked_at
    try:
        _hold(record_id)
        response = call()
    except ApiError as err:  # the view's effects are already rolled back
        if err.status in NOT_STORED or err.status >= 500:
            _release(record_id, locked_at)
            raise
        if not _stored_apart(record_id, err.status, err.body(), locked_at):
            _release(record_id, locked_at, tries=1)  # the refusal is answered, not kept: a retry runs again
        raise
    except BaseException:
        _release(record_id, locked_at)
        raise
    if response.status_code >= 500 or response.status_code in NOT_STORED or not response.is_json:
        _release(record_id, locked_at)
        return response
    if response.status_code >= 400:
        db.session.rollback()
    if db.session().in_transaction():  # the view's effects, still to commit: the answer is stored with them
        _store(record_id, response.status_code, response.get_json(), locked_at)
    elif not _stored_apart(record_id, response.status_code, response.get_json(), locked_at):
        if response.status_code >= 400:  # a refusal, nothing done: answered, not kept (a retry runs again)
            _release(record_id, locked_at, tries=1)
        else:
            # The view committed its effects itself (a refund WeChat took, recorded between its calls): they are
            # made, so they are answered, never "busy, try again"; the key goes stale after STALE_AFTER.
            log.warning("idempotency answer not stored: database busy", extra={"route": route})
    return response


def _stored_apart(record_id: int, status: int, body, locked_at) -> bool:
    """Store the answer in a transaction of its own (the view's effects are committed already, or were rolled back
    with its refusal), waiting while the database is busy up to ``RECORD_TRIES`` transactions; False if it stayed
    busy. Stored at once, a job's long transaction (SQLite's write lock) made it fail: a refund WeChat took, committed
    by the view between its calls, was answered 503, and a refusal too, the key left in progress either way (every
    retry 409 ``idempotency_in_progress`` for a minute)."""

    def stored() -> None:
        try:
            _store(record_id, status, body, locked_at)
        except BaseException:
            db.session.rollback()
            raise

    try:
        while_busy(stored)
    except Exception as exc:
        if not is_busy(exc):
            raise
        return False
    return True


def _store(record_id: int, status: int, body, locked_at=None) -> None:
    """Store the answer; for a success this commits together with the view's effects. ``locked_at``: only while
    the key is still this request's (a refusal is stored after its rollback, when a retry may have taken the key
    over: the retry's answer is then the one kept). (A Core UPDATE built once: the ORM's bulk UPDATE also
    evaluates its WHERE against every object in the session, a third of a keyed claim's CPU; the commit right
    after expires the session's copy of the row anyway.)"""
    values = {"record_id": record_id, "status": status, "body": _sealed(body)}
    if locked_at is None:
        execute_core(_store_statement(), values)
    else:
        execute_core(_store_held_statement(), {**values, "held_since": locked_at})
    db.session.commit()


@cache
def _hold_statement():
    table = IdempotencyRecord.__table__
    return select(table.c.id).where(table.c.id == bindparam("record_id")).with_for_update()


@cache
def _store_held_statement():
    table = IdempotencyRecord.__table__
    return _store_statement().where(table.c.locked_at == bindparam("held_since", type_=table.c.locked_at.type))


@cache
def _store_statement():
    table = IdempotencyRecord.__table__
    return (
        update(table)
        .where(table.c.id == bindparam("record_id"))
        .values(
            state="done",
            response_status=bindparam("status", type_=table.c.response_status.type),
            response_body=bindparam("body", type_=table.c.response_body.type),
        )
    )


def run_with_effects(
    scope: str, route: str, key: str, call: Callable[[], Response], check_caller: Callable[[], object] | None = None
) -> Response:
    """``run`` for a view that calls nothing outside the database (a claim): the key is the first write of the
    view's own transaction and is kept only with a successful answer, committed together. Two statements and no
    commit of its own, where ``run`` takes a transaction of its own first.

    A twin sent at the same time waits on the key's unique index until the first one's transaction ends, then
    answers what it stored (committed) or runs itself (rolled back): never a second effect, and no 409 while the
    first is running. A refusal or an error keeps nothing, the key included: a retry runs the view again (it
    changed nothing). The key's row is not noted as a write (``rebate.claims``): a refused claim rolls back the
    whole transaction, its key with it. ``check_caller`` runs before any answer taken from a key that exists
    (a caller banned since is refused, not answered from the key); the view checks the caller otherwise."""
    _check_key(key)
    fingerprint = request_fingerprint()
    record_id = _key_first(scope, route, key, fingerprint, check_caller)
    if isinstance(record_id, Response):
        return record_id
    try:
        response = call()
    except BaseException:
        db.session.rollback()
        raise
    if response.status_code >= 400 or not response.is_json:
        db.session.rollback()
        return response
    _store(record_id, response.status_code, response.get_json())
    return response


def _key_first(
    scope: str, route: str, key: str, fingerprint: str, check_caller: Callable[[], object] | None
) -> int | Response:
    """The key's row, inserted by this transaction (its id), or the answer to give when it was there already.

    A row left ``in_progress`` by a crashed request of ``run`` (committed with nothing done) is deleted once stale
    and the key taken anew in this transaction, so a refusal here leaves no row behind either."""
    ttl = timedelta(hours=current_app.config["IDEMPOTENCY_TTL_HOURS"])
    for _ in range(3):
        now = utcnow()
        row = {
            "scope": scope,
            "route": route,
            "key": key,
            "request_sha256": fingerprint,
            "state": "in_progress",
            "created_at": now,
            "locked_at": now,
            "expires_at": now + ttl,
        }
        table = IdempotencyRecord.__table__
        inserted = insert_ignoring(table, [row], ("scope", "route", "key"), ("id",), counts_as_write=False)
        if inserted:
            return inserted[0][0]
        if check_caller is not None:
            check_caller()
        found = db.session.execute(
            select(IdempotencyRecord).filter_by(scope=scope, route=route, key=key)
        ).scalar_one_or_none()
        if found is None:  # deleted since (expired): try again
            continue
        if found.expires_at <= now:
            _delete_unchanged(found)
            continue
        answer = _answer_from(found, fingerprint, now)
        if answer is not None:
            return answer
        _delete_unchanged(found)  # stale
    raise Conflict("idempotency key is busy, retry", code="idempotency_in_progress")


def _delete_unchanged(found: IdempotencyRecord) -> None:
    """Delete ``found`` unless another request changed it since it was read (took it over, stored its answer), and
    commit (this transaction had written nothing yet)."""
    table = IdempotencyRecord.__table__
    db.session.execute(
        delete(table).where(table.c.id == found.id, table.c.locked_at == found.locked_at, table.c.state == found.state)
    )
    db.session.expunge(found)  # the session forgets it too (SQLite may give its id to the next row: see _delete)
    db.session.commit()
