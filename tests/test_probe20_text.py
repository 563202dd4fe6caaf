"""Probe 20: what people type that others read later, and the keys clients send.

An ``Idempotency-Key`` is printable ASCII (single spaces between its words), 1 to 128 characters: a key holding a
text-direction mark, a zero-width or no-break space, a C1 control (NEL breaks a line in many log readers) or any other
letter outside ASCII looked like another key in logs and the console, and reached ledger keys and refund numbers as
sent. An operator's reason is one line of visible text (``models.text.shown_text``), as a name is: it is shown in the
console and the audit log and exported to reports. Text a person sets in the mini-program (a challenge's title, its
questions and choices) is refused with a clear 422 for whatever cannot be shown or stored, never a 500."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import func, select

from models import Ban, Challenge, DepositProposal, IdempotencyRecord, Merchant, db
from models.text import shown_text
from tests.challenge_helpers import NOW, fund

MERCHANTS = "/admin/api/merchants"
BANS = "/admin/api/bans"


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")[1]


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def as_sent(text: str) -> str:
    """A header as a server hands it on: its UTF-8 bytes read as Latin-1 (WSGI), as gunicorn gives them."""
    return text.encode().decode("latin-1")


def post_json(client, path, body, headers):
    """``body`` as JSON with every non-ASCII character escaped (``\\ud800`` stays a lone surrogate's escape)."""
    return client.post(path, data=json.dumps(body), content_type="application/json", headers=headers)


# --- Idempotency-Key: printable ASCII -----------------------------------------------------------

REFUSED_KEYS = {
    "right-to-left override": "order-\u202e1",
    "right-to-left override, on the wire": as_sent("order-\u202e1"),
    "first-strong isolate, on the wire": as_sent("\u2068order-1"),
    "zero-width space": "order\u200b-1",
    "zero-width space, on the wire": as_sent("order\u200b-1"),
    "no-break space": "order\u00a01",
    "next line (C1)": "order\x85-1",
    "C1 control": "order\x9b-1",
    "letter outside ASCII": "clé-1",
    "fullwidth letter, on the wire": as_sent("ｏrder-1"),
    "byte-order mark, on the wire": as_sent("\ufefforder-1"),
    "two spaces": "order  1",
    "tab": "order\t1",
    "DEL": "order\x7f1",
}


@pytest.mark.parametrize("key", REFUSED_KEYS.values(), ids=REFUSED_KEYS.keys())
def test_a_key_outside_printable_ascii_is_refused_naming_the_header_and_changes_nothing(client, admin, key):
    response = client.post(MERCHANTS, json={"name": "Tea House"}, headers={**admin, "Idempotency-Key": key})
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.json["error"] == "invalid_idempotency_key"
    assert "Idempotency-Key" in response.json["message"]
    assert (count(Merchant), count(IdempotencyRecord)) == (0, 0)


def test_a_person_s_key_with_a_direction_mark_is_refused_on_the_claim_and_the_withdrawal(
    client, make_user, user_headers
):
    """Both ways a key is kept (``run_with_effects`` for the claim, ``run`` for the rest) check it first."""
    headers = user_headers(make_user(), **{"Idempotency-Key": as_sent("k-\u202e1")})
    claim = client.post("/api/v1/campaigns/1/claim", headers=headers)
    withdrawal = client.post("/api/v1/me/withdrawals", json={"amount_fen": 1_00}, headers=headers)
    for response in (claim, withdrawal):
        assert (response.status_code, response.json["error"]) == (422, "invalid_idempotency_key")
    assert count(IdempotencyRecord) == 0


ACCEPTED_KEYS = {
    "uuid": str(uuid.uuid4()),
    "hex": uuid.uuid4().hex,
    "words, as the demo sends them": "demo-1200ab-Alice orders the noodles",
    "every punctuation mark": "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "the longest": "k" * 128,
}


@pytest.mark.parametrize("key", ACCEPTED_KEYS.values(), ids=ACCEPTED_KEYS.keys())
def test_printable_ascii_keys_still_work_and_replay(client, admin, key):
    first = client.post(MERCHANTS, json={"name": "Tea House"}, headers={**admin, "Idempotency-Key": key})
    again = client.post(MERCHANTS, json={"name": "Tea House"}, headers={**admin, "Idempotency-Key": key})
    assert (first.status_code, again.status_code) == (201, 201), first.json
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert count(Merchant) == 1


# --- operators' reasons: one line of visible text -----------------------------------------------

BAD_REASONS = {
    "right-to-left override": "refund \u202eeugor",
    "isolate": "fraud \u2066ring\u2069",
    "line break": "fraud ring\nsecond line",
    "carriage return": "fraud ring\r=cmd|' /C calc'!A0",
    "line separator": "fraud\u2028ring",
    "C1 control": "fraud\x85ring",
    "escape": "fraud \x1b[31mring",
    "private use": "fraud \ue000ring",
    "only zero-width": "\u200b\u200b\u200b\u200b",
    "only Hangul fillers": "\u3164\u3164\u3164",
    "only blank braille": "\u2800\u2800\u2800",
}


@pytest.mark.parametrize("reason", BAD_REASONS.values(), ids=BAD_REASONS.keys())
def test_a_ban_s_reason_that_cannot_be_shown_as_one_line_is_refused_naming_the_field(client, admin, make_user, reason):
    body = {"subject": "user", "value": str(make_user().id), "reason": reason}
    response = post_json(client, BANS, body, admin)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert [d["field"] for d in response.json["details"]] == ["reason"]
    assert count(Ban) == 0


@pytest.mark.parametrize("reason", BAD_REASONS.values(), ids=BAD_REASONS.keys())
def test_a_deposit_top_up_s_reason_is_refused_the_same_and_keeps_no_key(client, make_operator, make_merchant, reason):
    _, finance = make_operator("finance")
    shop = make_merchant()
    body = {"amount_fen": 100, "reason": reason, "transfer_ref": "TR-0001"}
    path = f"{MERCHANTS}/{shop.id}/deposit/top-ups"
    response = post_json(client, path, body, {**finance, "Idempotency-Key": "top-up-1"})
    assert response.status_code == 422, response.get_data(as_text=True)
    assert [d["field"] for d in response.json["details"]] == ["reason"]
    assert (count(DepositProposal), count(IdempotencyRecord)) == (0, 0)


def test_a_merchant_s_optional_reason_is_refused_too(client, admin):
    response = post_json(client, MERCHANTS, {"name": "Tea House", "reason": "opened \u202eby"}, admin)
    assert response.status_code == 422
    assert [d["field"] for d in response.json["details"]] == ["reason"]
    assert count(Merchant) == 0


def test_reasons_people_write_still_work(client, admin, make_user):
    for reason in ("fraud ring 诈骗团伙 ☕", "نقل مصرفي", "family 👨‍👩‍👧‍👦 abuse", "长" * 500):
        body = {"subject": "user", "value": str(make_user().id), "reason": reason}
        made = post_json(client, BANS, body, admin)
        assert made.status_code == 201, made.json
        assert made.json["reason"] == reason


def _reason_fields(app):
    """(route, model, field) for every field named ``reason`` of every JSON body the API reads."""
    seen = set()
    for rule in app.url_map.iter_rules():
        api = getattr(app.view_functions[rule.endpoint], "_api", None)
        model = api and api["body"]
        if model is None or model in seen:
            continue
        seen.add(model)
        for name in model.model_fields:
            if name == "reason":
                yield rule.rule, model, name


# Fields of files this probe does not own: refused nothing but the C0 controls when probed (see the report).
ELSEWHERE = {"CreateRefund"}


def test_every_reason_field_refuses_a_direction_mark_and_a_line_break(app):
    found, open_fields = 0, []
    for route, model, name in _reason_fields(app):
        found += 1
        for bad in ("ab\u202ecd", "ab\ncd"):
            try:
                model.model_validate({name: bad})
            except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError, read below
                if any(e["loc"] == (name,) for e in exc.errors()):
                    continue
            if model.__name__ not in ELSEWHERE:
                open_fields.append((route, model.__name__, bad))
    assert found > 20
    assert open_fields == []


# --- text a person sets in the mini-program -----------------------------------------------------


@pytest.fixture
def person(app, make_user, user_headers, time_machine):
    time_machine.move_to(NOW)
    user = make_user()
    fund(user.id, 100_00)
    db.session.commit()
    return user_headers(user)


def challenge(client, headers, key, *, title=None, prompt="Which?", choices=("one", "two")):
    body = {"kind": "steps", "days": 2, "stake": 1_00}
    if title is not None:
        body["title"] = title
    if prompt != "Which?" or choices != ("one", "two"):
        body = {
            "kind": "quiz",
            "days": 1,
            "stake": 1_00,
            "questions": [{"prompt": prompt, "choices": list(choices), "answer": 0}],
        }
    return post_json(client, "/api/v1/challenges", body, {**headers, "Idempotency-Key": key})


HOSTILE = {
    "too long": "x" * 65,
    "very long (under the body limit)": "x" * 60_000,
    "NUL": "a\u0000b",
    "lone surrogate": "a\ud800b",
    "lone low surrogate": "\udc00",
    "right-to-left override": "win \u202e001$",
    "left-to-right embedding": "\u202awin",
    "next line (C1)": "win\x85big",
    "line break": "win\nbig",
    "only spaces": "   ",
    "only ideographic spaces": "\u3000\u3000",
    "only zero-width": "\u200b\u200d",
    "only Hangul fillers": "\u3164\u3164",
    "only a halfwidth Hangul filler": "\uffa0",
    "only blank braille": "\u2800",
    "private use": "\ue000win",
    "65 emoji (4 bytes each)": "😀" * 65,
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("where", ["title", "prompt", "choice"])
def test_a_challenge_s_hostile_text_is_a_clear_422_that_changes_nothing(client, person, where, text):
    if where == "title":
        response = challenge(client, person, "k-1", title=text)
    elif where == "prompt":
        response = challenge(client, person, "k-1", prompt=text if len(text) != 65 else text * 4)
    else:
        response = challenge(client, person, "k-1", choices=("one", text))
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.json["error"] in ("validation_error", "invalid_json")
    assert (count(Challenge), count(IdempotencyRecord)) == (0, 0)


def test_a_title_of_64_emoji_is_kept_whole_on_either_database(client, person):
    """64 characters of four UTF-8 bytes each: within the column's 64 on PostgreSQL (characters, not bytes)."""
    title = "😀" * 63 + "👍"
    response = challenge(client, person, "k-emoji", title=title)
    assert response.status_code == 201, response.json
    db.session.rollback()
    assert db.session.execute(select(Challenge.title)).scalar_one() == title


def test_a_title_with_joined_emoji_and_other_scripts_is_kept(client, person):
    title = "家庭 👨‍👩‍👧 walk مشي"
    response = challenge(client, person, "k-joined", title=title)
    assert response.status_code == 201, response.json
    db.session.rollback()
    assert db.session.execute(select(Challenge.title)).scalar_one() == title


@pytest.mark.parametrize("text", ["\u3164", "\u115f\u1160", "\uffa0 \u3164", "\u2800\u2800"])
def test_blank_looking_letters_alone_are_nothing_visible(text):
    with pytest.raises(ValueError, match="nothing visible"):
        shown_text(text)
    assert shown_text(f"a{text}b") == f"a{text}b"  # between visible characters, a filler is a character of the text


@pytest.mark.parametrize(
    "module, model, field, good",
    [
        ("web.refunds_admin", "CreateRefund", "reason", {"amount_fen": 100}),
        ("web.reconciliation_api", "ResolveMismatch", "resolution", {}),
    ],
)
def test_operator_lines_sent_on_or_read_later_refuse_direction_marks_and_line_breaks(module, model, field, good):
    import importlib

    from pydantic import ValidationError

    cls = getattr(importlib.import_module(module), model)
    assert getattr(cls.model_validate({**good, field: "customer asked"}), field) == "customer asked"
    for bad in ("refund\u202egnp.exe", "two\nlines", "\u3164\u3164\u3164"):
        with pytest.raises(ValidationError):
            cls.model_validate({**good, field: bad})


def test_a_risk_rule_note_may_be_empty_but_not_hidden_text():
    from pydantic import TypeAdapter, ValidationError

    from web.risk_rules_api import Note

    note = TypeAdapter(Note)
    assert note.validate_python("") == ""
    assert note.validate_python(" checked with the merchant ") == "checked with the merchant"
    with pytest.raises(ValidationError):
        note.validate_python("ok\u202e")
