"""``flask keys reencrypt``: every value encrypted at rest, re-encrypted under the current key (docs/architecture.md
§18).

While ``DATA_ENCRYPTION_KEY`` is rotated, the app reads with it and with each ``DATA_ENCRYPTION_KEY_PREVIOUS`` and
writes with it alone; values nobody writes again stay under the old key. This command walks every place that holds
such a value, in keyset batches of one short transaction each, and rewrites a value only when a previous key opens
it: a value under the current key is left alone (a second run writes nothing), and one that no configured key opens
is reported by table, column and id and left as it is. Each rewrite is a compare-and-set on the value read, so a
value the app wrote meanwhile (under the current key) is never overwritten; the command can be stopped at any point
and run again, and the app keeps serving.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import click
from cryptography.fernet import InvalidToken
from flask.cli import AppGroup
from sqlalchemy import Table, Text, cast, select, type_coerce, update

from models import db
from models.base import DataKeys, EncryptedText, data_keys, unit_of_work, while_busy

keys_cli = AppGroup("keys", help="The key of data encrypted at rest (DATA_ENCRYPTION_KEY).")

DEFAULT_BATCH = 500
PAYEE_NAME_FIELD = "user_name_enc"  # a transfer's payee name in its fixed request (payouts/transfer_rail.py)


class Unreadable(Exception):
    """No configured key opens the value."""


@dataclass(frozen=True)
class Place:
    """A column holding encrypted values: the whole value (``EncryptedText``), or named string fields of a JSON
    object, each a token after ``prefix``."""

    table: Table
    column: str
    fields: tuple[str, ...] = ()
    prefix: str = ""

    @property
    def name(self) -> str:
        return f"{self.table.name}.{self.column}"

    @property
    def is_json(self) -> bool:
        return bool(self.fields)


@dataclass
class Tally:
    rotated: int = 0
    current: int = 0
    changed_meanwhile: int = 0
    unreadable: list = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.rotated += other.rotated
        self.current += other.current
        self.changed_meanwhile += other.changed_meanwhile
        self.unreadable += other.unreadable


def places() -> list[Place]:
    """Every ``EncryptedText`` column of the schema, and the JSON fields that keep a token of the app's key: a
    transfer's payee name in its fixed request (payouts/transfer_rail.py) and the one-time secrets of a stored
    idempotent answer (web/idempotency.py). tests/test_probe20_keys.py fails when a new place encrypts with the
    key and is not listed here."""
    from models import IdempotencyRecord, Payout
    from web.idempotency import SEAL, SEALED_FIELDS

    found = [
        Place(table, column.name)
        for table in db.metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, EncryptedText)
    ]
    found.append(Place(Payout.__table__, "request", (PAYEE_NAME_FIELD,)))
    found.append(Place(IdempotencyRecord.__table__, "response_body", SEALED_FIELDS, SEAL))
    return found


def rotated_token(token: str, keys: DataKeys) -> str | None:
    """``token`` encrypted under the current key when a previous key opens it; None when the current key does.
    Raises ``Unreadable`` when no key does."""
    raw = token.encode()
    try:
        keys.current.decrypt(raw)
        return None
    except InvalidToken:
        pass
    for key in keys.previous:
        try:
            plain = key.decrypt(raw)
        except InvalidToken:
            continue
        return keys.current.encrypt(plain).decode()
    raise Unreadable


def _rotated_value(place: Place, stored: str, keys: DataKeys):
    """The value to store instead of ``stored`` (None: leave it). Raises ``Unreadable`` (nothing rewritten) when
    a token in it no key opens."""
    if not place.is_json:
        return rotated_token(stored, keys)
    try:
        body = json.loads(stored)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    changed = {}
    for name in place.fields:
        value = body.get(name)
        if isinstance(value, str) and value.startswith(place.prefix):
            token = rotated_token(value[len(place.prefix) :], keys)
            if token is not None:
                changed[name] = place.prefix + token
    return {**body, **changed} if changed else None


def _raw(place: Place):
    """The column as stored: the ciphertext (not decrypted by its type), a JSON value as its text."""
    column = place.table.c[place.column]
    return cast(column, Text) if place.is_json else type_coerce(column, Text)


def _batch(place: Place, after, size: int, keys: DataKeys) -> tuple[Tally, object, bool]:
    """One batch of ``place`` past id ``after``, in its own transaction: its counts, the last id, whether more
    may follow."""
    (pk,) = place.table.primary_key.columns
    raw = _raw(place)
    where = [place.table.c[place.column].is_not(None)]
    if after is not None:
        where.append(pk > after)
    if place.is_json and len(place.fields) == 1:  # only objects that may carry a token (LIKE's _ matches itself)
        where.append(raw.like(f"%{place.prefix or place.fields[0]}%"))
    tally = Tally()
    with unit_of_work():
        rows = db.session.execute(select(pk, raw).where(*where).order_by(pk).limit(size)).all()
        for row_id, stored in rows:
            try:
                new = _rotated_value(place, stored, keys)
            except Unreadable:
                tally.unreadable.append(row_id)
                continue
            if new is None:
                tally.current += 1
                continue
            value = new if place.is_json else type_coerce(new, Text)  # (a token as it is: not encrypted again)
            written = db.session.execute(
                update(place.table).where(pk == row_id, raw == stored).values({place.column: value})
            ).rowcount
            if written == 1:
                tally.rotated += 1
            else:  # the app wrote it meanwhile, under the current key; a payout's request is checked next run
                tally.changed_meanwhile += 1
    return tally, (rows[-1][0] if rows else after), len(rows) == size


def reencrypt(size: int = DEFAULT_BATCH, progress: Callable[[Place, Tally], None] | None = None) -> dict[str, Tally]:
    """Every place, batch by batch (a busy database is waited for, as a record is: ``while_busy``)."""
    keys = data_keys()
    tallies: dict[str, Tally] = {}
    for place in places():
        total = Tally()
        after, more = None, True
        while more:
            tally, after, more = while_busy(lambda place=place, after=after: _batch(place, after, size, keys))
            total.add(tally)
        tallies[place.name] = total
        if progress is not None:
            progress(place, total)
    return tallies


@keys_cli.command("reencrypt")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=DEFAULT_BATCH, show_default=True)
def reencrypt_command(batch_size: int) -> None:
    """Re-encrypt every value stored under a DATA_ENCRYPTION_KEY_PREVIOUS under DATA_ENCRYPTION_KEY.

    Safe to stop and run again, and while the app serves. Exits 1 when some value no configured key opens (listed
    by table, column and id; left as it is)."""
    if not data_keys().previous:
        raise click.ClickException(
            "DATA_ENCRYPTION_KEY_PREVIOUS is not set: there is no earlier key to re-encrypt from (set "
            "DATA_ENCRYPTION_KEY to the new key and DATA_ENCRYPTION_KEY_PREVIOUS to the one it replaces)"
        )

    def report(place: Place, tally: Tally) -> None:
        meanwhile = f", {tally.changed_meanwhile} changed meanwhile" if tally.changed_meanwhile else ""
        click.echo(
            f"{place.name}: {tally.rotated} re-encrypted, {tally.current} already under the current key"
            f"{meanwhile}, {len(tally.unreadable)} unreadable"
        )
        for row_id in tally.unreadable:
            click.echo(
                f"unreadable: {place.table.name} id {row_id} ({place.column}): no configured key opens it", err=True
            )

    tallies = reencrypt(batch_size, report)
    _audit(tallies)
    rotated = sum(t.rotated + t.changed_meanwhile for t in tallies.values())
    unreadable = sum(len(t.unreadable) for t in tallies.values())
    if rotated:
        click.echo("run it again: once a run re-encrypts nothing, remove DATA_ENCRYPTION_KEY_PREVIOUS")
    else:
        click.echo("nothing is stored under a previous key: DATA_ENCRYPTION_KEY_PREVIOUS can be removed")
    if unreadable:
        click.echo(
            f"{unreadable} value(s) open under no configured key (an older key missing from "
            "DATA_ENCRYPTION_KEY_PREVIOUS?): they were left as they are, and reading them fails",
            err=True,
        )
        sys.exit(1)


def _audit(tallies: dict[str, Tally]) -> None:
    from models import AuditLog

    details = {
        name: {"rotated": t.rotated, "unreadable": len(t.unreadable), "changed_meanwhile": t.changed_meanwhile}
        for name, t in tallies.items()
    }
    with unit_of_work():
        db.session.add(
            AuditLog(
                operator_id=None,
                action="keys.reencrypt",
                target_type="data_keys",
                target_id=None,
                reason="re-encrypted from the command line",
                details=details,
            )
        )
