"""Whole-product money invariants under seeded random walks.

Each walk sets up three packet campaigns (budgeted and platform funded; budgeted and funded by a merchant's
deposit; unbudgeted) and a budgeted referral campaign, with rebates paid as balance, points, WeChat change and
merchant credit, then takes random steps through the real functions and the HTTP API: packets issued (some
back-dated, so they fall due) and claimed by code, orders created with packets, balance and points, paid by
signed payment notifications, refunded in part or whole by signed refund notifications, payouts dispatched
against a scripted rail (success, definite failure, unknown), review cases released, revoked or clawed back,
people banned and unbanned, and the scheduled jobs run. After every step:

- the ledger check passes;
- each campaign's ``budget_reserved_fen`` is what its live packets hold, and its ``budget_committed_fen`` what
  docs/architecture.md §3 ("Budgets") says stays committed: the discounts of its packets on orders not refunded in full,
  each rebate's paid and held part, and what refunds left owed back (receivables) until it is recovered;
- a person's wallet (``GET /api/v1/me/wallet``) shows their ledger balances;
- no rebate's payouts pay out more than the rebate, and none pays twice;
- no merchant's marketing deposit is below zero.

``PROBE19_SEEDS`` (comma-separated) and ``PROBE19_STEPS`` explore further locally.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from jobs.expiring import expire_packets_and_conditions
from jobs.orders import close_expired_orders
from jobs.payouts import dispatch_due, settle_covered_debts
from ledger import account, balance, check_ledger
from models import (
    AccountKind,
    Campaign,
    Order,
    OrderPacket,
    PacketStatus,
    Payout,
    Rebate,
    Receivable,
    RedPacket,
    Refund,
    ReviewCase,
    RiskIdentifier,
    User,
    db,
    utcnow,
)
from models.base import BEIJING
from payouts import MoneySettings
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings
from rebate import begin_refund, fail_refund, issue_packet
from rebate.errors import BudgetExhausted, DepositExhausted, Invalid, StateConflict
from rebate.packets import generate_batch
from risk.rules import forget_rules
from tests.conftest import release_test_session
from tests.test_wechat_callbacks import (  # noqa: F401 - no_network: fixture
    deliver,
    deliver_refund,
    no_network,
    refund_resource,
    transaction_resource,
)

K = AccountKind
SEEDS = [int(s) for s in os.environ.get("PROBE19_SEEDS", "11,12,13").split(",")]
STEPS = int(os.environ.get("PROBE19_STEPS", "45"))
LIVE = [PacketStatus.UNCLAIMED.value, PacketStatus.ISSUED.value, PacketStatus.LOCKED.value]


@pytest.fixture(autouse=True)
def fresh_rules(app):
    forget_rules()
    yield
    forget_rules()


class Rail:
    """A WeChat change rail answering from the walk's random source: success, definite failure, or unknown (a
    timeout); a query of an unknown send answers the same way. ``paid`` is what WeChat really paid."""

    name = "wechat_change"
    rate_per_second = 1000

    def __init__(self, rng: random.Random):
        self.rng, self.paid = rng, defaultdict(int)

    def build_request(self, payout, now):
        return {"amount_fen": payout.amount_fen, "openid": f"openid-{payout.user_id}"}

    def _answer(self, external_no, request):
        roll = self.rng.random()
        if roll < 0.5:
            self.paid[external_no] += 1
            return RailResult(Outcome.SUCCEEDED, "SUCCESS", wechat_ref=f"bill-{external_no}")
        if roll < 0.7:
            return RailResult(Outcome.FAILED, "NOT_ENOUGH")
        return RailResult(Outcome.UNKNOWN, "TIMEOUT")

    def send(self, external_no, request):
        return self._answer(external_no, request)

    def query(self, external_no, request):
        if self.paid[external_no]:  # WeChat paid it: the query says so
            return RailResult(Outcome.SUCCEEDED, "SUCCESS", wechat_ref=f"bill-{external_no}")
        return RailResult(Outcome.NOT_FOUND) if self.rng.random() < 0.5 else self._answer(external_no, request)


def beijing_iso(when) -> str:
    return when.astimezone(BEIJING).isoformat(timespec="seconds")


class Walk:
    def __init__(self, app, client, rng, make_user, make_merchant, make_product, make_campaign, make_operator):
        self.app, self.client, self.rng = app, client, rng
        self.shop = make_merchant("walk-shop")
        self.products = [make_product(self.shop, price_fen=p) for p in (100_00, 45_50, 8_00, 230_00)]
        appid = app.config["WECHAT_APPID"]
        first = make_user(appid=appid)
        second = make_user(appid=appid, inviter=first)
        third = make_user(appid=appid)
        fourth = make_user(appid=appid, inviter=third)
        self.issuer = make_user(appid=appid)
        self.people = [first, second, third, fourth, self.issuer]
        self.platform = make_campaign(
            {
                "roles": [
                    {"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 8_00},
                    {"role": "issuer", "rate_bps": 300, "form": "wechat_change", "cap_fen": 5_00},
                ]
            },
            issuer_type="user",
            issuer_user_id=self.issuer.id,
            packet_amount_fen=10_00,
            budget_limit_fen=200_00,
            restore_packet_on_refund=True,
            packet_valid_days=2,
            max_packets_per_order=2,
        )
        self.deposit = make_campaign(
            {
                "roles": [
                    {"role": "consumer", "rate_bps": 1000, "form": "points", "cap_fen": 20_00},
                    {"role": "issuer", "rate_bps": 500, "form": "merchant_credit", "cap_fen": 10_00},
                ]
            },
            fund_deposit_fen=250_00,
            issuer_type="merchant",
            issuer_merchant_id=self.shop.id,
            funder_type="merchant_deposit",
            funder_merchant_id=self.shop.id,
            packet_amount_fen=15_00,
            packet_min_spend_fen=20_00,
            budget_limit_fen=300_00,
            max_packets_per_order=2,
            restore_packet_on_refund=self.rng.random() < 0.5,
        )
        self.open = make_campaign(
            {"roles": [{"role": "consumer", "rate_bps": 200, "form": "wechat_change", "cap_fen": 3_00}]},
            packet_amount_fen=5_00,
            packet_valid_days=1,
        )
        self.referral = make_campaign(
            {
                "applies_to": "referral",
                "roles": [{"role": "inviter", "rate_bps": 300, "form": "balance", "cap_fen": 5_00}],
            },
            budget_limit_fen=30_00,
        )
        self.campaigns = [self.platform, self.deposit, self.open, self.referral]
        self.codes = [p.claim_code for p in generate_batch(self.platform, 6, utcnow(), "walk")]
        db.session.commit()
        _, self.admin = make_operator("admin")
        _, self.second_admin = make_operator("admin")
        self.bans: list[int] = []
        self.rail = Rail(rng)
        self.n = 0
        self.log: list[str] = []

    # -- helpers -------------------------------------------------------------------------------------------

    def user_headers(self, user: User) -> dict:
        from web.auth import issue_user_token

        return {"Authorization": f"Bearer {issue_user_token(user)}"}

    def request(self, method: str, path: str, headers: dict, **kw):
        release_test_session()
        self.n += 1
        headers = {**headers, "Idempotency-Key": f"walk-{self.n}"}
        response = getattr(self.client, method)(path, headers=headers, **kw)
        db.session.rollback()
        assert response.status_code < 500, (path, response.status_code, response.get_data(as_text=True))
        return response

    def person(self) -> User:
        return self.rng.choice(self.people)

    # -- steps ---------------------------------------------------------------------------------------------

    def issue(self):
        campaign = db.session.get(Campaign, self.rng.choice([self.platform, self.deposit, self.open]).id)
        owner = self.person()
        back = timedelta(hours=self.rng.choice([0, 0, 0, 20, 47, 60]))  # some fall due before they are spent
        self.n += 1
        try:
            issue_packet(campaign, owner, source="walk", source_ref=f"w{self.n}", now=utcnow() - back)
            db.session.commit()
        except (BudgetExhausted, DepositExhausted, StateConflict) as exc:
            db.session.rollback()
            return f"issue refused: {exc}"
        return f"issue {campaign.name} to {owner.id} back {back}"

    def claim(self):
        if not self.codes:
            return "no codes"
        code = self.codes.pop()
        who = self.person()
        r = self.request("post", "/api/v1/red-packets/claim", self.user_headers(who), json={"code": code})
        return f"claim {code} by {who.id}: {r.status_code}"

    def order(self):
        who = self.person()
        packets = (
            db.session.execute(
                select(RedPacket.id).where(RedPacket.owner_id == who.id, RedPacket.status == PacketStatus.ISSUED)
            )
            .scalars()
            .all()
        )
        product = self.rng.choice(self.products)
        body = {"lines": [{"product_id": product.id, "quantity": self.rng.choice([1, 1, 2])}]}
        if packets and self.rng.random() < 0.8:
            body["red_packet_ids"] = self.rng.sample(packets, k=min(len(packets), self.rng.choice([1, 1, 2])))
        cash = int(balance(account(K.USER_CASH, "user", who.id)))
        points = int(balance(account(K.USER_POINTS, "user", who.id)))
        if cash > 0 and self.rng.random() < 0.5:
            body["use_balance_fen"] = self.rng.choice([cash, self.rng.randint(1, cash)])
        if points > 0 and self.rng.random() < 0.5:
            body["use_points"] = self.rng.choice([points, self.rng.randint(1, points)])
        r = self.request("post", "/api/v1/orders", self.user_headers(who), json=body)
        if r.status_code == 201 and self.rng.random() < 0.25:  # a click farm's order: held for review when paid
            order = db.session.get(Order, r.json["id"])
            order.device, order.ip = f"farm-{order.id}", None
            now = utcnow()
            for owner in [who.id] + [800_000 + order.id * 10 + i for i in range(5)]:
                db.session.add(
                    RiskIdentifier(
                        kind="device",
                        value=order.device,
                        owner_type="user",
                        owner_id=owner,
                        first_seen=now,
                        last_seen=now,
                    )
                )
            db.session.commit()
        return f"order by {who.id} {body}: {r.status_code} {r.get_data(as_text=True)[:120]}"

    def pay(self):
        order = self._pick(Order.status == "created")
        if order is None:
            return "nothing to pay"
        resource = transaction_resource(self.app, order, success_time=beijing_iso(utcnow()))
        release_test_session()
        r = deliver(self.client, self.app, resource)
        if self.rng.random() < 0.2:  # WeChat tells again, with another notification id
            assert deliver(self.client, self.app, resource).status_code == r.status_code
        if self.rng.random() < 0.1:  # a second transaction pays it too: flagged, never applied twice
            other = {**resource, "transaction_id": f"4300{order.id:010d}"}
            assert deliver(self.client, self.app, other).status_code < 500
        db.session.rollback()
        assert r.status_code == 204, r.get_data(as_text=True)
        return f"pay order {order.id} ({order.payable_fen})"

    def refund(self):
        order = self._pick(Order.status == "paid")
        if order is None:
            return "nothing to refund"
        pending = db.session.execute(
            select(func.coalesce(func.sum(Refund.amount_fen), 0)).where(
                Refund.order_id == order.id, Refund.status.in_(["pending", "processing"])
            )
        ).scalar_one()
        left = order.payable_fen - order.refunded_fen - int(pending)
        if left <= 0:
            return "nothing left to refund"
        amount = self.rng.choice([left, left, self.rng.randint(1, left)])
        self.n += 1
        number = f"RW{self.n:08d}"
        try:
            begin_refund(order, number, amount, "walk")
            db.session.commit()
        except (Invalid, StateConflict) as exc:
            db.session.rollback()
            return f"refund refused: {exc}"
        if self.rng.random() < 0.15:
            fail_refund(number, "closed", utcnow(), why="walk")
            db.session.commit()
            return f"refund {number} of {amount} closed"
        order = db.session.get(Order, order.id)
        resource = refund_resource(self.app, order, number, amount)
        resource["success_time"] = beijing_iso(utcnow())
        release_test_session()
        r = deliver_refund(self.client, self.app, resource)
        if self.rng.random() < 0.2:  # told again
            assert deliver_refund(self.client, self.app, resource).status_code == r.status_code
        db.session.rollback()
        assert r.status_code == 204, r.get_data(as_text=True)
        return f"refund {number} of {amount} on order {order.id} (paid {order.payable_fen})"

    def dispatch(self):
        at = utcnow() + timedelta(hours=self.rng.choice([0, 1, 30]))
        result = dispatch_due(
            {self.rail.name: self.rail}, settings=DispatchSettings(money=MoneySettings()), clock=lambda: at
        )
        db.session.rollback()
        return f"dispatch {dict(result)}"

    def decide(self):
        case = (
            db.session.execute(
                select(ReviewCase).where(ReviewCase.status.in_(["open", "awaiting_approval"])).order_by(ReviewCase.id)
            )
            .scalars()
            .first()
        )
        if case is None:
            return "no case"
        outcome = self.rng.choice(["release", "release", "revoke", "claw_back"])
        body = {"outcome": outcome, "reason": "walk decision"}
        r = self.request("post", f"/admin/api/reviews/{case.id}/decide", self.admin, json=body)
        if r.status_code == 200 and r.json.get("status") == "awaiting_approval":
            r = self.request("post", f"/admin/api/reviews/{case.id}/decide", self.second_admin, json=body)
        return f"decide case {case.id} {outcome}: {r.status_code} {r.get_data(as_text=True)[:100]}"

    def ban(self):
        if self.bans and self.rng.random() < 0.5:
            ban_id = self.bans.pop()
            r = self.request("delete", f"/admin/api/bans/{ban_id}", self.admin, json={"reason": "walk lift"})
            return f"lift ban {ban_id}: {r.status_code}"
        if self.rng.random() < 0.25:  # the shop: its campaigns pause while it is banned
            body = {"subject": "merchant", "value": str(self.shop.id), "reason": "walk ban"}
        else:
            body = {"subject": "user", "value": str(self.person().id), "reason": "walk ban"}
        r = self.request("post", "/admin/api/bans", self.admin, json=body)
        if r.status_code == 201:
            self.bans.append(r.json["id"])
        return f"ban {body['subject']} {body['value']}: {r.status_code} {r.get_data(as_text=True)[:100]}"

    def jobs(self):
        release_test_session()
        done = {
            "expired": dict(expire_packets_and_conditions()),
            "closed": dict(close_expired_orders(utcnow() + timedelta(hours=self.rng.choice([0, 3])))),
            "covered": dict(settle_covered_debts()),
        }
        db.session.rollback()
        return f"jobs {done}"

    def _pick(self, *where) -> Order | None:
        ids = db.session.execute(select(Order.id).where(*where).order_by(Order.id)).scalars().all()
        return db.session.get(Order, self.rng.choice(ids)) if ids else None

    STEPS = {
        "issue": 6,
        "claim": 1,
        "order": 6,
        "pay": 6,
        "refund": 3,
        "dispatch": 3,
        "decide": 2,
        "ban": 1,
        "jobs": 2,
    }

    def step(self):
        name = self.rng.choices(list(self.STEPS), weights=list(self.STEPS.values()))[0]
        self.log.append(getattr(self, name)())

    # -- invariants ----------------------------------------------------------------------------------------

    def check(self):
        db.session.rollback()
        db.session.expire_all()
        problems = []
        report = check_ledger(self.app.config["POINT_VALUE_FEN"])
        problems += report.violations
        for campaign in self.campaigns:
            problems += budget_problems(db.session.get(Campaign, campaign.id))
        for user in self.people:
            problems += self.wallet_problems(user)
        problems += payout_problems()
        deposit = balance(account(K.MERCHANT_MARKETING_DEPOSIT, "merchant", self.shop.id))
        if deposit < 0:
            problems.append(f"the shop's deposit is at {deposit}")
        db.session.rollback()
        assert not problems, "\n".join(problems + ["-- steps:"] + self.log)

    def wallet_problems(self, user: User) -> list[str]:
        r = self.request("get", "/api/v1/me/wallet", self.user_headers(user))
        if r.status_code == 403 and db.session.get(User, user.id).status == "banned":
            return []  # a banned person reads nothing
        assert r.status_code == 200, r.get_data(as_text=True)
        wallet = r.json
        want = {
            "cash_fen": balance(account(K.USER_CASH, "user", user.id)),
            "points": balance(account(K.USER_POINTS, "user", user.id)),
            "held_for_orders_fen": balance(account(K.USER_CASH_HELD, "user", user.id)),
            "points_held_for_orders": balance(account(K.USER_POINTS_HELD, "user", user.id)),
        }
        got = {k: wallet[k] for k in want}
        owed = db.session.execute(
            select(func.coalesce(func.sum(Receivable.outstanding_fen), 0)).where(
                Receivable.beneficiary_type == "user", Receivable.beneficiary_id == user.id
            )
        ).scalar_one()
        problems = [f"user {user.id}'s wallet says {got}, the ledger {want}"] if got != want else []
        if sum(r["outstanding_fen"] for r in wallet["receivables"]) != owed:
            problems.append(f"user {user.id}'s wallet shows receivables {wallet['receivables']}, the table {owed}")
        return problems


def budget_problems(campaign: Campaign) -> list[str]:
    """The campaign's counters against what its packets, rebates and receivables hold (docs/architecture.md §3)."""
    held = db.session.execute(
        select(func.coalesce(func.sum(RedPacket.reserved_fen), 0)).where(
            RedPacket.campaign_id == campaign.id, RedPacket.status.in_(LIVE)
        )
    ).scalar_one()
    discounts = db.session.execute(
        select(func.coalesce(func.sum(OrderPacket.discount_fen), 0))
        .join(RedPacket, RedPacket.id == OrderPacket.packet_id)
        .join(Order, Order.id == OrderPacket.order_id)
        .where(RedPacket.campaign_id == campaign.id, Order.status == "paid")
    ).scalar_one()
    rebates = db.session.execute(
        select(func.coalesce(func.sum(Rebate.amount_fen + Rebate.held_fen), 0)).where(Rebate.campaign_id == campaign.id)
    ).scalar_one()
    owed = db.session.execute(
        select(func.coalesce(func.sum(Receivable.outstanding_fen), 0)).where(Receivable.campaign_id == campaign.id)
    ).scalar_one()
    problems = []
    if campaign.budget_reserved_fen != held:
        problems.append(
            f"campaign {campaign.name} reserves {campaign.budget_reserved_fen}; its live packets hold {held}"
        )
    committed = discounts + rebates + owed
    if campaign.budget_committed_fen != committed:
        problems.append(
            f"campaign {campaign.name} commits {campaign.budget_committed_fen}; discounts {discounts} + rebates "
            f"{rebates} + receivables {owed} = {committed}"
        )
    return problems


def payout_problems() -> list[str]:
    rows = db.session.execute(
        select(Payout.rebate_id, func.count(Payout.id), func.coalesce(func.sum(Payout.amount_fen), 0))
        .where(Payout.rebate_id.is_not(None), Payout.status == "succeeded")
        .group_by(Payout.rebate_id)
    ).all()
    problems = []
    for rebate_id, n, paid in rows:
        rebate = db.session.get(Rebate, rebate_id)
        if n > 1 or paid > rebate.original_fen:
            problems.append(f"rebate {rebate_id} ({rebate.original_fen}) paid {n} times, {paid} in all")
    return problems


@pytest.mark.parametrize("seed", SEEDS)
def test_money_invariants_hold_after_every_step_of_a_random_walk(
    seed, app, client, make_user, make_merchant, make_product, make_campaign, make_operator, no_network
):
    walk = Walk(app, client, random.Random(seed), make_user, make_merchant, make_product, make_campaign, make_operator)
    walk.check()
    for _ in range(STEPS):
        walk.step()
        walk.check()
    if os.environ.get("PROBE19_LOG"):  # what the walk did, to read when exploring
        with open(os.environ["PROBE19_LOG"], "a") as out:
            out.write(f"seed {seed}\n" + "\n".join(walk.log) + "\n")
            rows = db.session.execute(
                select(Payout.rail, Payout.status, Payout.next_attempt_at, func.count()).group_by(
                    Payout.rail, Payout.status, Payout.next_attempt_at
                )
            ).all()
            out.write(f"payouts {rows}\n")
            rows = db.session.execute(select(Order.risk_decision, func.count()).group_by(Order.risk_decision)).all()
            out.write(f"risk {rows}\n")
            rows = db.session.execute(
                select(Rebate.form, Rebate.status, Rebate.reason_code, func.count()).group_by(
                    Rebate.form, Rebate.status, Rebate.reason_code
                )
            ).all()
            out.write(f"rebates {rows}\n")
