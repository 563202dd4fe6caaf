"""WeChat Pay v2 (XML) helpers: MD5 sign and safe XML in/out.

Every inbound XML goes through ``defusedxml`` with DTDs and entities forbidden
before anything else looks at it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from xml.etree.ElementTree import ParseError
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from wechat.errors import WeChatUnavailable


def v2_sign(params: Mapping[str, object], api_key: str) -> str:
    """MD5 over sorted non-empty ``k=v`` pairs (``sign`` excluded) + ``&key=``, upper-case."""
    pairs = [f"{k}={v}" for k, v in sorted(params.items()) if k != "sign" and v not in (None, "")]
    message = "&".join(pairs) + f"&key={api_key}"
    return hashlib.md5(message.encode("utf-8")).hexdigest().upper()  # noqa: S324 - v2 protocol


def v2_sign_matches(params: Mapping[str, str], api_key: str) -> bool:
    return hmac.compare_digest(params.get("sign", ""), v2_sign(params, api_key))


def to_xml(params: Mapping[str, object]) -> str:
    """Flat ``<xml>`` document, values escaped (no CDATA so ``]]>`` cannot break out)."""
    items = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in params.items() if v not in (None, ""))
    return f"<xml>{items}</xml>"


def parse_xml(text: bytes | str) -> dict[str, object]:
    """Parse a flat v2 answer; nested lists (``hblist``) become lists of dicts.

    DOCTYPE, entities or malformed XML → :class:`WeChatUnavailable` (outcome unknown).
    """
    try:
        root = SafeET.fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (DefusedXmlException, ParseError, ValueError) as exc:
        raise WeChatUnavailable(
            f"unsafe or unparseable XML: {exc.__class__.__name__}", code="UNPARSEABLE_RESPONSE"
        ) from exc
    result: dict[str, object] = {}
    for child in root:
        if len(child):
            result[child.tag] = [{g.tag: (g.text or "") for g in item} for item in child]
        else:
            result[child.tag] = (child.text or "").strip()
    return result
