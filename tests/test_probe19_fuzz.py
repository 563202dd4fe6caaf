"""Probe 19: every operation of ``/openapi.json`` fuzzed as each caller would call it, and hand-written bodies with
each field broken in turn.

``tests/test_openapi_contract.py`` drives schemathesis as an admin; ``tests/test_probe18_fuzz.py`` went through the
document's instants and a header's NUL. Here each operation is called as nobody, a signed-in person and each operator
role (merchant staff too), with bodies built from the document's own schemas and then broken (wrong types, missing and
extra fields, huge, negative and zero numbers, 10,000-character strings, control and direction characters, deep
nesting, a key twice, text that is not UTF-8, other content types, no body), path ids at 0, -1, 2^31, 2^63 and words,
and query strings with extreme values and a key twice. Checked for each answer: no 5xx (but a 503 with Retry-After),
every 4xx a JSON error with its code (WeChat's routes: WeChat's own format, or text where the document says so),
nothing written by a refused request (the row count of every table, the ledger's too, before and after), and a 2xx
answer that matches the document.

What it found: an event's ``client_at`` given as a number was read as Unix seconds or milliseconds, a unit guessed from
its size, where the document says it is a date-time string (as probe 18 found for instants elsewhere).

``PROBE19_FUZZ_SEED`` explores other bodies locally (the run here is seeded, so a failure repeats)."""

from __future__ import annotations

import copy
import json
import os
import random
import re
from urllib.parse import quote

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import func, select, text

from models import Merchant, Order, db, utcnow
from rebate import issue_packet

SEED = int(os.environ.get("PROBE19_FUZZ_SEED", "19"))
OPERATOR_ROLES = ("admin", "finance", "support", "merchant_staff")
REASON = "checked by the fuzz probe"
BIG = "x" * 10_000
# What a schema may allow and a column may not hold, and plain wrong values: each replaces one field at a time.
VALUES = [
    BIG, "x" * 65, "x" * 257, "x" * 501, "😀" * 500, "a\u202eb", "a\u200bb", "a\x01b", "a\nb", " ", "", "\ud83d",
    "１２３", "2030-01-01", "2030-01-01T00:00:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
    0, -1, 2**31, 2**53 + 1, 2**63, 10**13 + 1, 10**19, 1.5, True, None, [], {}, [1] * 1000, {"k" * 1000: 1},
]  # fmt: skip
QUERY_VALUES = [
    BIG, "-1", "0", str(2**31), str(2**63), "1.5", "abc", "\u202e", "\x01", "true", "", "9999-12-31", "0001-01-01",
    "2030-01-01T00:00:00", "１２",
]  # fmt: skip
PATH_IDS = ["0", "-1", str(2**31), str(2**63), "abc", "1.5", "%00"]
PATH_WORDS = [BIG[:5000], "%E2%80%AE", "%ff", "%00", "a%2Fb"]
# Refused requests that write by design: a wrong binding code counts towards its owner's lock-out; a refusal from
# inside a keyed view is kept under its Idempotency-Key (a retry is told the same), allowed below for a keyed request.
WRITES_WHEN_REFUSED = {"chat_binding_failures"}
# A login WeChat refused still counts against its address's limit (LOGIN_PER_IP_PER_MINUTE: a flood of bad codes too)
COUNTED_WHEN_REFUSED = {"/api/v1/auth/login": {"limit_counters"}}
# A route that ends the test's own session or accounts: called last, or not at all.
LAST = "/api/v1/auth/sign-out-everywhere"


@pytest.fixture
def world(app, client, make_user, user_headers, make_operator, make_product, make_campaign, pay):
    """Rows numbered 1 wherever a route reads one: merchant, product, campaign, its packet, a paid order, a ban; a
    second person (the ban's); one operator of each role (merchant staff of merchant 1)."""
    product = make_product(price_fen=50_00)
    rules = {"roles": [{"role": "consumer", "rate_bps": 800, "form": "balance", "cap_fen": 10_00}]}
    campaign = make_campaign(rules, packet_amount_fen=10_00, packet_min_spend_fen=20_00)
    user = make_user()
    make_user()
    issue_packet(campaign, user, source="test", source_ref="fuzz", now=utcnow())
    db.session.commit()
    callers = {"anonymous": {}, "user": user_headers(user)}
    for role in OPERATOR_ROLES:
        merchant = db.session.get(Merchant, product.merchant_id) if role == "merchant_staff" else None
        callers[role] = make_operator(role, merchant)[1]
    made = client.post("/api/v1/orders", json={"lines": [{"product_id": 1, "quantity": 1}]}, headers=callers["user"])
    assert made.status_code == 201, made.json
    pay(db.session.get(Order, made.json["id"]))
    ban = {"subject": "user", "value": "2", "reason": REASON}
    assert client.post("/admin/api/bans", json=ban, headers=callers["admin"]).status_code == 201
    # merchant staff's device and address are noted on their first request (web.api._note_merchant_staff): once here
    client.get("/admin/api/merchants", headers=callers["merchant_staff"])
    return callers


def table_counts() -> dict[str, int]:
    """Every table's row count, in one statement."""
    names = [t.name for t in db.metadata.sorted_tables]
    sql = "SELECT " + ", ".join(f'(SELECT count(*) FROM "{name}")' for name in names)  # noqa: S608 - our tables
    db.session.rollback()
    counts = dict(zip(names, db.session.execute(text(sql)).one(), strict=True))
    db.session.rollback()
    return counts


class Checker:
    """Calls a route and notes what is wrong with the answer."""

    def __init__(self, client, doc: dict):
        self.client, self.doc, self.problems, self.calls = client, doc, [], 0
        self.counts: dict[str, int] | None = None  # as the last request left them (None: to be counted)

    def call(self, operation: dict, method: str, url: str, where: str, data=None, content_type=None, headers=None):
        self.calls += 1
        if method != "GET" and self.counts is None:
            self.counts = table_counts()
        response = self.client.open(url, method=method, data=data, content_type=content_type, headers=headers or {})
        status, raw = response.status_code, response.get_data()
        where = f"{method} {url[:90]} {where}"
        if method != "GET":
            before, self.counts = self.counts, table_counts()
            written = {t: (n, self.counts[t]) for t, n in before.items() if self.counts[t] != n}
            allowed = WRITES_WHEN_REFUSED | ({"idempotency_records"} if "Idempotency-Key" in (headers or {}) else set())
            allowed |= COUNTED_WHEN_REFUSED.get(url.split("?")[0], set())
            if 400 <= status < 500 and set(written) - allowed:
                self.problems.append(f"refused ({status}) but wrote {written}: {where}")
        else:
            self.counts = None  # a GET may write (an OAuth state, a value made on its first read)
        db.session.rollback()
        if status >= 500 and not (status == 503 and response.headers.get("Retry-After")):
            self.problems.append(f"{status} {where}: {raw[:300]!r}")
        elif 400 <= status < 500:
            self._error(operation, status, response, where)
        elif 200 <= status < 300:
            self._success(operation, status, response, where)
        return response

    def _error(self, operation: dict, status: int, response, where: str) -> None:
        responses = operation.get("responses", {})
        documented = {
            **responses.get("4XX", {}).get("content", {}),
            **responses.get(str(status), {}).get("content", {}),
        }
        body = response.get_json(silent=True)
        if body is None and response.mimetype in ("text/plain", "text/html") and response.mimetype in documented:
            return  # WeChat's push routes answer WeChat in text, a page its 404 as a page, as their document says
        if not isinstance(body, dict) or not ("error" in body or body.get("code") == "FAIL"):
            self.problems.append(f"{status} without a JSON error code: {where}: {response.get_data()[:200]!r}")

    def _success(self, operation: dict, status: int, response, where: str) -> None:
        documented = operation["responses"].get(str(status))
        if documented is None:
            self.problems.append(f"{status} is not in the document: {where}")
            return
        schema = documented.get("content", {}).get("application/json", {}).get("schema")
        if schema is None or not response.is_json:
            return
        validator = Draft202012Validator({**schema, "components": self.doc["components"]})
        wrong = next(iter(validator.iter_errors(response.get_json())), None)
        if wrong is not None:
            self.problems.append(f"{status} answer is not the documented one ({wrong.message[:200]}): {where}")


# -- bodies from the document's schemas ----------------------------------------------------------


def resolve(schema: dict, components: dict) -> dict:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def sample(schema: dict, components: dict, rnd: random.Random):
    """A value the schema allows, more or less (a generator's guess: constraints across fields are not known)."""
    schema = resolve(schema, components)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rnd.choice(schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [o for o in schema[key] if resolve(o, components).get("type") != "null"] or schema[key]
            return sample(rnd.choice(options), components, rnd)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        required = schema.get("required", [])
        return {
            name: sample(sub, components, rnd)
            for name, sub in schema.get("properties", {}).items()
            if name in required or rnd.random() < 0.5
        }
    if kind == "array":
        return [sample(schema.get("items", {}), components, rnd) for _ in range(max(schema.get("minItems", 0), 1))]
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1)
        high = schema.get("maximum", schema.get("exclusiveMaximum", 1001) - 1)
        return rnd.choice([low, high, max(low, min(high, 1))])
    if kind in ("number", "boolean", "null"):
        return {"number": 1.5, "boolean": True, "null": None}[kind]
    if schema.get("format") in ("date-time", "date"):
        return "2030-01-01T00:00:00+08:00" if schema["format"] == "date-time" else "2030-01-01"
    return "s" * max(schema.get("minLength", 1), min(schema.get("maxLength", 12), 5))


def field_paths(value, path=()):
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, inner in items:
        yield (*path, key)
        yield from field_paths(inner, (*path, key))


def replaced(value, path: tuple, new):
    value = copy.deepcopy(value)
    inner = value
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = new
    return value


def encoded(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")  # a lone surrogate as sent


def broken_bodies(good, rnd: random.Random, fields: int) -> list[tuple[str, bytes, str]]:
    """``good`` with one field replaced (``fields`` of them, drawn), or the whole body broken."""
    one_field = [(path, new) for path in field_paths(good) for new in VALUES]
    bodies = [
        (f"{'.'.join(map(str, path))}={str(new)[:20]!r}", encoded(replaced(good, path, new)), "application/json")
        for path, new in rnd.sample(one_field, min(fields, len(one_field)))
    ]
    whole = json.dumps(good).encode()
    bodies += [
        ("no body", b"", "application/json"),
        ("text/plain", whole, "text/plain"),
        ("a form", b"reason=because+I+can", "application/x-www-form-urlencoded"),
        ("not UTF-8", b'{"reason": "\xff\xfe"}', "application/json"),
        ("UTF-16", json.dumps(good).encode("utf-16"), "application/json"),
        ("a key twice", b'{"reason": "one reason", "reason": "another reason"}', "application/json"),
        ("40 deep", b"[" * 40 + b"]" * 40, "application/json"),
        ("an array", b"[]", "application/json"),
        ("null", b"null", "application/json"),
        ("1e999", b"1e999", "application/json"),
        ("NaN", b'{"x": NaN}', "application/json"),
        ("a 5000-digit number", b'{"x": 1' + b"0" * 5000 + b"}", "application/json"),
    ]
    if isinstance(good, dict):
        bodies.append(("an extra field", encoded({**good, "zz_extra": 1}), "application/json"))
        bodies += [(f"no {k}", encoded({a: b for a, b in good.items() if a != k}), "application/json") for k in good]
    return bodies


def allowed_roles(operation: dict) -> list[str]:
    security = operation.get("security")
    if not security:
        return ["anonymous"]
    if "userToken" in security[0]:
        return ["user"]
    return [r.strip() for r in operation.get("description", "").removeprefix("Roles: ").split(",") if r.strip()]


def callers_of(operation: dict) -> list[str]:
    """Every caller who may call it, then nobody and one who may not (refused before the body is read)."""
    allowed = allowed_roles(operation)
    others = [r for r in ("anonymous", "user", *OPERATOR_ROLES) if r not in allowed]
    return allowed + others[:2]


def test_every_operation_as_every_caller_answers_broken_input_cleanly_and_writes_nothing(app, client, world):
    doc = client.get("/openapi.json").json
    components = doc["components"]["schemas"]
    rnd = random.Random(SEED)
    checker = Checker(client, doc)
    for path, operations in sorted(doc["paths"].items(), key=lambda item: item[0] == LAST):
        for method, operation in operations.items():
            params = operation.get("parameters", [])
            schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            allowed = allowed_roles(operation)
            for role in callers_of(operation):
                headers = world[role]

                def url(value_of, path=path, params=params):
                    for p in params:
                        if p["in"] == "path":
                            path = path.replace("{" + p["name"] + "}", value_of(p))
                    return path

                good_url = url(lambda p: rnd.choice(p["schema"]["enum"]) if "enum" in p["schema"] else "1")
                good = sample(schema, components, rnd) if schema is not None else None
                good_body = encoded(good) if schema is not None else None
                checker.call(operation, method.upper(), good_url, f"[{role}]", good_body, "application/json", headers)
                if role not in allowed:
                    continue
                if any(p["in"] == "path" for p in params):
                    bad_urls = [
                        url(lambda p: rnd.choice(PATH_IDS if p["schema"].get("type") == "integer" else PATH_WORDS))
                        for _ in range(2)
                    ]
                    for bad in bad_urls:
                        checker.call(
                            operation, method.upper(), bad, f"[{role}]", good_body, "application/json", headers
                        )
                for p in (p for p in params if p["in"] == "query"):
                    name = p["name"]
                    for value in [*rnd.sample(QUERY_VALUES, 2), None]:
                        query = f"{name}=1&{name}=2" if value is None else f"{name}={quote(value)}"
                        where = f"?{query[:60]} [{role}]"
                        checker.call(
                            operation,
                            method.upper(),
                            f"{good_url}?{query}",
                            where,
                            good_body,
                            "application/json",
                            headers,
                        )
                if schema is not None:
                    for label, data, content_type in broken_bodies(good, rnd, fields=12):
                        where = f"[{role}] {label}"
                        checker.call(operation, method.upper(), good_url, where, data, content_type, headers)
    assert checker.calls > 2_000
    assert not checker.problems, "\n".join(checker.problems)


# -- hand-written bodies that succeed, each field broken in turn -----------------------------------

RULES = {"roles": [{"role": "consumer", "rate_bps": 900, "form": "balance", "cap_fen": 10_00}]}
RISK_RULE = {"name": "review_fast", "action": "review", "when": [["seconds_from_first_view", "<", 20]]}
BODIES = {  # (method, path, role): a body the route takes (most answer 2xx)
    ("POST", "/admin/api/audiences", "admin"): {"name": "lapsed", "definition": {"kind": "lapsed", "days": 30}},
    ("POST", "/admin/api/audiences/1/runs", "admin"): {"campaign_id": 1, "holdout_bps": 1000, "reason": REASON},
    ("POST", "/admin/api/bans", "support"): {"subject": "user", "value": "2", "reason": REASON, "days": 3},
    ("POST", "/admin/api/campaigns", "admin"): {
        "name": "Spring",
        "issuer_type": "platform",
        "funder_type": "platform_fund",
        "rules": RULES,
        "budget_limit_fen": 1_000_00,
        "packet_amount_fen": 5_00,
        "packet_min_spend_fen": 10_00,
        "max_packets": 10,
        "ends_at": "2030-01-01T00:00:00+08:00",
        "packet_categories": ["general"],
        "channels": ["mini_program"],
    },
    ("POST", "/admin/api/campaigns/validate", "merchant_staff"): {
        "name": "Spring",
        "issuer_type": "merchant",
        "funder_type": "merchant_deposit",
        "issuer_merchant_id": 1,
        "funder_merchant_id": 1,
        "rules": RULES,
    },
    ("PATCH", "/admin/api/campaigns/1", "admin"): {"reason": REASON, "name": "Renamed", "max_packets": 100},
    ("POST", "/admin/api/campaigns/1/packets/batch", "admin"): {"count": 3, "reason": REASON},
    ("PUT", "/admin/api/campaigns/1/rules", "admin"): {"reason": REASON, "rules": RULES},
    ("POST", "/admin/api/campaigns/1/simulate", "admin"): {"days": 7, "rules": RULES, "budget_limit_fen": 1_000_00},
    ("POST", "/admin/api/merchants", "admin"): {"name": "Noodles", "reason": REASON},
    ("POST", "/admin/api/merchants/1/deposit/top-ups", "finance"): {
        "amount_fen": 10_00,
        "reason": REASON,
        "transfer_ref": "TR-0001",
    },
    ("PUT", "/admin/api/merchants/1/fee-rate", "admin"): {"rate_bps": 100, "reason": REASON},
    ("POST", "/admin/api/merchants/1/products", "merchant_staff"): {
        "name": "Tea",
        "category": "drinks",
        "price_fen": 1,
    },
    ("PUT", "/admin/api/merchants/1/wechat-pay", "admin"): {"sub_mchid": "1900000109", "reason": REASON},
    ("POST", "/admin/api/operators", "admin"): {
        "username": "n",
        "display_name": "N",
        "role": "support",
        "reason": REASON,
    },
    ("POST", "/admin/api/orders/1/milestones", "admin"): {"name": "lessons_10", "quality": 5},
    ("POST", "/admin/api/orders/1/refunds", "finance"): {"amount_fen": 1_00, "reason": REASON},
    ("POST", "/admin/api/payouts", "finance"): {"user_id": 1, "amount_fen": 1_00, "reason": REASON},
    ("PUT", "/admin/api/rails/wechat_change", "admin"): {"enabled": True, "reason": REASON},
    ("POST", "/admin/api/risk/rules", "admin"): {
        "scope": "platform",
        "reason": REASON,
        "note": "n",
        "rules": [RISK_RULE],
    },
    ("POST", "/admin/api/risk/rules/backtest", "finance"): {
        "rules": [RISK_RULE],
        "scope": "platform",
        "from": "2030-01-01T00:00:00+08:00",
        "limit": 10,
    },
    ("POST", "/api/v1/events", "user"): {
        "events": [
            {"kind": "view", "product_id": 1, "dwell_ms": 10},
            {"kind": "search", "query": "tea"},
            {"kind": "page", "path": "/p/1", "client_at": "2030-01-01T00:00:00+08:00"},
        ],
    },
    ("POST", "/api/v1/me/notices/read", "user"): {"ids": [1, 2]},
    ("PUT", "/api/v1/me/preferences", "user"): {"rebate_form": "balance"},
    ("PUT", "/api/v1/me/real-name", "user"): {"real_name": "张三"},
    ("POST", "/api/v1/orders", "user"): {"lines": [{"product_id": 1, "quantity": 1}], "red_packet_id": 1},
    ("POST", "/admin/api/red-packets/1/revoke", "admin"): {"reason": REASON},  # last: the order above holds it
}


def test_bodies_a_route_takes_with_each_field_broken_answer_cleanly(app, client, world):
    """Generated bodies rarely get past a route's own checks; these do, so a broken field meets the code behind them
    (the database's column sizes and integer widths above all, on PostgreSQL)."""
    doc = client.get("/openapi.json").json
    rnd = random.Random(SEED)
    checker = Checker(client, doc)
    done = 0
    for number, ((method, path, role), good) in enumerate(BODIES.items()):
        documented = next(
            ops[method.lower()]
            for p, ops in doc["paths"].items()
            if method.lower() in ops and re.fullmatch(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(p)), path)
        )
        headers = {**world[role], "Idempotency-Key": f"good-{number}"}
        answer = checker.call(
            documented, method, path, f"[{role}] as written", encoded(good), "application/json", headers
        )
        done += answer.status_code < 300
        cases = [(p, v) for p in field_paths(good) for v in VALUES]
        for k, (field, value) in enumerate(rnd.sample(cases, min(len(cases), 80))):
            headers = {**world[role], "Idempotency-Key": f"broken-{number}-{k}"}
            where = f"[{role}] {'.'.join(map(str, field))}={str(value)[:24]!r}"
            checker.call(
                documented, method, path, where, encoded(replaced(good, field, value)), "application/json", headers
            )
    assert done >= len(BODIES) - 2, checker.problems  # the bodies are ones the routes take
    assert not checker.problems, "\n".join(checker.problems)


# -- findings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("client_at", [0, 1_700_000_000, 1_700_000_000_000, 12_345.5, "1700000000"])
def test_an_events_client_at_given_as_a_number_is_refused_and_records_nothing(
    client, make_user, user_headers, client_at
):
    """The document says ``client_at`` is a date-time string; pydantic read a number (or its digits) as Unix seconds,
    or milliseconds when large: a phone sending ``performance.now()`` or seconds placed its events by a unit guessed
    from the size (risk.trail.place orders a batch by these offsets)."""
    from models import BehaviourEvent

    events = [{"kind": "page", "path": "/a", "client_at": client_at}, {"kind": "page", "path": "/b"}]
    answer = client.post("/api/v1/events", json={"events": events}, headers=user_headers(make_user()))
    assert answer.status_code == 422, answer.json
    assert answer.json["details"][0]["field"] == "events.0.client_at"
    db.session.rollback()
    assert db.session.execute(select(func.count()).select_from(BehaviourEvent)).scalar_one() == 0


def test_an_events_client_at_written_out_is_still_taken_in_any_year(client, make_user, user_headers):
    events = [
        {"kind": "page", "path": "/a", "client_at": "1970-01-01T00:00:00Z"},  # a phone whose clock was reset
        {"kind": "page", "path": "/b", "client_at": "2030-01-01T00:00:00+08:00"},
    ]
    answer = client.post("/api/v1/events", json={"events": events}, headers=user_headers(make_user()))
    assert answer.status_code == 202, answer.json
    assert answer.json == {"accepted": 2}
