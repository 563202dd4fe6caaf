"""Input bounds every request meets before a view runs: ids, body size, JSON depth.

Bad input answers 4xx, never 500:

* ``<int:…>`` path variables only match ids a 32-bit ``INTEGER`` primary key
  can hold (every table's id is one); a larger number is a 404 like any
  unknown id, instead of an overflow inside the database driver.
* A body without ``Content-Length`` (``Transfer-Encoding: chunked``) is read
  up to ``MAX_CONTENT_LENGTH + 1`` bytes here; one byte over is a 413, where
  Werkzeug would silently stop at the limit and hand the view a truncated body.
  A sized body over the limit is a 413 before anything reads it; both name the
  limit in bytes.
* JSON is refused (422 ``invalid_json``) when nested deeper than
  ``MAX_JSON_DEPTH``, counted before it is parsed so the parser's recursion
  never runs away.
* A NUL character (``%00`` in the path or query, ``\\u0000`` in JSON) is refused
  before any view: PostgreSQL text cannot hold one, so it would otherwise fail
  inside the driver (500) after the request had started its work.
* A query parameter given twice (``?operator_id=1&operator_id=2``) is refused
  (422): every view reads one value of each, so the second would be dropped
  without a word and the answer would look like one for both.
* An instant or a day from outside (a body's, a query's, a console form's) lies
  between ``EARLIEST`` and ``LATEST`` (``instant_in_range``, ``day_in_range``;
  ``web.schemas.Instant`` and ``Day``): year 1 or 9999 with an offset overflows
  when turned into UTC or Beijing time, and a campaign ending in 9999 would break
  every page that shows it.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from flask import Flask, request
from werkzeug.exceptions import NotFound, RequestEntityTooLarge, UnprocessableEntity
from werkzeug.routing import IntegerConverter

from wechat.text import storable

MAX_ID = 2**31 - 1  # INTEGER primary keys (PostgreSQL int4); SQLite would overflow at 2**63
MAX_JSON_DEPTH = 32  # our deepest request (campaign rules) nests 6 levels
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # instants and days from outside: [EARLIEST, LATEST)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
# A string (to its closing quote, or to the end of the body when it has none) or a bracket, left to right: each byte is
# looked at once. (Skipping strings with a search for whole strings first tried a match at every quote inside an
# unterminated one: a 64 KiB body of ``"\"\"\"…`` took 40 s of CPU, before any sign-in.) Possessive: no backtracking.
_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]', re.DOTALL)
_OPENING, _CLOSING = (b"[", b"{"), (b"]", b"}")


class IdConverter(IntegerConverter):
    """``<int:…>``: a non-negative integer no larger than an INTEGER primary key."""

    def __init__(self, url_map, fixed_digits: int = 0) -> None:
        super().__init__(url_map, fixed_digits=fixed_digits, max=MAX_ID)


def instant_in_range(moment: datetime) -> datetime:
    """``moment`` (time-zone aware) if it lies in [``EARLIEST``, ``LATEST``); else ``ValueError`` saying so."""
    if not EARLIEST <= moment < LATEST:
        raise ValueError(f"must be from {EARLIEST:%Y-%m-%d} to {LATEST.year - 1}-12-31 (UTC)")
    return moment


def day_in_range(day: date) -> date:
    """``day`` if it lies from ``EARLIEST``'s day to the day before ``LATEST``'s; else ``ValueError`` saying so."""
    if not EARLIEST.date() <= day < LATEST.date():
        raise ValueError(f"must be from {EARLIEST:%Y-%m-%d} to {LATEST.year - 1}-12-31")
    return day


class JsonRefused(ValueError):
    """The body is not JSON we will parse (too deep, or text with a NUL)."""

    def __init__(self, message: str, code: str = "json_too_deep") -> None:
        super().__init__(message)
        self.code = code


def json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays and objects, strings skipped; linear, no recursion."""
    depth = deepest = 0
    for match in _TOKEN.finditer(raw):
        token = match.group()
        if token in _OPENING:
            depth += 1
            deepest = max(deepest, depth)
        elif token in _CLOSING:
            depth -= 1
    return deepest


def loads_json(raw: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` of UTF-8 text only (JSON between systems is UTF-8, RFC 8259; ``json.loads`` of bytes would
    also take UTF-16 and UTF-32, past the depth count and the NUL check), refusing NaN/Infinity, nesting deeper than
    ``max_depth``, an object with a key twice, and any string (key or value) holding a NUL or an unpaired surrogate
    (``wechat.text.storable``: no column can hold either)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or b"\x00" in data:  # (a NUL byte is never JSON: UTF-16 and UTF-32 hold them)
        raise JsonRefused("JSON must be UTF-8 text", code="invalid_json")
    if json_depth(data) > max_depth:  # UTF-8's multi-byte characters hold no quote, backslash or bracket byte
        raise JsonRefused(f"JSON nested deeper than {max_depth} levels")
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_object_of_unique_keys)
    except RecursionError:  # the count above makes this unreachable; a guard must not answer 500 if it is not
        raise JsonRefused(f"JSON nested deeper than {max_depth} levels") from None
    if "\\u" in text and not storable(value):  # only an escape spells a NUL or a lone surrogate in UTF-8 JSON
        raise JsonRefused("text may not contain NUL characters or unpaired surrogates", code="invalid_json")
    return value


def local_path(target: str) -> str | None:
    """The path a same-site redirect target leads to, or None when it is not one: a scheme or host, ``//``, a
    backslash, a control character (a ``Location`` header cannot carry it). The path is percent-decoded (twice:
    ``%252e`` too) with its dot segments resolved, as a browser and the server end up at it (``/%5Fsim/`` and
    ``/x/../_sim/`` are ``/_sim/``): check prefixes on it, redirect to ``target`` itself."""
    parts = urlsplit(target)
    if (
        parts.scheme
        or parts.netloc
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)
    ):
        return None
    decoded = unquote(unquote(parts.path))
    resolved = posixpath.normpath(decoded) if decoded else "/"
    return resolved + ("/" if decoded.endswith("/") and resolved != "/" else "")


def form_json(text: str) -> tuple[Any, str | None]:
    """A form field's JSON under the API's own limits (depth, NUL, NaN): (the value, None), or (None, what is
    wrong with it, for the page to say beside the field)."""
    try:
        return loads_json(text), None
    except JsonRefused as exc:
        return None, str(exc)
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
    except (ValueError, UnicodeError) as exc:
        return None, str(exc)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _object_of_unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """An object whose keys are all different: ``{"amount_fen": 100, "amount_fen": 99900}`` is one amount to the
    reader that shows or checks it (a proxy, a log, a person: often the first) and another to ``json.loads`` (the
    last), so it is refused rather than taken either way."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonRefused(f"JSON object has the key {key[:64]!r} more than once", code="invalid_json")
            seen.add(key)
    return obj


def _buffer_unsized_body() -> None:
    """Read a body that has no Content-Length (chunked) into memory, refusing one over the limit.

    Afterwards the request looks like any sized request: ``Content-Length`` is set,
    so Werkzeug and the WeChat callbacks apply their own limits to it.
    """
    environ = request.environ
    if environ.get("CONTENT_LENGTH") or "wsgi.input_terminated" not in environ:
        return  # sized, or a server that gives no safe stream (Werkzeug then reads nothing)
    limit = request.max_content_length
    stream, chunks, size = environ["wsgi.input"], [], 0
    while limit is None or size <= limit:
        chunk = stream.read(64 * 1024 if limit is None else min(64 * 1024, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if limit is not None and size > limit:
        raise too_large(limit)
    body = b"".join(chunks)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)


def too_large(limit: int) -> RequestEntityTooLarge:
    return RequestEntityTooLarge(f"the request body is larger than the limit of {limit} bytes (MAX_CONTENT_LENGTH)")


def _refuse_oversized() -> None:
    limit = request.max_content_length
    if limit is not None and request.content_length is not None and request.content_length > limit:
        raise too_large(limit)


def _refuse_nul() -> None:
    if "\x00" in request.path:
        raise NotFound()
    if not request.environ.get("QUERY_STRING"):
        return  # nothing to parse (most requests): the query is not decoded just to look at it
    seen: set[str] = set()
    for key, value in request.args.items(multi=True):
        if "\x00" in key or "\x00" in value:
            raise UnprocessableEntity("query parameters may not contain NUL characters")
        if key in seen:  # every reader here takes one value (the first): the others would be dropped unsaid
            raise UnprocessableEntity(f"query parameter {key[:64]!r} is given more than once")
        seen.add(key)


def install_guards(app: Flask) -> None:
    """Before any blueprint is registered: rules bind their converters when added."""
    app.url_map.converters["int"] = IdConverter
    app.before_request(_refuse_nul)
    app.before_request(_buffer_unsized_body)
    app.before_request(_refuse_oversized)
