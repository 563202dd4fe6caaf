"""A campaign's public rules: ``GET /api/v1/campaigns/<id>/rules`` (JSON) and ``/c/<id>`` (a page).

Public like a poster (no sign-in): who organises and funds the campaign, what each side gets, dates,
limits, the budget left (coarsely) and where to complain, built once by ``insights.campaign_rules``
and shown twice. Drafts and unknown ids answer 404. The page is server-rendered, autoescaped (a
campaign's name is operator input) and runs no script: its Content-Security-Policy allows nothing but
its own inline style, by hash.
"""

from __future__ import annotations

import base64
import hashlib

from flask import Blueprint, Response, current_app, render_template, request
from markupsafe import Markup

from insights.campaign_rules import campaign_rules
from models import utcnow
from rebate.errors import NotFound
from web.api import endpoint
from web.growth_api import platform_limits
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


def public_rules(campaign_id: int) -> dict:
    config = current_app.config
    return campaign_rules(
        campaign_id,
        platform_name=config.get("PLATFORM_NAME") or "",
        complaint_contact=config.get("COMPLAINT_CONTACT") or "",
        platform_limits=platform_limits(),
        now=utcnow(),
    )


def base_url() -> str:
    """Where people reach this app: ``PUBLIC_BASE_URL`` (as notify URLs are built), else this request's host."""
    return (current_app.config.get("PUBLIC_BASE_URL") or request.host_url).rstrip("/")


def rules_links(campaign_id: int) -> dict:
    """The links a packet carries to its campaign's public rules: the page and the JSON."""
    base = base_url()
    return {"rules_url": f"{base}/c/{campaign_id}", "rules_api": f"{base}/api/v1/campaigns/{campaign_id}/rules"}


@endpoint(bp, "/api/v1/campaigns/<int:campaign_id>/rules", auth=None, tags=("public",))
def rules_json(campaign_id: int):
    """A campaign's public rules: organiser, funder, each side's share, dates, limits, budget left, complaints."""
    return {**public_rules(campaign_id), "page_url": f"{base_url()}/c/{campaign_id}"}


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
    try:
        rules, status = public_rules(campaign_id), 200
    except NotFound:
        rules, status = None, 404
    html = render_template("campaign_rules.html", r=rules, style=Markup(STYLE))  # noqa: S704 - a constant
    response = Response(html, status=status, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
