"""Structured JSON logs with openids, tokens and keys masked."""

from __future__ import annotations

import json
import logging
import re
import unicodedata

SENSITIVE_KEYS = re.compile(
    r"openid|unionid|token|secret|key|session|password|authorization|phone|real_name", re.IGNORECASE
)
SENSITIVE_TEXT = [
    (re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"\bop_[A-Za-z0-9_-]{8,}"), "op_***"),
    # query strings, form bodies and redirect fragments: ?access_token=…, #token=…, &sign=…, ?msg_signature=…
    (
        re.compile(
            r"((?:\w*(?:token|secret|ticket|key|password|sign|signature)|openid|unionid|js_code|code|state|echostr)=)"
            r"[^&#\s\"']+",
            re.IGNORECASE,
        ),
        r"\1***",
    ),
    (re.compile(r"(/share-links/)[^/?#\s\"']+"), r"\1***"),
    (re.compile(r"(\"(?:openid|unionid|session_key|secret)\"\s*:\s*\")[^\"]+", re.IGNORECASE), r"\1***"),
    # a database error's statement parameters (SQLAlchemy's ``[parameters: (…)]``, one line: a repr): the openids,
    # phone numbers and digests of the row it was writing, by position on SQLite, with no name to mask them by
    (re.compile(r"(\[parameters: )[^\n]*"), r"\1***]"),
    # and PostgreSQL's detail of the row: ``Key (appid, openid)=(wx…, o…) already exists``, ``Failing row contains (…)``
    (re.compile(r"((?:\bKey \([^)\n]*\)=|Failing row contains )\()[^\n]*"), r"\1***)"),
]
RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")


def _escaped(char: str) -> str:
    """``char`` as JSON writes it escaped: ``\\uXXXX``, a surrogate pair beyond the first plane."""
    code = ord(char)
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def _unless_printable(match: re.Match[str]) -> str:
    char = match.group()
    if char.isprintable() or unicodedata.category(char) == "Zs":  # text, a letter or an ideographic space
        return char
    return _escaped(char)


def one_line(line: str) -> str:
    """A JSON line with every character a log viewer would act on escaped: the C0 and C1 controls (NEL), the line
    and paragraph separators, the bidi overrides, embeddings, isolates and marks (every format character), a lone
    surrogate. ``json.dumps(ensure_ascii=False)`` escapes only the C0 controls; Chinese text stays as it is."""
    if line.isprintable():  # nearly every line: one pass in C
        return line
    return _NOT_PRINTABLE_ASCII.sub(_unless_printable, line)


def mask_value(value: object) -> str:
    text = str(value)
    if len(text) <= 6:
        return "***"
    return f"{text[:3]}***{text[-2:]}"


def _may_hold_secret(text: str) -> bool:
    """False only when no pattern of ``SENSITIVE_TEXT`` can match: each needs one of these characters or words.
    Most lines (a request's path, a plain message) then skip the regular expressions."""
    return (
        "=" in text
        or "op_" in text
        or '"' in text
        or "/share-links/" in text
        or "[parameters: " in text
        or "Failing row contains (" in text
        or "bearer" in text.lower()
    )


def mask_text(text: str) -> str:
    if not _may_hold_secret(text):
        return text
    for pattern, replacement in SENSITIVE_TEXT:
        text = pattern.sub(replacement, text)
    return text


def mask_field(key: str, value: object) -> object:
    """Mask a sensitive key's value; look inside dicts, lists and strings of the others."""
    if SENSITIVE_KEYS.search(key):
        return mask_value(value)
    if isinstance(value, dict):
        return {k: mask_field(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [mask_field("", v) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": mask_text(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key in RESERVED or key.startswith("_"):
                continue
            payload[key] = mask_field(key, value)
        if record.exc_info:
            payload["exc"] = mask_text(self.formatException(record.exc_info))
        # one line, whatever a path, a nickname, a header or an exception's text held (a forged line otherwise)
        return one_line(json.dumps(payload, ensure_ascii=False, default=str))


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.strip().upper())  # ``info`` as gunicorn writes it is INFO (config checks the name)
