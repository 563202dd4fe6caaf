"""``/openapi.json`` built from the routes themselves, so it cannot drift.

Views made with ``web.api.endpoint`` are described from its arguments (body,
query, auth, success ``status``, ``upstream``); the few plain Flask views
(ops, OAuth redirects, WeChat callbacks) carry their description with
:func:`documented`. Every operation lists each status it can answer: its
success status, ``4XX`` errors, ``503`` (database busy or WeChat unavailable,
with ``Retry-After``) and, where the caller waits on WeChat, ``502``. The local
WeChat simulator's routes (``/_sim/``) are WeChat's API, not ours: left out; so are the operator
console's pages (``/console/``): pages for people in a browser, over the API's own views.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Flask

from web.api import USER_READ_BY_VIEW
from web.guards import MAX_ID

REF = "#/components/schemas/{model}"
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}, "details": {}},
}
WECHAT_FAIL_SCHEMA = {
    "type": "object",
    "description": "WeChat's callback answer format",
    "required": ["code", "message"],
    "properties": {"code": {"const": "FAIL"}, "message": {"type": "string"}},
}
SIMULATOR_ENDPOINTS = "wechat_sim."
CONSOLE_ENDPOINTS = "console."
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}}


def json_response(description: str, schema: dict | None = None, headers: dict | None = None) -> dict:
    response: dict = {"description": description}
    if headers:
        response["headers"] = headers
    response["content"] = {"application/json": {"schema": schema if schema is not None else {}}}
    return response


ERROR = json_response("Error", {"$ref": REF.format(model="Error")})
UNAVAILABLE = json_response(
    "Database busy or WeChat unavailable; retry after Retry-After", {"$ref": REF.format(model="Error")}, RETRY_AFTER
)
UPSTREAM_REFUSED = json_response("WeChat refused the call", {"$ref": REF.format(model="Error")})
WECHAT_FAIL = json_response("Refused, in WeChat's format", {"$ref": REF.format(model="WeChatFail")})
SUCCESS_BODY = {"type": ["object", "array"]}
# Methods whose JSON body ``endpoint`` reads when it is given one: a DELETE too (lifting a ban takes its reason), and
# OpenAPI 3.1 lets a DELETE have a requestBody.
BODY_METHODS = {"post", "put", "patch", "delete"}


def documented(**doc) -> Callable:
    """Describe a plain Flask view (not made with ``endpoint``): summary, tags, parameters, requestBody,
    responses. ``ERROR`` / ``UNAVAILABLE`` / ``WECHAT_FAIL`` are the shared answers."""

    def mark(view: Callable) -> Callable:
        view._openapi = doc
        return view

    return mark


# <name>, <int:name>, <any(a, b):name>: converter, its arguments, the variable.
VARIABLE = re.compile(r"<(?:(\w+)(?:\(([^)]*)\))?:)?(\w+)>")


def _path(rule: str) -> str:
    return VARIABLE.sub(lambda m: "{" + m.group(3) + "}", rule)


def _path_parameters(rule: str) -> list[dict]:
    params = []
    for converter, args, name in VARIABLE.findall(rule):
        schema: dict = {"type": "string"}
        if converter == "int":
            schema = {"type": "integer", "minimum": 0, "maximum": MAX_ID}
        elif converter == "any":
            schema = {"type": "string", "enum": [a.strip().strip("'\"") for a in args.split(",")]}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return params


def _schema_ref(model, components: dict) -> dict:
    schema = model.model_json_schema(ref_template=REF)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _operation(method: str, rule, meta: dict | None, components: dict) -> dict:
    meta = meta or {}
    op: dict = {"summary": meta.get("summary", ""), "tags": list(meta.get("tags") or ["wechat"])}
    params = _path_parameters(rule.rule)
    if meta.get("query") is not None:
        schema = meta["query"].model_json_schema()
        params += [
            {"name": n, "in": "query", "required": n in schema.get("required", []), "schema": s}
            for n, s in schema.get("properties", {}).items()
        ]
    if meta.get("idempotent"):
        required = bool(meta.get("require_key"))
        params.append({"name": "Idempotency-Key", "in": "header", "required": required, "schema": {"type": "string"}})
    if params:
        op["parameters"] = params
    if meta.get("body") is not None and method in BODY_METHODS:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema_ref(meta["body"], components)}},
        }
    if meta.get("auth"):
        op["security"] = [{"userToken": []}] if meta["auth"] in ("user", USER_READ_BY_VIEW) else [{"operatorToken": []}]
        if meta.get("roles"):
            op["description"] = "Roles: " + ", ".join(meta["roles"])
    status = meta.get("status", 200)
    success = _schema_ref(meta["response"], components) if meta.get("response") is not None else SUCCESS_BODY
    op["responses"] = {
        str(status): json_response("Created" if status == 201 else "OK", success),
        "4XX": ERROR,
        "503": UNAVAILABLE,
    }
    op["responses"].update({str(code): json_response(why, success) for code, why in meta.get("also", {}).items()})
    if meta.get("upstream"):
        op["responses"]["502"] = UPSTREAM_REFUSED
    return op


def _plain_operation(rule, doc: dict) -> dict:
    op: dict = {"summary": doc.get("summary", ""), "tags": list(doc.get("tags", ["ops"]))}
    params = _path_parameters(rule.rule) + list(doc.get("parameters", []))
    if params:
        op["parameters"] = params
    if "requestBody" in doc:
        op["requestBody"] = doc["requestBody"]
    op["responses"] = doc["responses"]
    return op


def build_openapi(app: Flask) -> dict:
    components: dict = {"Error": ERROR_SCHEMA, "WeChatFail": WECHAT_FAIL_SCHEMA}
    paths: dict = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static" or rule.endpoint.startswith((SIMULATOR_ENDPOINTS, CONSOLE_ENDPOINTS)):
            continue
        view = app.view_functions[rule.endpoint]
        meta, doc = getattr(view, "_api", None), getattr(view, "_openapi", None)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if doc is not None:
                operation = _plain_operation(rule, doc)
            else:
                operation = _operation(method.lower(), rule, meta, components)
            paths.setdefault(_path(rule.rule), {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Two-way rebate red packet API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "userToken": {"type": "http", "scheme": "bearer", "description": "issued at login"},
                "operatorToken": {"type": "http", "scheme": "bearer", "description": "personal operator token"},
            },
        },
    }
