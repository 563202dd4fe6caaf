"""A campaign's public rules: ``GET /api/v1/campaigns/<id>/rules`` (JSON) and ``/c/<id>`` (a page).

Public like a poster (no sign-in): who organises and funds the campaign, what each side gets, dates,
limits, the budget left (coarsely) and where to complain, built once by ``insights.campaign_rules``
and shown twice. Drafts and unknown ids answer 404. The page is server-rendered, autoescaped (a
campaign's name is operator input) and runs no script: its Content-Security-Policy allows nothing but
its own inline style, by hash.

``?v=<version>`` shows an earlier rules version (a packet pays under the version it was issued with:
``/me/red-packets`` links carry it); a ``v`` that is no positive whole number is 422
``validation_error``, a version the campaign never had 404 ``rules_version_not_found`` (the page
answers the same statuses, in words). Other query parameters (WeChat adds ``from=…`` to shared
links) are ignored.
"""

from __future__ import annotations

import base64
import hashlib
import re

from flask import Blueprint, Response, current_app, render_template, request
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict, Field, field_validator

from insights.campaign_rules import campaign_rules
from models import utcnow
from rebate.errors import NotFound
from web.api import endpoint, validate_query
from web.errors import ValidationFailed
from web.growth_api import platform_limits
from web.guards import MAX_ID
from web.openapi import ERROR, UNAVAILABLE, documented

bp = Blueprint("rules_page", __name__, template_folder="templates")

STYLE = (
    "body{font-family:system-ui,-apple-system,'PingFang SC',sans-serif;margin:0 auto;max-width:36rem;"
    "padding:1rem;line-height:1.5;color:#222}h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.05rem;"
    "margin:1.2rem 0 .3rem;border-bottom:1px solid #eee}dl{margin:0}dt{color:#666;font-size:.85rem}"
    "dd{margin:0 0 .5rem}ul{padding-left:1.2rem;margin:.2rem 0}.status{display:inline-block;"
    "padding:.1rem .5rem;border-radius:4px;background:#e8f7ee;color:#07803f;font-size:.85rem}"
    ".note{color:#666;font-size:.8rem}"
)
STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; img-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
HTML_ERROR = {  # a draft or unknown campaign: a page; a path that is no campaign id at all: the JSON error
    "description": "Not found (a draft or unknown campaign)",
    "content": {"text/html": {"schema": {"type": "string"}}, **ERROR["content"]},
}


BAD_VERSION = "v must be a positive whole number: a rules version of this campaign"


class RulesQuery(BaseModel):
    """``?v=``: the rules version to show (default: the current one); other parameters are ignored."""

    model_config = ConfigDict(extra="ignore")

    v: int | None = Field(
        None, ge=1, le=MAX_ID, description="A rules version of this campaign (default: the current rules)."
    )

    @field_validator("v", mode="before")
    @classmethod
    def _whole(cls, raw: object) -> object:
        if raw is None or isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1:
            return raw
        if isinstance(raw, str) and re.fullmatch(r"[0-9]{1,10}", raw) and int(raw) >= 1:
            return int(raw)
        raise ValueError(f"{BAD_VERSION}, not {str(raw)[:20]!r}")


def public_rules(campaign_id: int, version: int | None = None) -> dict:
    config = current_app.config
    return campaign_rules(
        campaign_id,
        platform_name=config.get("PLATFORM_NAME") or "",
        complaint_contact=config.get("COMPLAINT_CONTACT") or "",
        platform_limits=platform_limits(),
        now=utcnow(),
        version=version,
    )


def base_url() -> str:
    """Where people reach this app: ``PUBLIC_BASE_URL`` (as notify URLs are built), else this request's host."""
    return (current_app.config.get("PUBLIC_BASE_URL") or request.host_url).rstrip("/")


def rules_links(campaign_id: int, version: int | None = None) -> dict:
    """The links a packet carries to its campaign's public rules, the page and the JSON: at ``version`` (the
    rules version the packet pays under) when given."""
    base, query = base_url(), f"?v={version}" if version else ""
    return {
        "rules_url": f"{base}/c/{campaign_id}{query}",
        "rules_api": f"{base}/api/v1/campaigns/{campaign_id}/rules{query}",
    }


@endpoint(bp, "/api/v1/campaigns/<int:campaign_id>/rules", auth=None, tags=("public",), query=RulesQuery)
def rules_json(campaign_id: int, query: RulesQuery):
    """A campaign's public rules (``?v=``: an earlier rules version): organiser, funder, each side's share,
    dates, restrictions (days, hours, regions, channels, merchant, products, time between claims), limits,
    budget left, complaints."""
    return {**public_rules(campaign_id, query.v), "page_url": rules_links(campaign_id, query.v)["rules_url"]}


@bp.get("/c/<int:campaign_id>")
@documented(
    summary="A campaign's public rules as a mobile page (no script)",
    tags=["public"],
    responses={
        "200": {"description": "The rules page", "content": {"text/html": {"schema": {"type": "string"}}}},
        "404": HTML_ERROR,
        "4XX": ERROR,
        "503": UNAVAILABLE,
    },
)
def rules_page(campaign_id: int):
    rules, error = None, None
    try:
        query = validate_query(RulesQuery, request.args.to_dict())
        rules, status = public_rules(campaign_id, query.v), 200
    except ValidationFailed:
        status, error = 422, f"{BAD_VERSION}. (v 必须是这个活动的规则版本号，正整数。)"
    except NotFound as exc:
        status = 404
        if exc.code == "rules_version_not_found":
            error = f"{exc}. (这个活动没有这一版规则。)"
    style = Markup(STYLE)  # noqa: S704 - a constant
    html = render_template("campaign_rules.html", r=rules, error=error, campaign_id=campaign_id, style=style)
    response = Response(html, status=status, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
