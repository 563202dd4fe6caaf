"""The HTTP shell: blueprints for the mini-program API, WeChat callbacks, admin and ops.

Views validate, call operations that only flush, and commit once (web/api.py).
Errors always answer ``{"error": code, "message": ...}``; WeChat callbacks
answer in WeChat's own format.
"""

from flask import Flask, Response, current_app, request

from wechat.setup import WeChat


def wechat() -> WeChat:
    """The app's WeChat clients (``app.extensions["wechat"]``, built by ``wechat.setup``)."""
    return current_app.extensions["wechat"]


def register_blueprints(app: Flask) -> None:
    from web import (
        admin,
        audiences_api,
        bans_api,
        billing_api,
        campaign_admin,
        challenges_admin,
        challenges_api,
        chat_bindings_api,
        communities_api,
        console,
        events_api,
        growth_api,
        insights,
        login,
        merchant_api,
        messages_api,
        notices_api,
        ops,
        payment_api,
        payouts_api,
        profit_shares_api,
        push,
        reconciliation_api,
        refunds_admin,
        reports_api,
        reviews_api,
        risk_rules_api,
        rules_page,
        statements_api,
        transfer_callbacks,
        user_api,
        wechat_callbacks,
        wecom_bot,
    )

    modules = (
        ops,
        admin,
        campaign_admin,
        merchant_api,
        user_api,
        growth_api,
        insights,
        login,
        payment_api,
        refunds_admin,
        wechat_callbacks,
        transfer_callbacks,
        payouts_api,
        events_api,
        risk_rules_api,
        reviews_api,
        bans_api,
        communities_api,
        reconciliation_api,
        console,
        rules_page,
        reports_api,
        push,
        messages_api,
        audiences_api,
        notices_api,
        challenges_api,
        wecom_bot,
        chat_bindings_api,
        challenges_admin,
        billing_api,
        statements_api,
        profit_shares_api,
    )
    for module in modules:
        app.register_blueprint(module.bp)
    if app.config["WECHAT_MODE"] == "simulator":  # the demo's clock: never in live mode
        from web import demo_clock

        app.register_blueprint(demo_clock.bp)
    console.auth.configure(app)
    app.after_request(_api_headers)


API_PREFIXES = ("/api/", "/admin/api/")
# Answers that are the moment's state: a cache on the way would show a scraper old counters, a load balancer an old
# health.
UNCACHED_PATHS = frozenset({"/healthz", "/metrics"})


def _api_headers(response: Response) -> Response:
    """The JSON and CSV APIs answer with money and personal data: never kept by a cache on the way (a shared proxy,
    the browser's back button), never sniffed as another type (a CSV cell read as HTML)."""
    if request.path.startswith(API_PREFIXES) or request.path in UNCACHED_PATHS:
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response
