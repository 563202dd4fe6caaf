"""Probes of what a person does through the mini-program API (round 19): the ``wx.requestPayment`` signature
checked by a second, independent RSA-SHA256, and one person's orders, withdrawals and reads all at once."""

from __future__ import annotations

import base64
import hashlib
import time
from datetime import timedelta

from models import Order, db, utcnow
from rebate import issue_packet
from tests.concurrency import together
from tests.test_payment_flow import ORDERS, alice, new_order  # noqa: F401 - fixture
from tests.test_wallet import count, fund, ledger_ok, wallet_of
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture

# DER of the DigestInfo prefix for SHA-256 (RFC 8017, section 9.2, note 1)
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def pkcs1_v15_sha256_holds(message: bytes, signature_b64: str, n: int, e: int) -> bool:
    """RSASSA-PKCS1-v1_5 verification with SHA-256 written out from RFC 8017 (8.2.2): s^e mod n must be the
    encoded message 00 01 FF…FF 00 DigestInfo(hash). No library's RSA is used, only the key's numbers."""
    k = (n.bit_length() + 7) // 8
    signature = base64.b64decode(signature_b64, validate=True)
    if len(signature) != k:
        return False
    recovered = pow(int.from_bytes(signature, "big"), e, n).to_bytes(k, "big")
    digest_info = SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    expected = b"\x00\x01" + b"\xff" * (k - len(digest_info) - 3) + b"\x00" + digest_info
    return recovered == expected


def test_the_pay_sign_holds_under_an_independent_rsa_sha256_and_a_changed_field_breaks_it(
    app, client, alice, make_product
):  # noqa: F811
    # given: an order created, and the same order asked to pay again
    created = new_order(client, alice, make_product(price_fen=12_34))
    assert created.status_code == 201, created.json
    again = client.post(f"{ORDERS}/{created.json['id']}/pay", headers=alice)
    assert again.status_code == 200, again.json
    numbers = simulator(app).merchant_public_key.public_numbers()
    appid = app.config["WECHAT_APPID"]
    order = db.session.get(Order, created.json["id"])

    for params in (created.json["payment"]["pay_params"], again.json["pay_params"]):
        # then: WeChat's five fields, the package naming the order's stored prepay_id, a fresh time in seconds
        assert params["signType"] == "RSA" and params["package"] == f"prepay_id={order.prepay_id}"
        assert params["timeStamp"].isdigit() and abs(int(params["timeStamp"]) - time.time()) < 60
        assert 1 <= len(params["nonceStr"]) <= 32 and params["nonceStr"].isalnum()
        # … and paySign is RSA-SHA256 over appId\ntimeStamp\nnonceStr\npackage\n, as wx.requestPayment checks it
        message = f"{appid}\n{params['timeStamp']}\n{params['nonceStr']}\n{params['package']}\n".encode()
        assert pkcs1_v15_sha256_holds(message, params["paySign"], numbers.n, numbers.e)
        # a signature that held for anything would prove nothing: one field changed, or no final newline, fails
        assert not pkcs1_v15_sha256_holds(
            message.replace(b"prepay_id=", b"prepay_id=x"), params["paySign"], numbers.n, numbers.e
        )
        assert not pkcs1_v15_sha256_holds(message[:-1], params["paySign"], numbers.n, numbers.e)
        assert not pkcs1_v15_sha256_holds(
            message.replace(appid.encode(), b"wx-another-app"), params["paySign"], numbers.n, numbers.e
        )


def test_one_persons_orders_withdrawals_and_reads_at_once_never_fail_and_move_each_fen_once(
    app,
    make_user,
    make_product,
    make_campaign,
    user_headers,
    no_network,  # noqa: F811
):
    # given: 50 yuan and 5,000 points, six packets of a campaign allowing three a order, a device token
    user = make_user(appid=app.config["WECHAT_APPID"])
    fund(user, cash_fen=50_00, points=5_000)
    product_id = make_product(price_fen=20_00).id
    rules = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1_00}]}
    campaign = make_campaign(rules, packet_amount_fen=3_00, max_packets_per_order=3)
    start = utcnow() - timedelta(seconds=5)
    packets = [issue_packet(campaign, user, source="test", source_ref=f"p{i}", now=start).id for i in range(6)]
    db.session.commit()
    device = app.test_client().post("/api/v1/devices", headers=user_headers(user)).json["device_token"]
    headers = user_headers(user, **{"X-Device-Token": device})
    line = {"product_id": product_id, "quantity": 1}

    def act(i: int) -> tuple[int, str | None]:
        c, keyed = app.test_client(), {**headers, "Idempotency-Key": f"k-{i}"}
        match i % 6:
            case 0:  # two stacked packets, balance and points
                body = {"lines": [line], "red_packet_ids": [packets[i % 6], packets[(i + 1) % 6]]}
                r = c.post(ORDERS, json={**body, "use_balance_fen": 7_00, "use_points": 300}, headers=keyed)
            case 1:
                r = c.post("/api/v1/me/withdrawals", json={"amount_fen": 6_00}, headers=keyed)
            case 2:
                r = c.get("/api/v1/me/wallet", headers=headers)
            case 3:  # the same line twice, one packet, balance
                body = {"lines": [line, line], "red_packet_id": packets[i % 6], "use_balance_fen": 3_00}
                r = c.post(ORDERS, json=body, headers=keyed)
            case 4:
                r = c.put("/api/v1/me/preferences", json={"rebate_form": "points"}, headers=keyed)
            case _:
                r = c.get("/api/v1/me/rebates", headers=headers)
        return r.status_code, (r.get_json(silent=True) or {}).get("error")

    # when: 24 requests of the one person at the same instant
    answers = together(24, act, app=app)

    # then: every answer is one a client can act on (a packet another order holds, a balance spent: 409)
    assert all(isinstance(a, tuple) and a[0] < 500 for a in answers), answers
    assert {a for a in answers if a[0] >= 400} <= {
        (409, "packet_locked"),
        (409, "insufficient_balance"),
        (409, "insufficient_points"),
    }, answers
    db.session.rollback()
    cash, held, points, points_held = wallet_of(user)
    wallet = app.test_client().get("/api/v1/me/wallet", headers=headers).json
    # every fen is in one place: free, held by an unpaid order, or on its way out as a withdrawal
    assert cash >= 0 and points >= 0
    assert cash + held + wallet["payouts_in_progress_fen"] == 50_00
    assert points + points_held == 5_000
    assert (wallet["cash_fen"], wallet["held_for_orders_fen"]) == (cash, held)
    orders = db.session.query(Order).all()
    assert held == sum(o.balance_used_fen for o in orders) and points_held == sum(o.points_used for o in orders)
    assert count(Order) == sum(1 for a in answers if a == (201, None)) - wallet["payouts_in_progress_fen"] // 6_00
    ledger_ok()
