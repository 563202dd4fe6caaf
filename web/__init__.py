"""The HTTP shell: blueprints for the mini-program API, WeChat callbacks, admin and ops.

Views validate, call operations that only flush, and commit once (web/api.py).
Errors always answer ``{"error": code, "message": ...}``; WeChat callbacks
answer in WeChat's own format.
"""

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from web import admin, campaign_admin, merchant_api, ops, user_api

    for module in (ops, admin, campaign_admin, merchant_api, user_api):
        app.register_blueprint(module.bp)
