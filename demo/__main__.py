"""``python -m demo [--base-url URL]``: the walkthrough, step by step, in words and figures.

Alice claims a newcomer packet, orders a 50-yuan bowl of noodles with it and
pays at the simulator's checkout (8 % of the order back to her balance); Bob
binds to Alice's invite code and pays a 200-yuan order (Alice earns 10 %,
doubled in the seed's one-week window); the dispatcher sends Alice's reward
as a transfer bill, she confirms it in the simulator. Then the two play a
one-day step challenge through the WeCom robot (demo/challenge.py): Bob walks
more, Alice's stake becomes her packet to Bob, he spends it and Alice earns
her share back. The ledger is checked last. Exit 0 when every step held, 1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from datetime import UTC, datetime
from urllib.parse import quote

from demo.challenge import ChallengeStory
from demo.client import Client, DemoFailure, flask_command, operator_token, say, wait_for, yuan

SHOP, NOODLES, FEAST, TEA = "Noodle House", "Beef noodles", "Family feast", "Tea"  # the demo data (`flask seed-demo`)
PAYOUT_GONE_WRONG = {"failed", "cancelled", "needs_operator"}
# How the server refuses the demo shop's orders when the demo data was seeded in the other fund flow (`flask seed-demo`
# seeds the newcomer packets as the platform's in direct mode, paid from the shop's own sales in service-provider mode)
OTHER_FUND_FLOW = {"merchant_without_sub_mchid", "campaign_funded_from_sales", "discount_would_pool_money"}
RESEED = (
    "the demo data was seeded for the other fund flow: stop the server, run `make reset` with the FUND_FLOW it runs "
    "with (e.g. `FUND_FLOW=service_provider make reset`), then `make run` again"
)


NOTIFY_ME = ("transfer_to_confirm", "transfer_reminder", "rebate_landed", "payout_failed")


class Walkthrough:
    def __init__(self, client: Client, run_id: str, timeout_s: float, admin_token: str | None):
        self.api, self.run, self.timeout_s = client, run_id, timeout_s
        self.admin_token = admin_token
        self.people = 0

    def play(self) -> None:
        started = time.monotonic()
        say(f"Demo run {self.run} against {self.api.base_url}")
        self.api.call("health", "GET", "/healthz")
        (code, bob_code), shop_id = self.prepare()
        alice = self.login("alice")
        self.subscribe(alice, "alice")
        noodles, feast, tea = self.products(alice, shop_id)
        alice_order = self.newcomer_order(alice, code, noodles)
        if alice_order is None:  # service-provider mode: her cashback is shared later, there is no balance
            self.check_ledger()
            say(
                "Service-provider mode (FUND_FLOW=service_provider): the shop's cashback leaves its own order "
                "money by profit sharing after the refund window (PROFIT_SHARING_HOLD_DAYS), so nothing lands in "
                "a balance now; the rest of the walkthrough (referral transfer, wallet, challenge) is the direct "
                "mode's: stop the server, `make reset` (this demo data is the service-provider mode's), then "
                "`make run` without FUND_FLOW for it."
            )
            return
        bob, bob_order = self.referral(alice, feast)
        payout = self.wait_for_transfer(alice, bob_order)
        self.confirm(alice, payout)
        self.inbox(alice)
        ChallengeStory(self, self.token).play(alice, bob, noodles, tea, bob_code)
        self.check_ledger()
        say(f"Done in {time.monotonic() - started:.1f} s. Why each rebate was paid, in words (admin token):")
        say(f"  GET {self.api.base_url}/admin/api/trace/orders/{alice_order}  and  …/trace/orders/{bob_order}")

    # -- set-up: an operator token, a fresh claim code, the shop and its products --------------------

    def prepare(self) -> tuple[tuple[str, str], int]:
        token = self.token = self.admin_token or operator_token()
        campaigns = self.api.call("find the newcomer campaign", "GET", "/admin/api/campaigns?limit=500", token=token)
        newcomer = next(
            (
                c
                for c in campaigns["items"]
                if c["status"] == "active" and (c.get("trigger") or {}).get("kind") == "claim_code"
            ),
            None,
        )
        if newcomer is None:
            raise DemoFailure("no active claim-code campaign: the demo data is missing (stop the server, `make reset`)")
        batch = self.api.call(
            "make a claim code",
            "POST",
            f"/admin/api/campaigns/{newcomer['id']}/packets/batch",
            token=token,
            json={"count": 2, "reason": f"make demo, run {self.run}"},
            key=f"demo-{self.run}-code",
        )
        merchants = self.api.call("find the demo shop", "GET", "/admin/api/merchants?limit=500", token=token)
        shop = next((m for m in merchants["items"] if m["name"] == SHOP), None)
        if shop is None:
            raise DemoFailure(f"no merchant {SHOP!r}: the demo data is missing (stop the server, `make reset`)")
        say(f"0. An operator made a fresh newcomer claim code for campaign {newcomer['name']!r}: {batch['codes'][0]}")
        return (batch["codes"][0], batch["codes"][1]), shop["id"]

    def products(self, token: str, shop_id: int) -> tuple[dict, dict, dict]:
        listed = self.api.call("list the shop's products", "GET", f"/api/v1/merchants/{shop_id}/products", token=token)
        by_name = {p["name"]: p for p in listed["items"]}
        if not {NOODLES, FEAST, TEA} <= set(by_name):
            raise DemoFailure(f"{SHOP} sells no {NOODLES!r}, {FEAST!r} or {TEA!r}: stop the server and `make reset`")
        return by_name[NOODLES], by_name[FEAST], by_name[TEA]

    def login(self, name: str) -> str:
        person = f"{name}-{self.run}"
        address = self.address()
        answer = self.api.call(
            f"log {name} in", "POST", "/api/v1/auth/login", json={"code": f"code-{person}"}, address=address
        )
        self.api.addresses[answer["token"]] = address
        return answer["token"]

    def address(self) -> str:
        """A new person's phone address, on a /24 of its own (a household's, as risk reads networks)."""
        self.people += 1
        return f"10.{secrets.randbelow(250) + 1}.{self.people}.7"

    # -- 1-3: the newcomer packet ----------------------------------------------------------------

    def newcomer_order(self, alice: str, code: str, noodles: dict) -> int | None:
        packet = self.api.call(
            "claim the newcomer packet",
            "POST",
            "/api/v1/red-packets/claim",
            token=alice,
            json={"code": code},
            key=f"demo-{self.run}-claim",
        )
        say(
            f"1. Alice (code-alice-{self.run}) claimed a newcomer packet: {yuan(packet['amount_fen'])} off an "
            f"order of {yuan(packet['min_spend_fen'])} or more."
        )
        order = self.order("Alice orders the noodles", alice, noodles, packet["id"])
        say(
            f"2. Alice ordered {noodles['name']} ({yuan(order['total_fen'])}) with it: "
            f"{yuan(order['discount_fen'])} off, {yuan(order['payable_fen'])} to pay (order #{order['id']})."
        )
        paid, waited = self.pay("Alice pays", alice, order)
        [rebate] = self.awarded(paid, "consumer", "Alice's cashback")
        if rebate["form"] != "balance":  # the shop's own campaign in service-provider mode: shared, not credited
            say(
                f"3. Alice paid {yuan(paid['paid_fen'])} yuan for a {yuan(paid['total_fen'])} order, paid to the "
                f"shop's own WeChat Pay sub-merchant account (the callback landed after {waited:.1f} s); her "
                f"cashback {yuan(rebate['amount_fen'])} is shared to her from that money by profit sharing once "
                "the refund window has passed."
            )
            return None
        wallet = self.api.call("read Alice's wallet", "GET", "/api/v1/me/wallet", token=alice)
        if wallet["cash_fen"] != rebate["amount_fen"]:
            raise DemoFailure(
                f"Alice's balance is {yuan(wallet['cash_fen'])}, not her rebate {yuan(rebate['amount_fen'])}"
            )
        say(
            f"3. Alice paid {yuan(paid['paid_fen'])} yuan for a {yuan(paid['total_fen'])} order (the payment "
            f"callback landed after {waited:.1f} s); rebate {yuan(rebate['amount_fen'])} to balance "
            f"({'; '.join(rebate['reasons'])}). Her balance: {yuan(wallet['cash_fen'])}."
        )
        return order["id"]

    def newcomer_packet_order(self, who: str, token: str, code: str, noodles: dict, step: str) -> None:
        """Another newcomer's packet and noodles (the demo's way to give ``who`` a balance of their own)."""
        packet = self.api.call(
            f"{who} claims a newcomer packet",
            "POST",
            "/api/v1/red-packets/claim",
            token=token,
            json={"code": code},
            key=f"demo-{self.run}-claim-{who}",
        )
        order = self.order(f"{who} orders the noodles", token, noodles, packet["id"])
        paid, _ = self.pay(f"{who} pays", token, order)
        [rebate] = self.awarded(paid, "consumer", f"{who}'s cashback")
        say(
            f"{step}. {who} claimed a newcomer packet too and bought the noodles: {yuan(rebate['amount_fen'])} "
            "cashback to his balance."
        )

    def order(self, step: str, token: str, product: dict, packet_id: int | None = None) -> dict:
        body: dict = {"lines": [{"product_id": product["id"], "quantity": 1}]}
        if packet_id is not None:
            body["red_packet_id"] = packet_id
        try:
            order = self.api.call(step, "POST", "/api/v1/orders", token=token, json=body, key=f"demo-{self.run}-{step}")
        except DemoFailure as exc:
            if exc.code in OTHER_FUND_FLOW:
                raise DemoFailure(f"{exc}; {RESEED}", exc.code) from None
            raise
        if not order.get("payment"):
            error = order.get("payment_error") or {}
            raise DemoFailure(f"{step}: no payment parameters: {error.get('error')}: {error.get('message')}")
        return order

    def pay(self, step: str, token: str, order: dict) -> tuple[dict, float]:
        """Pay at the simulator's checkout, then wait until WeChat's signed callback has marked the order paid."""
        answer = self.api.call(step, "POST", order["payment"]["simulator_checkout_url"], accept_json=True)
        if answer.get("trade_state") != "SUCCESS":
            raise DemoFailure(f"{step}: the simulator's checkout answered trade_state {answer.get('trade_state')!r}")
        seen, waited = wait_for(
            f"the payment callback of order #{order['id']} (status still 'created')",
            lambda: self.api.call(f"{step}: read the order", "GET", f"/api/v1/orders/{order['id']}", token=token),
            lambda o: o["status"] != "created",
            self.timeout_s,
        )
        if seen["status"] != "paid":
            raise DemoFailure(f"{step}: order #{order['id']} is {seen['status']!r} after the payment, not 'paid'")
        return seen, waited

    def awarded(self, order: dict, role: str, what: str) -> list[dict]:
        found = [r for r in order["rebates"] if r["role"] == role and r["status"] == "awarded"]
        if len(found) != 1:
            why = [f"{r['role']} {r['status']}: {r['explanation']}" for r in order["rebates"]] or ["no rebate at all"]
            raise DemoFailure(f"{what}: expected one awarded {role} rebate on order #{order['id']}; {'; '.join(why)}")
        return found

    # -- 4: the referral ---------------------------------------------------------------------------

    def referral(self, alice: str, feast: dict) -> tuple[str, int]:
        bob = self.login("bob")
        invite = self.api.call("read Alice's invite code", "GET", "/api/v1/me/invite", token=alice)["invite_code"]
        self.api.call(
            "bind Bob to Alice",
            "POST",
            "/api/v1/referrals/bind",
            token=bob,
            json={"code": invite},
            key=f"demo-{self.run}-bind",
        )
        order = self.order("Bob orders the feast", bob, feast)
        paid, waited = self.pay("Bob pays", bob, order)
        # Alice reads her reward in her own rebates (Bob's order shows Bob only his own)
        hers = self.api.call("read Alice's rebates", "GET", "/api/v1/me/rebates", token=alice)["items"]
        on_order = {"id": order["id"], "rebates": [r for r in hers if r["order_id"] == order["id"]]}
        [reward] = self.awarded(on_order, "inviter", "Alice's referral reward")
        say(
            f"4. Bob (code-bob-{self.run}) signed up with Alice's invite code {invite} and paid "
            f"{yuan(paid['paid_fen'])} yuan for a {yuan(paid['total_fen'])} order (callback after {waited:.1f} s); "
            f"Alice earns {yuan(reward['amount_fen'])} as a {reward['form']} payout ({'; '.join(reward['reasons'])})."
        )
        return bob, order["id"]

    # -- 5: the dispatcher's transfer and Alice's confirmation --------------------------------------

    def payout_of(self, alice: str, order_id: int) -> dict | None:
        payouts = self.api.call("read Alice's payouts", "GET", "/api/v1/me/payouts", token=alice)["items"]
        found = next((p for p in payouts if p["order_id"] == order_id), None)
        if found and found["status"] in PAYOUT_GONE_WRONG:
            raise DemoFailure(f"Alice's payout #{found['id']} is {found['status']}: {found.get('reason')}")
        return found

    def wait_for_transfer(self, alice: str, order_id: int) -> dict:
        payout, waited = wait_for(
            "the dispatcher (`flask jobs run`, or make run's in-process scheduler, every 2 s) to send the transfer",
            lambda: self.payout_of(alice, order_id),
            lambda p: p is not None and p["status"] == "waiting_user_confirm",
            self.timeout_s,
        )
        say(
            f"5. After {waited:.1f} s the dispatcher had sent Alice's {yuan(payout['amount_fen'])} as a WeChat "
            f"transfer bill (payout #{payout['id']}); it waits for her confirmation ({payout['package_info']})."
        )
        return payout

    def confirm(self, alice: str, payout: dict) -> None:
        bill = self.api.call(
            "Alice confirms the transfer",
            "POST",
            f"/_sim/pay/transfer/confirm/{quote(payout['package_info'], safe='')}",
            accept_json=True,
        )
        done, waited = wait_for(
            f"the transfer callback of payout #{payout['id']} (status still waiting_user_confirm)",
            lambda: self.payout_of(alice, payout["order_id"]),
            lambda p: p is not None and p["status"] == "succeeded",
            self.timeout_s,
        )
        say(
            f"6. Alice confirmed it (wx.requestMerchantTransfer, played by the simulator): bill {bill['out_bill_no']} "
            f"is {bill['state']} at WeChat, and {waited:.1f} s later its callback made payout #{done['id']} "
            f"{done['status']}: {yuan(done['amount_fen'])} in her WeChat change."
        )

    # -- notices: consent at a tap, the inbox --------------------------------------------------------

    def subscribe(self, token: str, name: str) -> None:
        """Alice taps "notify me": the mini-program asks ``wx.requestSubscribeMessage`` for the templates of
        the notices about her money (the simulator plays the phone), then reports her answer to the app;
        WeChat's own popup event reaches the app too, and the tap counts once."""
        offered = self.api.call("read Alice's subscriptions", "GET", "/api/v1/me/subscriptions", token=token)["items"]
        wanted = [i["template_id"] for i in offered if i["event"] in NOTIFY_ME]
        wanted = list(dict.fromkeys(wanted))[:5]  # WeChat asks for at most 5 templates at a time
        if not wanted:
            say("0b. (no subscribe-message templates configured: Alice's notices stay in her in-app inbox)")
            return
        body = {"openid": f"sim-openid-{name}-{self.run}", "tmplIds": wanted, "choice": "accept"}
        answer = self.api.call(
            "Alice's phone asks wx.requestSubscribeMessage", "POST", "/_sim/subscribe/request", json=body
        )
        results = {t: answer.get(t, "accept") for t in wanted}
        report = {"results": results, "request_id": f"demo-{self.run}"}
        left = self.api.call("record Alice's consents", "POST", "/api/v1/me/subscriptions", json=report, token=token)
        say(
            f'0b. Alice tapped "notify me" and accepted {len(wanted)} subscribe-message template(s); one consent each '
            f"lets one message through: {left['remaining']}."
        )

    def inbox(self, token: str) -> None:
        def read() -> dict:
            return self.api.call("read Alice's notices", "GET", "/api/v1/me/notices", token=token)

        box, waited = wait_for(
            "Alice's notices of the transfer and of the money landing",
            read,
            lambda b: {"transfer_to_confirm", "rebate_landed"} <= {n["event"] for n in b["items"]},
            self.timeout_s,
        )
        titles = "; ".join(f"{n['title']}" for n in box["items"][:4])
        say(
            f"7. Alice's inbox (GET /api/v1/me/notices) has {len(box['items'])} notice(s), {box['unread']} unread: "
            f"{titles}. The dispatcher sent them as subscribe messages where she consented (shown on /_sim/)."
        )

    def check_ledger(self) -> None:
        output = flask_command("ledger", "check").strip().splitlines()
        say(f"14. flask ledger check: {output[-1] if output else '(no output)'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default=os.environ.get("PUBLIC_BASE_URL") or "http://127.0.0.1:5000")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for each asynchronous step")
    parser.add_argument("--admin-token", default=os.environ.get("DEMO_ADMIN_TOKEN"), help="else `flask seed-demo`")
    args = parser.parse_args(argv)
    run_id = datetime.now(UTC).strftime("%H%M%S") + secrets.token_hex(2)
    try:
        Walkthrough(Client(args.base_url), run_id, args.timeout, args.admin_token).play()
    except DemoFailure as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
