"""Bill files: decompression, SHA-1 integrity check and the backtick CSV format."""

from __future__ import annotations

import csv
import gzip
import hashlib
import hmac
import io
import zlib

from wechat.errors import WeChatIntegrityError, WeChatUnavailable

GZIP_MAGIC = b"\x1f\x8b"


def decompress_bill(raw: bytes) -> bytes:
    """Gunzip when the body is gzip (``tar_type=GZIP``), else return it as is."""
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise WeChatUnavailable("bill archive is corrupt", code="UNPARSEABLE_RESPONSE") from exc


def bill_sha1(content: bytes) -> str:
    return hashlib.sha1(content).hexdigest()  # noqa: S324 - WeChat's announced hash type


def check_bill_hash(content: bytes, hash_value: str) -> None:
    """Raise :class:`WeChatIntegrityError` unless SHA-1(content) equals ``hash_value``."""
    if not hmac.compare_digest(bill_sha1(content), (hash_value or "").strip().lower()):
        raise WeChatIntegrityError("bill SHA-1 does not match hash_value")


def parse_bill_csv(content: bytes) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Split a trade/fund-flow bill into (detail rows, summary), backticks stripped.

    Layout: header row, detail rows, summary header row, summary row.
    """
    text = content.decode("utf-8-sig")
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    if len(rows) < 3:
        raise WeChatUnavailable("bill has no summary section", code="UNPARSEABLE_RESPONSE")
    header = [_clean(c) for c in rows[0]]
    details = [dict(zip(header, (_clean(c) for c in r), strict=False)) for r in rows[1:-2]]
    summary = dict(zip((_clean(c) for c in rows[-2]), (_clean(c) for c in rows[-1]), strict=False))
    return details, summary


def _clean(cell: str) -> str:
    cell = cell.strip()
    return cell[1:] if cell.startswith("`") else cell
