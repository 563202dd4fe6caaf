"""Flask blueprint of the local WeChat simulator (mounted at ``/_sim``).

``/_sim/api`` stands in for api.weixin.qq.com, ``/_sim/open`` for
open.weixin.qq.com and ``/_sim/pay`` for api.mch.weixin.qq.com. It speaks the
real wire formats: requests must carry a valid merchant ``Authorization``;
every v3 answer is signed like WeChat signs; callbacks are AES-GCM encrypted
and delivered after the triggering request has finished.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit
from xml.sax.saxutils import escape

from flask import Blueprint, Response, abort, redirect, request

from wechat.errors import WeChatUnavailable
from wechat.sim.errors import LOST_ANSWER_HEADER, SimError
from wechat.sim.pages import checkout_page, consent_page, overview_page, transfer_page
from wechat.sim.state import MAX_NAME, SimulatorState
from wechat.v2sign import parse_xml, v2_sign

V3Handler = Callable[..., Any]


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _canonical_url() -> str:
    path = request.path
    canonical = path[path.index("/v3/") :]
    return canonical + ("?" + request.query_string.decode() if request.query_string else "")


def _signed(state: SimulatorState, status: int, data: Any) -> Response:
    body = b"" if status == 204 else _json_bytes(data)
    headers = state.sign_answer(body, request.headers.get("Wechatpay-Serial"))
    headers["Request-ID"] = "sim-" + headers["Wechatpay-Nonce"][:16]
    mimetype = None if status == 204 else "application/json"
    return Response(body, status=status, headers=headers, mimetype=mimetype)


def _run_v3(state: SimulatorState, handler: V3Handler, kwargs: dict[str, Any]) -> Response:
    canonical, raw = _canonical_url(), request.get_data()
    try:
        fault = state.take_fault(canonical)
        if fault is not None and not fault.after:
            raise SimError(fault.status, fault.code, fault.message)
        state.check_authorization(request.method, canonical, request.headers.get("Authorization", ""), raw)
        body = _parse_json(raw) if request.method == "POST" else {}
        result = handler(body, **kwargs)
        if fault is not None:  # acted; the answer is lost or replaced
            if fault.status == 0:
                lost = "late" if fault.code == "LATE_ANSWER" else "dropped"
                return Response(b"", status=599, headers={LOST_ANSWER_HEADER: lost})
            raise SimError(fault.status, fault.code, fault.message)
    except SimError as exc:
        return _signed(state, exc.status, {"code": exc.code, "message": exc.message})
    return _signed(state, 204, None) if result is None else _signed(state, 200, result)


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise SimError(400, "PARAM_ERROR", "请求体不是合法的 JSON") from None
    if not isinstance(data, dict):
        raise SimError(400, "PARAM_ERROR", "请求体必须是 JSON 对象")
    return data


def _fields() -> Any:
    """What a route of the phone's side was sent: a JSON object, or the fields of a form (the ``/_sim/`` page's).

    JSON that is no object (a list, a string, a number, null, or unreadable under a JSON content type) is
    WeChat's "data format error", never taken as an empty form."""
    if not request.is_json:
        return request.form
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise SimError(200, "47001", "data format error: the body must be a JSON object")
    return body


def _v2_xml(fields: dict[str, Any], api_key: str) -> Response:
    flat = {k: v for k, v in fields.items() if isinstance(v, str)}
    fields = {**fields, "sign": v2_sign(flat, api_key)}
    parts = []
    for key, value in fields.items():
        if isinstance(value, list):
            items = "".join(
                "<hbinfo>" + "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in item.items()) + "</hbinfo>"
                for item in value
            )
            parts.append(f"<{key}>{items}</{key}>")
        else:
            parts.append(f"<{key}>{escape(str(value))}</{key}>")
    return Response("<xml>" + "".join(parts) + "</xml>", mimetype="text/xml")


def _api_error(exc: SimError) -> Response:
    return Response(_json_bytes({"errcode": int(exc.code), "errmsg": exc.message}), mimetype="application/json")


def _api_json(data: dict[str, Any]) -> Response:
    return Response(_json_bytes(data), mimetype="application/json")


def create_simulator_blueprint(sim_state: SimulatorState, name: str = "wechat_sim") -> Blueprint:
    """The ``/_sim`` blueprint; register it only when ``WECHAT_MODE == "simulator"``."""
    bp = Blueprint(name, __name__, url_prefix="/_sim")
    _register_overview(bp, sim_state)
    _register_identity(bp, sim_state)
    _register_pay(bp, sim_state)
    _register_payouts(bp, sim_state)
    _register_v2(bp, sim_state)
    _register_cards(bp, sim_state)
    _register_push(bp, sim_state)
    _register_messages(bp, sim_state)
    _register_profit_sharing(bp, sim_state)
    return bp


def _v3(bp: Blueprint, state: SimulatorState, rule: str, methods: list[str]) -> Callable[[V3Handler], V3Handler]:
    def decorate(handler: V3Handler) -> V3Handler:
        def view(**kwargs: Any) -> Response:
            return _run_v3(state, handler, kwargs)

        bp.add_url_rule("/pay" + rule, endpoint=f"v3_{handler.__name__}", view_func=view, methods=methods)
        return handler

    return decorate


def _register_overview(bp: Blueprint, state: SimulatorState) -> None:
    @bp.get("/")
    def overview() -> str:
        return overview_page(state)


NAME_COOKIE = "sim_wechat_name"  # the simulated person signed in to WeChat in this browser


def _register_identity(bp: Blueprint, state: SimulatorState) -> None:
    @bp.get("/api/sns/jscode2session")
    def jscode2session() -> Response:
        args = request.args
        try:
            state.check_app(args.get("appid", ""), args.get("secret", ""))
            name = state.login_name(args.get("js_code", ""))
        except SimError as exc:
            return _api_error(exc)
        if name.startswith("snapshot-"):  # code-snapshot-<name>: a 朋友圈 snapshot-page virtual account
            return _api_json(
                {"openid": f"sim-openid-{name}", "session_key": state.session_key(name), "is_snapshotuser": 1}
            )
        return _api_json(
            {"openid": f"sim-openid-{name}", "session_key": state.session_key(name), "unionid": f"sim-union-{name}"}
        )

    @bp.get("/api/sns/oauth2/access_token")
    def oauth_access_token() -> Response:
        args = request.args
        try:
            state.check_app(args.get("appid", ""), args.get("secret", ""))
            name, scope = state.oauth_grant(args.get("code", ""))
        except SimError as exc:
            return _api_error(exc)
        grant = {
            "access_token": f"sim-user-token-{name}",
            "expires_in": 7200,
            "refresh_token": f"sim-refresh-{name}",
            "openid": f"sim-oa-openid-{name}",
            "scope": scope,
        }
        if scope == "snsapi_userinfo":  # WeChat names the unionid only for userinfo: a silent grant has none
            grant["unionid"] = f"sim-union-{name}"
        return _api_json(grant)

    @bp.get("/api/sns/userinfo")
    def userinfo() -> Response:
        name = request.args.get("access_token", "").removeprefix("sim-user-token-")
        return _api_json(
            {
                "openid": f"sim-oa-openid-{name}",
                "nickname": name,
                "headimgurl": "",
                "privilege": [],
                "unionid": f"sim-union-{name}",
            }
        )

    @bp.get("/api/cgi-bin/token")
    def access_token() -> Response:
        try:
            state.check_app(request.args.get("appid", ""), request.args.get("secret", ""))
        except SimError as exc:
            return _api_error(exc)
        return _api_json({"access_token": state.new_access_token(), "expires_in": 7200})

    @bp.post("/api/cgi-bin/stable_token")
    def stable_token() -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or body.get("grant_type") != "client_credential":
            return _api_error(SimError(200, "40002", "invalid grant_type"))
        force = body.get("force_refresh", False)
        if not isinstance(force, bool):
            return _api_error(SimError(200, "47001", "data format error: force_refresh must be a boolean"))
        try:
            state.check_app(str(body.get("appid", "")), str(body.get("secret", "")))
        except SimError as exc:
            return _api_error(exc)
        token, expires_in = state.stable_access_token(str(body["appid"]), force)
        return _api_json({"access_token": token, "expires_in": expires_in})

    @bp.get("/api/cgi-bin/ticket/getticket")
    def ticket() -> Response:
        try:
            state.check_access_token(request.args.get("access_token", ""))
        except SimError as exc:
            return _api_error(exc)
        return _api_json(
            {"errcode": 0, "errmsg": "ok", "ticket": "sim-ticket-" + request.args.get("type", ""), "expires_in": 7200}
        )

    @bp.get("/open/connect/oauth2/authorize")
    def authorize() -> Any:
        args = request.args
        redirect_uri = args.get("redirect_uri", "")
        if urlsplit(redirect_uri).scheme not in ("http", "https"):
            abort(400, "redirect_uri must be http(s)")
        if args.get("consent") != "1":
            hidden = {k: args.get(k, "") for k in ("appid", "redirect_uri", "response_type", "scope", "state")}
            # WeChat knows whose phone it is: the name this browser gave before (a silent sign-in asked again
            # with snsapi_userinfo is the same person)
            known = request.cookies.get(NAME_COOKIE, "alice")
            return consent_page(args.get("appid", ""), args.get("scope", ""), hidden, known)
        name = args.get("name", "alice")
        if not re.fullmatch(rf"[A-Za-z0-9_-]{{1,{MAX_NAME}}}", name):  # the openid is made of it: WeChat's are short
            abort(400, f"name: 1-{MAX_NAME} letters, digits, - or _")
        code = state.issue_oauth_code(name, args.get("scope", "snsapi_userinfo"))
        sep = "&" if "?" in redirect_uri else "?"
        response = redirect(redirect_uri + sep + urlencode({"code": code, "state": args.get("state", "")}))
        response.set_cookie(NAME_COOKIE, name, path=request.script_root + "/_sim/open", httponly=True, samesite="Lax")
        return response


def _register_pay(bp: Blueprint, state: SimulatorState) -> None:
    v3 = lambda rule, methods: _v3(bp, state, rule, methods)  # noqa: E731

    @v3("/v3/pay/transactions/jsapi", ["POST"])
    def create_jsapi(body: dict[str, Any]) -> Any:
        return state.create_jsapi(body)

    @v3("/v3/pay/transactions/out-trade-no/<out_trade_no>", ["GET"])
    def query_order(body: dict[str, Any], out_trade_no: str) -> Any:
        if request.args.get("mchid") != state.mchid:
            raise SimError(400, "PARAM_ERROR", "mchid 不正确")
        return state.query_order(out_trade_no)

    @v3("/v3/pay/transactions/out-trade-no/<out_trade_no>/close", ["POST"])
    def close_order(body: dict[str, Any], out_trade_no: str) -> Any:
        state.close_order(out_trade_no)

    @v3("/v3/refund/domestic/refunds", ["POST"])
    def create_refund(body: dict[str, Any]) -> Any:
        return state.create_refund(body)

    @v3("/v3/refund/domestic/refunds/<out_refund_no>", ["GET"])
    def query_refund(body: dict[str, Any], out_refund_no: str) -> Any:
        return state.query_partner_refund(out_refund_no, request.args.get("sub_mchid"))  # None: a direct refund

    @v3("/v3/bill/tradebill", ["GET"])
    def trade_bill(body: dict[str, Any]) -> Any:
        args, base = request.args, _pay_base(state)
        if "sub_mchid" in args:  # a service provider's bill of one sub-merchant
            return state.apply_partner_trade_bill(
                args.get("bill_date", ""), args.get("tar_type"), base, args["sub_mchid"]
            )
        return state.apply_bill("trade", args.get("bill_date", ""), args.get("tar_type"), base)

    _register_partner(v3, state)

    @v3("/v3/bill/fundflowbill", ["GET"])
    def fundflow_bill(body: dict[str, Any]) -> Any:
        return state.apply_bill(
            "fund", request.args.get("bill_date", ""), request.args.get("tar_type"), _pay_base(state)
        )

    @v3("/v3/certificates", ["GET"])
    def certificates(body: dict[str, Any]) -> Any:
        return state.certificates_answer()

    @bp.get("/pay/v3/billdownload/file")
    def bill_download() -> Response:
        try:
            state.check_authorization("GET", _canonical_url(), request.headers.get("Authorization", ""), b"")
        except SimError as exc:
            return _signed(state, exc.status, {"code": exc.code, "message": exc.message})
        content = state.bill_file(request.args.get("token", ""))
        if content is None:
            return _signed(state, 404, {"code": "RESOURCE_NOT_EXISTS", "message": "账单不存在或已过期"})
        return Response(content, mimetype="application/octet-stream")

    @bp.route("/pay/checkout/<prepay_id>", methods=["GET", "POST"])
    def checkout(prepay_id: str) -> Any:
        try:
            if request.method == "POST":
                state.pay(prepay_id)
            order = state.order_by_prepay(prepay_id)  # as it is now, paid or not
        except SimError as exc:
            abort(404 if exc.status == 404 else 409, exc.message)
        view = state.transaction_view(order)
        if request.method == "POST" and request.accept_mimetypes.best == "application/json":
            return view
        return checkout_page(view, order["request"]["description"], view["trade_state"] != "NOTPAY")


def _register_partner(v3: Callable[[str, list[str]], Callable[[V3Handler], V3Handler]], state: SimulatorState) -> None:
    """Service-provider mode (``wechat.sim.partner``): the partner JSAPI, query and close."""

    @v3("/v3/pay/partner/transactions/jsapi", ["POST"])
    def create_partner_jsapi(body: dict[str, Any]) -> Any:
        return state.create_partner_jsapi(body)

    @v3("/v3/pay/partner/transactions/out-trade-no/<out_trade_no>", ["GET"])
    def query_partner_order(body: dict[str, Any], out_trade_no: str) -> Any:
        return state.query_partner_order(out_trade_no, request.args.get("sp_mchid"), request.args.get("sub_mchid"))

    @v3("/v3/pay/partner/transactions/out-trade-no/<out_trade_no>/close", ["POST"])
    def close_partner_order(body: dict[str, Any], out_trade_no: str) -> Any:
        state.close_partner_order(out_trade_no, body.get("sp_mchid"), body.get("sub_mchid"))


def _pay_base(state: SimulatorState) -> str:
    """Where download URLs point: ``state.pay_base_url`` if set, else this request's base."""
    return state.pay_base_url or request.base_url[: request.base_url.index("/v3/")]


def _register_payouts(bp: Blueprint, state: SimulatorState) -> None:
    v3 = lambda rule, methods: _v3(bp, state, rule, methods)  # noqa: E731

    @v3("/v3/fund-app/mch-transfer/transfer-bills", ["POST"])
    def create_transfer(body: dict[str, Any]) -> Any:
        return state.create_transfer(body, request.headers.get("Wechatpay-Serial"))

    @v3("/v3/fund-app/mch-transfer/transfer-bills/out-bill-no/<out_bill_no>", ["GET"])
    def query_transfer(body: dict[str, Any], out_bill_no: str) -> Any:
        return state.query_transfer(out_bill_no)

    @v3("/v3/fund-app/mch-transfer/transfer-bills/out-bill-no/<out_bill_no>/cancel", ["POST"])
    def cancel_transfer(body: dict[str, Any], out_bill_no: str) -> Any:
        return state.cancel_transfer(out_bill_no)

    @v3("/v3/marketing/favor/users/<openid>/coupons", ["POST"])
    def send_coupon(body: dict[str, Any], openid: str) -> Any:
        return state.send_coupon(openid, body)

    @bp.route("/pay/transfer/confirm/<package_info>", methods=["GET", "POST"])
    def confirm_transfer(package_info: str) -> Any:
        try:
            view = state.transfer_view(state.find_transfer(package_info))
            if request.method == "POST":
                view = state.confirm_transfer(package_info)
        except SimError as exc:
            abort(404 if exc.status == 404 else 409, exc.message)
        if request.method == "POST" and request.accept_mimetypes.best == "application/json":
            return view
        return transfer_page(view)


def _register_v2(bp: Blueprint, state: SimulatorState) -> None:
    def handle(path: str, action: Callable[[dict[str, str]], dict[str, Any]]) -> Response:
        try:
            fields = parse_xml(request.get_data())
        except WeChatUnavailable:
            return _v2_xml({"return_code": "FAIL", "return_msg": "XML格式错误"}, state.api_v2_key)
        flat = {k: v for k, v in fields.items() if isinstance(v, str)}
        fault = state.take_fault(path)
        if fault is not None:
            return _v2_xml(
                {
                    "return_code": "SUCCESS",
                    "result_code": "FAIL",
                    "err_code": fault.code,
                    "err_code_des": fault.message,
                    "mch_billno": flat.get("mch_billno", ""),
                },
                state.api_v2_key,
            )
        return _v2_xml(action(flat), state.api_v2_key)

    @bp.post("/pay/mmpaymkttransfers/sendredpack")
    def sendredpack() -> Response:
        return handle("/mmpaymkttransfers/sendredpack", state.send_redpack)

    @bp.post("/pay/mmpaymkttransfers/gethbinfo")
    def gethbinfo() -> Response:
        return handle("/mmpaymkttransfers/gethbinfo", state.query_redpack)


def _register_cards(bp: Blueprint, state: SimulatorState) -> None:
    def api_call(action: Callable[[dict[str, Any]], dict[str, Any]]) -> Response:
        try:
            state.check_access_token(request.args.get("access_token", ""))
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                raise SimError(200, "47001", "data format error")
            return _api_json(action(body))
        except SimError as exc:
            return _api_error(exc)

    @bp.post("/api/card/code/decrypt")
    def card_code_decrypt() -> Response:
        return api_call(lambda body: state.decrypt_card_code(body.get("encrypt_code")))

    @bp.post("/api/card/code/consume")
    def card_code_consume() -> Response:
        return api_call(lambda body: state.consume_card_code(body.get("code"), body.get("card_id")))

    @bp.post("/card/add")
    def add_card() -> Response:
        """The phone's ``wx.addCard``: JSON ``{card_id, card_ext, openid}`` → the success callback's cardList."""
        try:
            body = _fields()
            item = state.add_card(
                str(body.get("card_id", "")), body.get("card_ext") or "{}", str(body.get("openid", ""))
            )
        except (SimError, ValueError) as exc:
            code = exc.code if isinstance(exc, SimError) else "40080"
            return Response(_json_bytes({"errMsg": f"addCard:fail {code}"}), status=400, mimetype="application/json")
        return _api_json({"errMsg": "addCard:ok", "cardList": [item]})


def _register_push(bp: Blueprint, state: SimulatorState) -> None:
    """The person's side of message push (follow, subscribe popup, card deletion) and ``/cgi-bin/user/info``."""

    def done(delivery: Any) -> Response:
        if request.accept_mimetypes.best == "application/json" or request.is_json:
            return _api_json({"errcode": 0, "errmsg": "ok", "pushed": delivery.notification_id if delivery else None})
        return redirect(request.script_root + "/_sim/")

    def name_field(data: Any) -> str:
        name = str(data.get("name", "alice"))
        if not name or len(name) > 32 or not name.replace("-", "").replace("_", "").isalnum():
            raise SimError(400, "47003", "name: 1-32 letters, digits, - or _")
        return name

    @bp.get("/api/cgi-bin/user/info")
    def user_info() -> Response:
        try:
            state.check_access_token(request.args.get("access_token", ""))
            return _api_json(state.user_info(request.args.get("openid", "")))
        except SimError as exc:
            return _api_error(exc)

    @bp.post("/oa/follow")
    def follow() -> Response:
        """The person follows (``action=follow``) or unfollows (``action=unfollow``) the official account."""
        try:
            data = _fields()
            action = data.get("action", "follow")
            if action not in ("follow", "unfollow"):  # never a follow for "unsubscribe" or a typo
                raise SimError(200, "47003", "argument invalid: action follow|unfollow")
            return done(state.follow(name_field(data), action == "follow"))
        except SimError as exc:
            return _api_error(exc)

    @bp.post("/mp/subscribe")
    def subscribe_popup() -> Response:
        """The person answered ``wx.requestSubscribeMessage``: ``template_ids`` (comma-separated), ``status``."""
        try:
            data = _fields()
            ids = data.get("template_ids", "")
            ids = ids if isinstance(ids, list) else [t.strip() for t in str(ids).split(",") if t.strip()]
            return done(
                state.subscribe_popup(name_field(data), [str(t) for t in ids], str(data.get("status", "accept")))
            )
        except SimError as exc:
            return _api_error(exc)

    @bp.post("/card/delete")
    def delete_card() -> Response:
        """The person deletes a card from their package: JSON ``{code}``."""
        try:
            return _api_json(state.delete_card(_fields().get("code")))
        except SimError as exc:
            return _api_error(exc)


def _register_messages(bp: Blueprint, state: SimulatorState) -> None:
    def api_call(action: Callable[[dict[str, Any]], dict[str, Any]]) -> Response:
        """An injected fault answers WeChat's errcode instead (``after``: once the message was taken)."""
        try:
            state.check_access_token(request.args.get("access_token", ""))
            fault = state.take_fault(request.path.removeprefix("/_sim/api"))
            if fault is not None and not fault.after:
                raise SimError(200, fault.code, fault.message)
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                raise SimError(200, "47001", "data format error")
            answer = action(body)
            if fault is not None:
                raise SimError(200, fault.code, fault.message)
            return _api_json(answer)
        except SimError as exc:
            return _api_error(exc)

    @bp.post("/api/cgi-bin/message/subscribe/send")
    def subscribe_send() -> Response:
        return api_call(state.send_subscribe_message)

    @bp.post("/api/cgi-bin/message/template/send")
    def template_send() -> Response:
        return api_call(state.send_template_message)

    @bp.post("/api/cgi-bin/message/custom/send")
    def custom_send() -> Response:
        return api_call(state.send_custom_message)

    @bp.post("/api/cgi-bin/message/wxopen/activityid/create")
    def activity_id_create() -> Response:
        return api_call(state.create_activity_id)

    @bp.post("/api/cgi-bin/message/wxopen/chattoolmsg/send")
    def chattool_send() -> Response:
        return api_call(state.send_chattool_message)

    @bp.post("/wecom/cgi-bin/webhook/send")
    def webhook_send() -> Response:
        """WeCom's group webhook (no access token: the key in the URL is the credential)."""
        body = request.get_json(silent=True)
        try:
            if not isinstance(body, dict):
                raise SimError(200, "40008", "invalid message type")
            return _api_json(state.webhook_send(request.args.get("key", ""), body))
        except SimError as exc:
            return _api_error(exc)

    @bp.post("/werun")
    def werun() -> Response:
        """The phone's ``wx.getWeRunData``: JSON ``{name, steps: [[day_start_unix, steps], ...]}`` → ``{encryptedData,
        iv}`` under that person's session key, for the mini-program's appid."""
        try:
            data = _fields()
        except SimError as exc:
            return _api_error(exc)
        steps = data.get("steps")
        if not data.get("name") or not isinstance(steps, list) or not 0 < len(steps) <= 31:
            return _api_error(SimError(200, "40001", "name and 1-31 [timestamp, steps] pairs are required"))
        try:
            pairs = [(int(t), int(n)) for t, n in steps]
        except (TypeError, ValueError, OverflowError):  # OverflowError: 1e400, read as infinity
            return _api_error(SimError(200, "40001", "steps are [timestamp, steps] pairs"))
        return _api_json(state.werun_data(str(data["name"]), state.mp_appid, pairs))

    @bp.post("/wecom/say")
    def robot_say() -> Response:
        """A WeCom member speaks to the robot: form or JSON ``{name, content, group?}`` → what the robot answered."""
        try:
            data = _fields()
        except SimError as exc:
            return _api_error(exc)
        name, content, group = str(data.get("name", "")), str(data.get("content", "")), data.get("group") or None
        if not name or not content:
            return _api_error(SimError(200, "40001", "name and content are required"))
        try:
            return _api_json(state.robot_say(name, content, str(group) if group else None))
        except SimError as exc:
            return _api_error(exc)

    @bp.post("/subscribe/request")
    def request_subscribe() -> Response:
        """The phone's ``wx.requestSubscribeMessage``: JSON ``{openid, tmplIds, choice?}`` → its success answer."""
        try:
            body = _fields()
            answer = state.request_subscribe(
                str(body.get("openid", "")), body.get("tmplIds"), str(body.get("choice", "accept"))
            )
        except SimError as exc:
            return Response(
                _json_bytes({"errMsg": exc.message, "errCode": int(exc.code)}), status=400, mimetype="application/json"
            )
        return _api_json(answer)


def _register_profit_sharing(bp: Blueprint, state: SimulatorState) -> None:
    v3 = lambda rule, methods: _v3(bp, state, rule, methods)  # noqa: E731

    @v3("/v3/profitsharing/merchant-configs/<sub_mchid>", ["GET"])
    def ps_merchant_config(body: dict[str, Any], sub_mchid: str) -> Any:
        return state.merchant_config(sub_mchid)

    @v3("/v3/profitsharing/receivers/add", ["POST"])
    def ps_add_receiver(body: dict[str, Any]) -> Any:
        return state.add_receiver(body, request.headers.get("Wechatpay-Serial"))

    @v3("/v3/profitsharing/orders", ["POST"])
    def ps_create_order(body: dict[str, Any]) -> Any:
        return state.create_share(body)

    @v3("/v3/profitsharing/orders/unfreeze", ["POST"])
    def ps_unfreeze(body: dict[str, Any]) -> Any:
        return state.unfreeze(body)

    @v3("/v3/profitsharing/orders/<out_order_no>", ["GET"])
    def ps_query_order(body: dict[str, Any], out_order_no: str) -> Any:
        return state.query_share(out_order_no, request.args.get("sub_mchid"), request.args.get("transaction_id"))
