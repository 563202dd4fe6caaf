"""Bill files: decompression, the announced-hash integrity check and the backtick format.

The trade and fund-flow bills are not CSV: nothing is quoted, and every data
field starts with a backtick (so Excel keeps long numbers as text). A product
name or remark may hold commas, so data rows are split on the two-character
delimiter ``,``` and never on a bare comma; header rows carry no backticks and
are split on commas. A row whose field count differs from its header's is
refused with its line number rather than read with shifted columns, and so is a line holding a NUL
character. A bill is read a line at a time (:class:`BillReader`), never held again as text, lines or rows.
The last two lines must be the summary the caller names (its header, then one data row), so a bill cut short
or without its summary is refused rather than read with its last lines taken as the summary.
"""

from __future__ import annotations

import codecs
import hashlib
import hmac
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
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


MAX_BILL_BYTES = 1 << 30  # 1 GiB unzipped: a day of some five million payments; a bigger archive is no bill
UNZIP_STEP = 1 << 20  # bytes unzipped a call: the bill grows in place, a step at a time


def decompress_bill(raw: bytes, most: int | None = None) -> bytes | bytearray:
    """Gunzip when the body is gzip (``tar_type=GZIP``, one member or several), else return it as is. Never past
    ``most`` bytes (``MAX_BILL_BYTES``): a few megabytes that unzip to many gigabytes would take the host's memory
    before any check; such an archive is refused (``BILL_TOO_LARGE``) with at most ``most`` bytes made.

    The bill is unzipped into one buffer a step at a time and that buffer is returned (a bytes-like object, read
    and hashed as bytes are): a member unzipped in one call was the whole bill once in zlib's blocks, once joined,
    then once more in our buffer and once again copied out as bytes, some 2.5 times the bill at its peak (a
    gigabyte's bill took 2.5 GB of a host that serves payments); now about once."""
    most = MAX_BILL_BYTES if most is None else most
    if not raw.startswith(GZIP_MAGIC):
        return raw
    out, rest = bytearray(), raw
    try:
        while rest.startswith(GZIP_MAGIC):
            member, data = zlib.decompressobj(16 + zlib.MAX_WBITS), rest
            while not member.eof:
                step = member.decompress(data, min(UNZIP_STEP, most + 1 - len(out)))
                if not step and not data:  # no input left and nothing more made: cut short
                    raise EOFError("the archive ends inside a member")
                out += step
                if len(out) > most:
                    raise WeChatUnavailable(f"bill archive unzips to more than {most} bytes", code="BILL_TOO_LARGE")
                data = member.unconsumed_tail
            rest = member.unused_data
    except (OSError, EOFError, zlib.error) as exc:
        raise WeChatUnavailable("bill archive is corrupt", code="UNPARSEABLE_RESPONSE") from exc
    if rest.strip(b"\x00"):  # gzip's own reader allows zero padding after the last member, nothing else
        raise WeChatUnavailable("bill archive is corrupt", code="UNPARSEABLE_RESPONSE")
    return out


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
    """Split a trade/fund-flow bill into (detail rows, summary), backticks stripped (:class:`BillReader`, whole).

    Layout: header row, detail rows, summary header row, summary row. The summary header is a header (no
    backtick) and, given ``summary_columns``, exactly those columns; otherwise the bill is refused
    (``BILL_SUMMARY_MISSING``): its last lines are details, so it was cut short. A line holding a NUL is refused.
    """
    reader = BillReader(content, summary_columns)
    details = [row for _, row in reader]
    return details, reader.summary


class BillReader:
    """A bill read one line at a time: iterating yields its detail rows ``(line number, row)``; then ``summary``.

    A busy day's bill runs to hundreds of megabytes, so it is never held a second time: each line is cut out,
    decoded and split when it is read, and a row is the caller's to keep or drop. The checks are
    :func:`parse_bill_csv`'s, each made as its line is read (a NUL, a field count other than its header's, bytes
    that are not UTF-8), and at the end, the last two lines must be the summary header and its row.
    """

    def __init__(self, content: bytes, summary_columns: Sequence[str] | None = None) -> None:
        self.content, self.summary_columns = content, summary_columns
        self.summary: dict[str, str] = {}
        self.summary_line_no = 0

    def __iter__(self) -> Iterator[tuple[int, dict[str, str]]]:
        lines = _lines(self.content)
        first = next(lines, None)
        header = split_header(first[1]) if first else []
        held: deque[tuple[int, str]] = deque()  # the last two lines read: the summary, once the bill ends
        for n, line in lines:
            held.append((n, line))
            if len(held) > 2:
                n_row, row_line = held.popleft()
                yield n_row, _row(header, n_row, row_line)
        if len(held) < 2:
            raise WeChatUnavailable("bill has no summary section", code="UNPARSEABLE_RESPONSE")
        (n_summary, summary_line), (n_last, last) = held
        summary_header = split_header(summary_line)
        if summary_line.lstrip().startswith(FIELD_MARK) or (
            self.summary_columns is not None and summary_header != list(self.summary_columns)
        ):
            shown = summary_line if len(summary_line) <= 80 else summary_line[:80] + "…"
            raise WeChatUnavailable(
                f"bill line {n_summary} is not the summary header ({shown!r}): the bill has no summary section",
                code="BILL_SUMMARY_MISSING",
            )
        self.summary, self.summary_line_no = _row(summary_header, n_last, last), n_last


def _lines(content: bytes) -> Iterator[tuple[int, str]]:
    """The bill's non-blank lines (line number, text), each decoded as it is reached.

    Lines end in LF or CRLF only: WeChat escapes \\r and \\n inside a field, never U+2028, \\f, \\x85 and the
    other characters str.splitlines() also breaks on (a refund's reason is the fund-flow line's 备注). In UTF-8
    the byte of LF is never part of another character, so cutting the bytes there cuts no character.
    """
    start = len(codecs.BOM_UTF8) if content.startswith(codecs.BOM_UTF8) else 0
    n, size = 0, len(content)
    while start <= size:
        end = content.find(b"\n", start)
        end = size if end < 0 else end
        n, raw, start = n + 1, content[start:end], end + 1
        try:
            line = raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError as exc:
            raise WeChatUnavailable(f"bill line {n} is not UTF-8", code="UNPARSEABLE_RESPONSE") from exc
        if not line.strip():
            continue
        if "\x00" in line:
            raise WeChatUnavailable(f"bill line {n} holds a NUL character", code="UNPARSEABLE_RESPONSE")
        yield n, line


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
