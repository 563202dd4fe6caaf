"""Bill files: decompression, the announced-hash integrity check and the backtick format.

The trade and fund-flow bills are not CSV: nothing is quoted, and every data
field starts with a backtick (so Excel keeps long numbers as text). A product
name or remark may hold commas, so data rows are split on the two-character
delimiter ``,``` and never on a bare comma; header rows carry no backticks and
are split on commas. A row whose field count differs from its header's is
refused with its line number rather than read with shifted columns, and so is a line holding a NUL
character. The last two lines must be the summary the caller names (its header, then one data row), so a bill
cut short or without its summary is refused rather than read with its last lines taken as the summary.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from wechat.errors import WeChatIntegrityError, WeChatUnavailable

GZIP_MAGIC = b"\x1f\x8b"
HEX_DIGEST = re.compile(r"[0-9A-Fa-f]{1,64}", re.ASCII)  # SHA-1 is 40, SHA-256 64
FIELD_MARK = "`"
DATA_DELIMITER = ",`"
# hash_type → digest. WeChat documents SHA1 only; SHA256 is accepted as the stronger digest of the same kind.
HASH_TYPES: dict[str, Callable[[bytes], str]] = {
    "SHA1": lambda content: hashlib.sha1(content).hexdigest(),  # noqa: S324 - WeChat's announced hash type
    "SHA256": lambda content: hashlib.sha256(content).hexdigest(),
}


def decompress_bill(raw: bytes) -> bytes:
    """Gunzip when the body is gzip (``tar_type=GZIP``), else return it as is."""
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise WeChatUnavailable("bill archive is corrupt", code="UNPARSEABLE_RESPONSE") from exc


def bill_sha1(content: bytes) -> str:
    return HASH_TYPES["SHA1"](content)


def bill_answer(data: Any) -> tuple[str, str, str | None]:
    """An apply answer's (``download_url``, ``hash_value``, ``hash_type``), each of the type WeChat documents.

    ``download_url`` a non-empty string, ``hash_value`` a hex digest, ``hash_type`` a string when present (which
    one :func:`check_hash_type` judges); anything else is an answer we cannot read (``UNPARSEABLE_RESPONSE``).
    """
    if not isinstance(data, dict):
        raise WeChatUnavailable("the bill answer is not an object", code="UNPARSEABLE_RESPONSE")
    url, digest, hash_type = data.get("download_url"), data.get("hash_value"), data.get("hash_type")
    if not isinstance(url, str) or not url:
        raise WeChatUnavailable("the bill answer's download_url is not a URL", code="UNPARSEABLE_RESPONSE")
    if not isinstance(digest, str) or not HEX_DIGEST.fullmatch(digest.strip()):
        raise WeChatUnavailable("the bill answer's hash_value is not a hex digest", code="UNPARSEABLE_RESPONSE")
    if hash_type is not None and not isinstance(hash_type, str):
        raise WeChatUnavailable("the bill answer's hash_type is not a string", code="UNPARSEABLE_RESPONSE")
    return url, digest.strip(), hash_type


def check_hash_type(hash_type: Any) -> str:
    """The bill answer's ``hash_type``, refused unless it is one we can check."""
    if not isinstance(hash_type, str) or hash_type not in HASH_TYPES:
        raise WeChatIntegrityError(
            f"bill hash_type {hash_type!r} is not one of {', '.join(HASH_TYPES)}", code="UNEXPECTED_HASH_TYPE"
        )
    return hash_type


def check_bill_hash(content: bytes, hash_value: str, hash_type: str = "SHA1") -> None:
    """Raise :class:`WeChatIntegrityError` unless the digest of ``content`` equals ``hash_value``."""
    digest = HASH_TYPES[check_hash_type(hash_type)](content)
    if not hmac.compare_digest(digest, (hash_value or "").strip().lower()):
        raise WeChatIntegrityError(f"bill {hash_type} does not match hash_value")


def parse_bill_csv(
    content: bytes, summary_columns: Sequence[str] | None = None
) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Split a trade/fund-flow bill into (detail rows, summary), backticks stripped.

    Layout: header row, detail rows, summary header row, summary row. The summary header is a header (no
    backtick) and, given ``summary_columns``, exactly those columns; otherwise the bill is refused
    (``BILL_SUMMARY_MISSING``): its last lines are details, so it was cut short. A line holding a NUL is refused.
    """
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WeChatUnavailable("bill is not UTF-8", code="UNPARSEABLE_RESPONSE") from exc
    # Lines end in CRLF or LF only: WeChat escapes \r and \n inside a field, never U+2028, \f, \x85 and the other
    # characters str.splitlines() also breaks on (a refund's reason is the fund-flow line's 备注).
    rows = text.split("\n")
    lines = [(n, line.removesuffix("\r")) for n, line in enumerate(rows, start=1) if line.strip()]
    for n, line in lines:
        if "\x00" in line:
            raise WeChatUnavailable(f"bill line {n} holds a NUL character", code="UNPARSEABLE_RESPONSE")
    if len(lines) < 3:
        raise WeChatUnavailable("bill has no summary section", code="UNPARSEABLE_RESPONSE")
    header = split_header(lines[0][1])
    n_summary, summary_line = lines[-2]
    summary_header = split_header(summary_line)
    if summary_line.lstrip().startswith(FIELD_MARK) or (
        summary_columns is not None and summary_header != list(summary_columns)
    ):
        shown = summary_line if len(summary_line) <= 80 else summary_line[:80] + "…"
        raise WeChatUnavailable(
            f"bill line {n_summary} is not the summary header ({shown!r}): the bill has no summary section",
            code="BILL_SUMMARY_MISSING",
        )
    details = [_row(header, n, line) for n, line in lines[1:-2]]
    summary = _row(summary_header, lines[-1][0], lines[-1][1])
    return details, summary


def split_header(line: str) -> list[str]:
    """A header row: plain column names, comma-separated, no backticks."""
    return [name.strip() for name in line.split(",")]


def split_data(line: str) -> list[str]:
    """A data row: every field starts with a backtick, so fields are split on ``,``` only."""
    line = line.rstrip("\r")
    if not line.startswith(FIELD_MARK):
        raise WeChatUnavailable("bill data row does not start with a backtick", code="UNPARSEABLE_RESPONSE")
    return [field.strip() for field in line[1:].split(DATA_DELIMITER)]


def _row(header: list[str], n: int, line: str) -> dict[str, str]:
    try:
        fields = split_data(line)
    except WeChatUnavailable as exc:
        raise WeChatUnavailable(f"bill line {n}: {exc.message}", code=exc.code) from None
    if len(fields) != len(header):
        raise WeChatUnavailable(
            f"bill line {n} has {len(fields)} fields, its header {len(header)}", code="UNPARSEABLE_RESPONSE"
        )
    return dict(zip(header, fields, strict=True))
