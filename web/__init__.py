"""The HTTP shell: blueprints for the mini-program API, WeChat callbacks, admin and ops.

Views validate, call operations that only flush, and commit once (web/api.py).
Errors always answer ``{"error": code, "message": ...}``; WeChat callbacks
answer in WeChat's own format.
"""

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from web import (
        admin,
        campaign_admin,
        growth_api,
        insights,
        login,
        merchant_api,
        ops,
        payment_api,
        payouts_api,
        refunds_admin,
        transfer_callbacks,
        user_api,
        wechat_callbacks,
    )

    for module in (ops, admin, campaign_admin, merchant_api, user_api, growth_api, insights):
        app.register_blueprint(module.bp)
    for module in (login, payment_api, refunds_admin, wechat_callbacks, transfer_callbacks, payouts_api):
        app.register_blueprint(module.bp)
