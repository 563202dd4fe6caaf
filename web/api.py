"""The one decorator every JSON endpoint uses: auth, validation, idempotency, commit.

    @endpoint(bp, "/orders", methods=["POST"], auth="user", body=CreateOrder, idempotent=True)
    def create_order(body: CreateOrder): ...

* ``auth``: ``"user"`` (signed user token), ``"operator"`` (personal token, with
  ``roles``), or ``None``; ``USER_READ_BY_VIEW``: a signed user token whose row the view reads in its
  own first statement (a hot path) and hands to ``web.auth.signed_in`` (401/403) before it answers.
* ``body`` / ``query``: pydantic models; bad JSON or a failed model answers 422
  with every problem listed, before the view runs.
* ``status``: the success status the view answers (200, or 201 for what it
  creates); documented in ``/openapi.json`` and used when the view returns a
  bare body. ``upstream``: the view calls WeChat while the caller waits, so it
  can also answer 502/503 (web/errors.py ``to_api_error``). ``response``: a
  pydantic model documenting the success body in ``/openapi.json`` (else "an object").
* A view returns a dict/list (``status``), ``(body, status)`` or a Response. Views
  only flush; this decorator commits once when the answer is below 400 and
  rolls back otherwise.
* ``idempotent``: honours ``Idempotency-Key`` (web/idempotency.py); ``key_with_effects``: the key is
  written in the view's own transaction and kept only with a successful answer
  (``idempotency.run_with_effects``), for views that call nothing outside the database.
* ``writes``: a GET whose operation may write (a value made on its first read, the same on every
  read): committed once by this decorator like a mutating route, never by the view.
"""

from __future__ import annotations

import functools
import re
import time
import typing
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from pydantic import BaseModel, ValidationError

from models import db, utcnow
from risk import identifiers
from web import idempotency
from web.auth import current_operator, current_user, signed_in_user_id
from web.errors import ApiError, ValidationFailed, from_domain
from web.guards import JsonRefused, loads_json

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def parse_json_body() -> Any:
    raw = request.get_data(cache=True)
    if not raw:
        raise ValidationFailed("request body must be a JSON object", code="invalid_json")
    if not request.is_json:
        raise ValidationFailed("Content-Type must be application/json", code="invalid_json")
    try:
        return loads_json(raw)
    except JsonRefused as exc:
        raise ValidationFailed(str(exc), code=exc.code) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"malformed JSON: {exc}", code="invalid_json") from None


def _errors(exc: ValidationError) -> list[dict]:
    return [{"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()]


def validate(model: type[BaseModel], data: Any) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed("request does not validate", details=_errors(exc)) from None


WHOLE_NUMBER = re.compile(r"-?[0-9]{1,19}")


def validate_query(model: type[BaseModel], args: dict[str, str]) -> BaseModel:
    """A query string's model: as ``validate``, and a whole-number field must be written as one (digits, an optional
    minus): pydantic reads ``1.0``, ``1_0``, ``+1`` and `` 1`` as numbers too, which no client means to send."""
    valid = validate(model, args)  # first: a field's own words for what it refuses
    loose = [
        {"field": name, "problem": "Input should be a whole number written in digits"}
        for name in _whole_number_fields(model)
        if name in args and not WHOLE_NUMBER.fullmatch(args[name])
    ]
    if loose:
        raise ValidationFailed("request does not validate", details=loose)
    return valid


@functools.cache
def _whole_number_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``model`` holding an ``int`` (or ``int | None``, a constrained one too: ``Annotated[int, …]``):
    their names as a query string writes them."""
    found = []
    for name, field in model.model_fields.items():
        kinds = typing.get_args(field.annotation) or (field.annotation,)
        kinds = tuple(typing.get_args(k)[0] if typing.get_origin(k) is typing.Annotated else k for k in kinds)
        if int in kinds and all(kind in (int, type(None)) for kind in kinds):
            found.append(field.alias or name)
    return tuple(found)


def _authenticate(auth: str | None, roles: tuple[str, ...], mutating: bool) -> str:
    if auth == "user":
        return f"user:{current_user().id}"
    if auth == USER_READ_BY_VIEW:  # the token only: the view's first statement reads the row (``_user_checked``)
        return f"user:{signed_in_user_id()}"
    if auth == "operator":
        operator = current_operator(roles, mutating=mutating)
        if operator.merchant_id is not None:
            _note_merchant_staff(operator.id, operator.merchant_id)
        return f"operator:{operator.id}"
    return f"ip:{request.remote_addr}"


STAFF_NOTE_EVERY_S = 600  # a merchant's staff member's device and address are noted at most this often
_STAFF_MEMO_MOST = 10_000


def _note_merchant_staff(operator_id: int, merchant_id: int) -> None:
    """Note a merchant staff member's device and network address among the merchant's identifiers (risk:
    a merchant ordering from its own accounts shares them), at most once per ``STAFF_NOTE_EVERY_S`` per
    (operator, device, address) in this process, and committed at once: the admin request's own
    transaction only read the operator's token so far, and a GET commits nothing."""
    from web.growth_api import device_id  # noqa: PLC0415 - growth_api builds on this module

    try:
        device = device_id()
    except ApiError:  # an admin request with a device token we did not issue: the address still counts
        device = None
    noted = current_app.extensions.setdefault("risk_staff_noted", {})  # (operator, device, ip) → when, this app
    memo, now = (operator_id, device, client_ip()), time.monotonic()
    if now - noted.get(memo, -STAFF_NOTE_EVERY_S) < STAFF_NOTE_EVERY_S:
        return
    identifiers.note(identifiers.MERCHANT, merchant_id, device, memo[2], utcnow())
    db.session.commit()
    if len(noted) >= _STAFF_MEMO_MOST:
        noted.clear()
    noted[memo] = now


USER_READ_BY_VIEW = "user_read_by_view"  # ``endpoint(auth=...)``: a signed-in user whose row the view reads itself


def _user_checked(view: Callable) -> Callable:
    """``view`` of an ``auth=USER_READ_BY_VIEW`` endpoint: it must hand the row it read to ``web.auth.signed_in``
    (401 for no such user, 403 banned) before it answers; one that did not fails loudly and nothing is kept."""

    @functools.wraps(view)
    def checked(**kwargs):
        result = view(**kwargs)
        if "user" not in g:
            raise RuntimeError(f"{view.__name__} answered without checking the signed-in user's row")
        return result

    return checked


def _to_response(result: Any, status: int = 200) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, tuple):
        result, status = result
    response = jsonify(result)
    response.status_code = status
    return response


def _finish(view: Callable, kwargs: dict, mutating: bool, commit: bool = True, status: int = 200) -> Response:
    """Run the view, commit below 400 (unless the caller commits), roll back otherwise."""
    try:
        response = _to_response(view(**kwargs), status)
    except ApiError:
        db.session.rollback()
        raise
    except Exception as exc:
        db.session.rollback()
        mapped = from_domain(exc)
        if mapped is None:
            raise
        raise mapped from exc
    if mutating and response.status_code < 400:
        if commit:
            _commit()
    elif mutating:
        db.session.rollback()
    return response


def _commit() -> None:
    """Commit the request's work. A session that began no transaction and holds nothing to write has nothing to
    commit (a claim made in one statement committed by itself, rebate/claim_at_once.py): no commit is begun then."""
    session = db.session()
    if session.in_transaction() or session.new or session.dirty or session.deleted:
        session.commit()


def endpoint(
    bp: Blueprint,
    rule: str,
    *,
    methods=("GET",),
    auth: str | None = "user",
    roles: tuple[str, ...] = (),
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    idempotent: bool = False,
    key_with_effects: bool = False,
    require_key: bool = False,
    status: int = 200,
    upstream: bool = False,
    response: type[BaseModel] | None = None,
    summary: str = "",
    tags: tuple[str, ...] = (),
    writes: bool = False,
    reads: bool = False,
) -> Callable:
    """``writes``: a GET that writes (committed as a mutating route); ``reads``: a POST that only reads (a body too
    large for a query: validate, simulate, preview, backtest): never committed, and allowed to whoever may only
    read (merchant staff of a suspended merchant)."""
    methods = tuple(m.upper() for m in methods)
    mutating = (bool(MUTATING & set(methods)) or writes) and not reads

    def decorate(view: Callable) -> Callable:
        reads_user = auth == USER_READ_BY_VIEW
        target = _user_checked(view) if reads_user else view  # wrapped once, here, not per request

        @functools.wraps(view)
        def wrapper(**kwargs):
            scope = _authenticate(auth, roles, mutating)
            if body is not None:
                kwargs["body"] = validate(body, parse_json_body())
            if query is not None:
                kwargs["query"] = validate_query(query, request.args.to_dict())
            key = request.headers.get("Idempotency-Key")
            if require_key and not key:
                raise ValidationFailed(
                    "this request moves money: send an Idempotency-Key so a retry cannot do it twice",
                    code="idempotency_key_required",
                )
            if idempotent and key is not None:
                route = f"{request.method} {request.url_rule.rule}"
                call = lambda: _finish(target, kwargs, mutating, False, status)  # noqa: E731
                if key_with_effects:  # a refusal (a missing or banned user too) keeps no key: nothing to check first
                    caller = current_user if reads_user else None  # before an answer taken from the key
                    return idempotency.run_with_effects(scope, route, key, call, caller)
                if reads_user:
                    current_user()  # a missing or banned user is refused before a key is recorded, as elsewhere
                return idempotency.run(scope, route, key, call)
            return _finish(target, kwargs, mutating, status=status)

        wrapper._api = {  # read by web/openapi.py and web/console (which runs the same view)
            "mutating": mutating,
            "summary": summary or (view.__doc__ or "").strip().split("\n")[0],
            "auth": auth,
            "roles": roles,
            "body": body,
            "query": query,
            "idempotent": idempotent,
            "require_key": require_key,
            "status": status,
            "upstream": upstream,
            "response": response,
            "tags": tags or (bp.name,),
        }
        bp.add_url_rule(rule, view.__name__, wrapper, methods=list(methods))
        return wrapper

    return decorate


def client_ip() -> str:
    """The socket address, or X-Forwarded-For as rewritten by ProxyFix behind trusted proxies."""
    return request.remote_addr or "unknown"


def caller() -> str:
    return getattr(g, "operator", None) and f"operator:{g.operator.id}" or f"user:{g.user.id}"
