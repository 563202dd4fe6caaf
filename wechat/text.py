"""Text from WeChat that a database can store: no NUL (PostgreSQL text cannot hold one) and no lone surrogate
(``"\\ud800"`` in JSON parses to a str that cannot be encoded as UTF-8). Signed and decrypted messages are checked
once, whole, where they are parsed, so every intake refuses them with its own 400 before anything is written."""

from __future__ import annotations

import json
import math
from typing import Any


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is no JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:32]} is out of range")
    return value


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` of a message from outside, refusing ``NaN``, ``Infinity`` and ``-Infinity`` and a number too
    large to be finite (``1e400``, read as infinity) (``ValueError``): Python's reader takes them, no JSON column
    keeps them (PostgreSQL refuses the row inside its insert: a 500 the sender retries) and no number of ours is
    one."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite)


def storable(value: Any) -> bool:
    """Whether every string in ``value`` (a parsed JSON or XML value: keys too) can be stored as text."""
    if isinstance(value, str):
        return _storable_str(value)
    if isinstance(value, dict):
        return all(_storable_str(str(k)) and storable(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(storable(v) for v in value)
    return True


def _storable_str(text: str) -> bool:
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_text(value: Any) -> str:
    """JSON as WeChat writes it (compact, Chinese as itself); a string UTF-8 cannot hold (a lone surrogate, in the
    tests of our refusals) goes as its ``\\uXXXX`` escape, as any JSON writer must."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"))
    return text
