"""``python -m bench notify``: paid-order notifications through the whole pipeline, against the empty route.

Each notification is WeChat's ``TRANSACTION.SUCCESS`` for a fresh unpaid order, signed and
encrypted as WeChat does (bench/harness.py ``BenchWeChat``), POSTed to ``/wechat/pay/notify`` of
gunicorn (deploy/gunicorn.conf.py) on PostgreSQL: verify, decrypt, the order paid, two rebates,
the ledger, two payouts in the outbox. The scenario is issue 11's (and tests/test_hot_path_sql.py's):
a buyer invited by a friend pays a 200.00 order with a 10.00 packet of a platform campaign that
pays the consumer 10 % as WeChat change, and a referral campaign pays the inviter 10 % as WeChat
change.

Two measurements on one server and one database:

* normal: ``BENCH_HISTORY`` (default 300) orders already paid through the same route, 5 active
  campaigns (the two above and 3 of other merchants);
* 10x: ten times the paid orders and ten times the active campaigns; the line gives the cost of
  a notification relative to the normal one (both as ratios to the empty route, so machine noise
  cancels): 1.00x is flat.

Goals (issue 11): at least 0.10x the empty route, p99 under 100 ms at 4 clients, at most 15 SQL
statements per notification; flat with 10x history and campaigns.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

from bench import harness
from bench.harness import BenchWeChat, Clients, CpuMeter, Figures, Request, Server, ServerShape

ROUNDS = harness.env_int("BENCH_ROUNDS", 6)
ROUND_S = harness.env_float("BENCH_ROUND_SECONDS", 2.0)
CLIENTS = harness.env_int("BENCH_CLIENTS", 4)
HISTORY = harness.env_int("BENCH_HISTORY", 300)
OTHER_CAMPAIGNS = 3  # besides the packet and referral campaigns: 5 active in the normal run, 50 in the 10x run
PRODUCT_FEN = 200_00
PACKET_FEN = 10_00
CONSUMER = {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "wechat_change", "cap_fen": 100_00}]}
REFERRAL = {
    "applies_to": "referral",
    "roles": [{"role": "inviter", "rate_bps": 1000, "form": "wechat_change", "cap_fen": 100_00}],
}
BUDGET_FEN = 10**12  # never the limit here


def run() -> Iterator[str]:
    url = harness.database_url()
    if not url:
        yield "notify: skipped (set BENCH_DATABASE_URL=postgresql+psycopg://… : it measures gunicorn on PostgreSQL)"
        return
    yield from NotifyBench(url).run()


class Shop:
    """The seeded data, made in this process through the app's own operations (one app context)."""

    def __init__(self, app, wechat: BenchWeChat) -> None:
        self.app, self.wechat = app, wechat
        self.unpaid: list[tuple[str, int]] = []  # (out_trade_no, payable_fen) not yet notified
        self.database = ""  # the throw-away database's name (CPU of its PostgreSQL backends)
        self._n = 0

    def setup(self) -> None:
        from models import Merchant, Product, db

        with self.app.app_context():
            merchant = Merchant(name="bench noodles")
            db.session.add(merchant)
            db.session.flush()
            product = Product(merchant_id=merchant.id, name="beef noodles", category="food", price_fen=PRODUCT_FEN)
            db.session.add(product)
            self.packet_campaign_id = self._campaign(CONSUMER, packet_amount_fen=PACKET_FEN)
            self._campaign(REFERRAL)
            db.session.commit()
            self.merchant_id, self.product_id = merchant.id, product.id
        self.add_campaigns(OTHER_CAMPAIGNS)

    def _campaign(self, rules: dict, **fields) -> int:
        from models import Campaign, CampaignRules, db

        self._n += 1
        fields.setdefault("issuer_type", "platform")
        fields.setdefault("funder_type", "platform_fund")
        campaign = Campaign(name=f"bench-{self._n}", status="active", budget_limit_fen=BUDGET_FEN, **fields)
        db.session.add(campaign)
        db.session.flush()
        db.session.add(CampaignRules(campaign_id=campaign.id, version=1, rules=rules))
        return campaign.id

    def add_campaigns(self, count: int) -> None:
        """Active campaigns of other merchants (their own packets, consumer rebates): they never apply here."""
        from models import Merchant, db

        with self.app.app_context():
            for _ in range(count):
                other = Merchant(name=f"bench other {self._n}")
                db.session.add(other)
                db.session.flush()
                self._campaign(
                    CONSUMER,
                    issuer_type="merchant",
                    issuer_merchant_id=other.id,
                    packet_merchant_id=other.id,
                    packet_amount_fen=PACKET_FEN,
                    trigger={"kind": "claim"},
                )
            db.session.commit()

    def active_campaigns(self) -> int:
        from sqlalchemy import func, select

        from models import Campaign, db

        with self.app.app_context():
            return db.session.execute(select(func.count()).where(Campaign.status == "active")).scalar_one()

    def paid_orders(self) -> int:
        from sqlalchemy import func, select

        from models import Order, db

        with self.app.app_context():
            return db.session.execute(select(func.count()).where(Order.status == "paid")).scalar_one()

    def add_orders(self, count: int) -> None:
        """``count`` unpaid orders, each by a fresh invited buyer spending a fresh packet."""
        from models import Campaign, User, UserIdentity, db
        from rebate import create_order, issue_packet
        from rebate.orders import LineRequest

        with self.app.app_context():
            for done in range(count):
                now = harness.now_utc()
                tag = secrets.token_hex(6)
                inviter = User()
                db.session.add(inviter)
                db.session.flush()
                buyer = User(inviter_id=inviter.id, invited_at=now)
                db.session.add(buyer)
                db.session.flush()
                for user in (inviter, buyer):
                    db.session.add(UserIdentity(user_id=user.id, appid=self.wechat.appid, openid=f"o-{tag}-{user.id}"))
                campaign = db.session.get(Campaign, self.packet_campaign_id)
                packet = issue_packet(campaign, buyer, source="bench", source_ref=tag, now=now)
                order = create_order(buyer, [LineRequest(self.product_id, 1)], packet.id, now)
                self.unpaid.append((order.out_trade_no, order.payable_fen))
                if done % 100 == 99:
                    db.session.commit()
            db.session.commit()

    def take(self, count: int) -> list[tuple[str, int]]:
        if len(self.unpaid) < count:
            self.add_orders(count - len(self.unpaid))
        taken, self.unpaid = self.unpaid[:count], self.unpaid[count:]
        return taken

    def give_back(self, orders: list[tuple[str, int]]) -> None:
        self.unpaid[:0] = orders


class NotifyBench:
    def __init__(self, url: str) -> None:
        self.url = url
        self.shape = ServerShape.from_env()

    def run(self) -> Iterator[str]:
        clients = Clients(CLIENTS)  # forked before any database connection of ours
        try:
            with harness.workspace() as tmp, harness.ThrowAwayDatabase(self.url, "notify") as database:
                wechat = BenchWeChat(tmp)
                settings = harness.app_settings(database.url, wechat)
                harness.migrate(settings)
                app = harness.in_process_app(settings)
                shop = Shop(app, wechat)
                shop.database = database.name
                self.database = database
                shop.setup()
                with Server(settings, self.shape, tmp) as server:
                    normal = self.measure(shop, clients, server, history=HISTORY)
                    yield self.line("notify", shop, normal)
                    shop.add_campaigns(9 * shop.active_campaigns())
                    tenfold = self.measure(shop, clients, server, history=10 * normal["history"])
                    cost = normal["ratio"] / tenfold["ratio"] if tenfold["ratio"] else float("nan")
                    yield self.line("notify 10x history+campaigns", shop, tenfold) + f"; cost vs normal {cost:.2f}x"
                with app.app_context():
                    from models import db

                    db.engine.dispose()
        finally:
            clients.close()

    def requests(self, shop: Shop, orders: list[tuple[str, int]]) -> list[Request]:
        """Signed just before the round: WeChat's timestamps are checked (5 minutes)."""
        out = []
        for out_trade_no, amount in orders:
            body, headers = shop.wechat.notification(shop.wechat.paid(out_trade_no, amount))
            out.append(("POST", "/wechat/pay/notify", body, headers))
        return out

    def notify_round(
        self, shop: Shop, clients: Clients, server: Server, count: int, seconds: float, figures=None, meter=None
    ):
        """``count`` fresh orders notified for at most ``seconds``; the orders not reached go back. The orders are
        made and signed before the round (so ``meter`` charges the round with the server's work only)."""
        orders = shop.take(count)
        requests = self.requests(shop, orders)
        send = lambda: clients.each(server.port, requests, seconds)  # noqa: E731
        done = figures.measured(meter, send) if figures is not None else send()
        shop.give_back([o for i, o in enumerate(orders) if i not in done.sent])
        return done

    def measure(self, shop: Shop, clients: Clients, server: Server, history: int) -> dict:
        # History (and warm-up): paid through the same route until the database holds `history` paid orders.
        while (missing := history - shop.paid_orders()) > 0:
            warm = self.notify_round(shop, clients, server, min(missing, 500), 120)
            harness.check_statuses(Figures("history", [warm]), {204})
        self.database.analyze()  # as autovacuum would have, with this history
        started_with = shop.paid_orders()
        estimate = 50.0  # notifications/s: the first round learns the real rate
        empty, real = Figures("empty"), Figures("notify")
        meter = CpuMeter(server, shop.database)
        for _ in range(ROUNDS):
            empty.measured(meter, lambda: clients.repeat(server.port, harness.empty_request(), ROUND_S))
            count = int(estimate * ROUND_S * 1.5) + 4 * CLIENTS
            r = self.notify_round(shop, clients, server, count, ROUND_S, real, meter)
            estimate = max(estimate, r.answered / r.seconds)
        harness.check_statuses(real, {204})
        harness.check_statuses(empty, {204})
        statements = self.statements(shop)
        return {
            "empty": empty,
            "real": real,
            "ratio": real.rate / empty.rate,
            "history": started_with,
            "statements": statements,
        }

    def statements(self, shop: Shop) -> int:
        """Two more notifications, in this process through the Flask test client; the second's statements
        counted (the first warms this process's caches of rules and account ids, as the servers' are warm)."""
        counts = []
        for _ in range(2):
            (order,) = shop.take(1)
            body, headers = shop.wechat.notification(shop.wechat.paid(*order))
            with shop.app.app_context():
                from models import db

                client = shop.app.test_client()
                with harness.counted(db.engine) as statements:
                    response = client.post("/wechat/pay/notify", data=body, headers=headers)
                if response.status_code != 204:
                    raise RuntimeError(f"in-process notification answered {response.status_code}: {response.data!r}")
            counts.append(len(statements))
        return counts[-1]

    def line(self, name: str, shop: Shop, m: dict) -> str:
        extra = (
            f"; {m['statements']} SQL statements/notification; history {m['history']:,} paid orders, "
            f"{shop.active_campaigns()} active campaigns"
        )
        return harness.ratio_line(name, self.shape, CLIENTS, m["empty"], m["real"], extra)
