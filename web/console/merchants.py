"""Console pages: a merchant's settings (``console.merchant_settings``) and profit shares (``console.profit_shares``).

Settings are the admin API's own views: the service-fee rate (``GET``/``PUT /admin/api/merchants/<id>/fee-rate``,
``web.billing_api``; every role reads, merchant staff their own merchant's; admins change it, audited) and, for
admins, the WeChat Pay sub-merchant identity of the service-provider fund flow (``GET``/``PUT …/wechat-pay``,
``web.merchant_api``: 422 naming ``sub_mchid``/``sub_appid``, 409 ``sub_mchid_taken``). A refused edit shows the
page again with the API's status, its message and each field's problem beside the field.

Profit shares are ``GET /admin/api/profit-shares`` (``web.profit_shares_api``): filtered by merchant, order and
status, each with its receivers and WeChat's answer; merchant staff see their own merchant's only.
"""

from __future__ import annotations

from flask import abort, current_app, g, redirect, request, url_for

from models.operators import merchant_scope
from models.profit_sharing import ShareStatus
from web.billing_api import get_fee_rate, put_fee_rate
from web.console import act, allowed, bp, form_data, may, page_offset, read, render, whole_number
from web.guards import MAX_ID
from web.merchant_api import get_wechat_pay, put_wechat_pay
from web.profit_shares_api import list_profit_shares

PAGE = 50


def _merchant_id(raw: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return merchant_scope(g.operator)
    number = whole_number(raw, MAX_ID)
    if not number:
        abort(404)
    return number


def _settings_page(merchant_id: int | None, status: int = 200, form: dict | None = None, posted: str = ""):
    fee = wechat_pay = None
    if merchant_id is not None:
        fee = read(get_fee_rate, merchant_id=merchant_id)  # another merchant's: the API's 404
        if may(get_wechat_pay):
            wechat_pay = read(get_wechat_pay, merchant_id=merchant_id)
    page = render(
        "console/merchant_settings.html",
        merchant_id=merchant_id,
        fee=fee,
        wechat_pay=wechat_pay,
        fund_flow=current_app.config["FUND_FLOW"],
        may_set_fee=may(put_fee_rate),
        may_set_wechat_pay=may(put_wechat_pay),
        form=form or {},
        posted=posted,  # the form refused: shown again with what was typed
    )
    return page, status


@bp.route("/merchant-settings")
def merchant_settings():
    """A merchant's service fee and (admins) its WeChat Pay sub-merchant number; staff: their own merchant."""
    allowed(get_fee_rate)
    return _settings_page(_merchant_id(request.args.get("merchant_id", "")))


@bp.route("/merchants/<int:merchant_id>/fee-rate", methods=["POST"])
def merchant_fee_rate(merchant_id: int):
    allowed(put_fee_rate)
    form = form_data()
    raw = {k: form.get(k, "").strip() for k in ("rate_bps", "reason")}
    given = raw["rate_bps"]
    rate: int | str = int(given) if given.isdecimal() and len(given) <= 10 else given  # the API judges the rest
    done = "服务费率已保存 Fee rate saved"
    if act(put_fee_rate, body={"rate_bps": rate, "reason": raw["reason"]}, done=done, merchant_id=merchant_id) is None:
        return _settings_page(merchant_id, g.refused_status, form=raw, posted="fee")
    return redirect(url_for("console.merchant_settings", merchant_id=merchant_id))


@bp.route("/merchants/<int:merchant_id>/wechat-pay", methods=["POST"])
def merchant_wechat_pay(merchant_id: int):
    allowed(put_wechat_pay)
    form = form_data()
    raw = {k: form.get(k, "").strip() for k in ("sub_mchid", "sub_appid", "reason")}
    body = {"sub_mchid": raw["sub_mchid"] or None, "sub_appid": raw["sub_appid"] or None, "reason": raw["reason"]}
    if act(put_wechat_pay, body=body, done="特约商户号已保存 Sub-merchant saved", merchant_id=merchant_id) is None:
        return _settings_page(merchant_id, g.refused_status, form=raw, posted="wechat_pay")
    return redirect(url_for("console.merchant_settings", merchant_id=merchant_id))


@bp.route("/profit-shares")
def profit_shares():
    """Profit shares newest first, filtered by merchant, order and status, with receivers and WeChat's answer."""
    allowed(list_profit_shares)
    args = {k: request.args.get(k, "").strip() for k in ("merchant_id", "order_id", "status")}
    query = {**args, "limit": PAGE, "offset": page_offset()}  # past 10,000,000 or not a number: the first page
    answer = read(list_profit_shares, query=query)  # a bad filter: the API's 422 page
    offset = answer["offset"]
    return render(
        "console/profit_shares.html",
        shares=answer["items"],
        counts=answer["counts"],
        statuses=tuple(s.value for s in ShareStatus),
        args=args,
        offset=offset,
        page=PAGE,
        filters={k: v for k, v in args.items() if v},
    )
