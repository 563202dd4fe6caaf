"""``/openapi.json`` built from the routes themselves, so it cannot drift."""

from __future__ import annotations

import re

from flask import Flask

REF = "#/components/schemas/{model}"
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}, "details": {}},
}


# <name>, <int:name>, <any(a, b):name>: converter, its arguments, the variable.
VARIABLE = re.compile(r"<(?:(\w+)(?:\(([^)]*)\))?:)?(\w+)>")


def _path(rule: str) -> str:
    return VARIABLE.sub(lambda m: "{" + m.group(3) + "}", rule)


def _path_parameters(rule: str) -> list[dict]:
    params = []
    for converter, args, name in VARIABLE.findall(rule):
        schema: dict = {"type": "string"}
        if converter == "int":
            schema = {"type": "integer"}
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
    if meta.get("body") is not None and method in {"post", "put", "patch"}:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema_ref(meta["body"], components)}},
        }
    if meta.get("auth"):
        op["security"] = [{"userToken": []}] if meta["auth"] == "user" else [{"operatorToken": []}]
        if meta.get("roles"):
            op["description"] = "Roles: " + ", ".join(meta["roles"])
    error = {"content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}}
    op["responses"] = {"200": {"description": "OK"}, "4XX": {"description": "Error", **error}}
    return op


def build_openapi(app: Flask) -> dict:
    components: dict = {"Error": ERROR_SCHEMA}
    paths: dict = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        meta = getattr(app.view_functions[rule.endpoint], "_api", None)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(_path(rule.rule), {})[method.lower()] = _operation(method.lower(), rule, meta, components)
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
