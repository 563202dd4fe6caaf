"""The seeded risk simulation: honest shoppers and planted fraud through the real HTTP API, then the verdicts.

``run(SimConfig(seed=N))`` builds a throw-away database (a SQLite file in a temporary directory, or a
PostgreSQL database created beside ``database_url``'s and dropped afterwards), seeds a demo-like
shop floor through the models (merchants, products, deposits, campaigns, operators), and then plays
every simulated person through the app's own API with Flask's test client: device tokens, logins,
the behaviour trail (``POST /api/v1/events``, best effort while that endpoint may be missing), claims,
orders, the WeChat simulator's checkout and its signed payment notification, refunds.

Time is simulated: a clock (``SimClock``) stands in for ``models.utcnow`` (every server-stamped time:
rows, claims, limits, tokens' stored expiries) and for the simulator's ``success_time``, and moves
forward by each person's dwell, think time and days between visits; the people's scripts are
generators merged by their next time, so a run is one deterministic sequence for a seed.

Populations (``Truth`` keeps the ground truth, by ``out_trade_no``):

* honest shoppers: their own device and address (a few families of two share both), browse 3-15
  products with searches, comparisons and cart changes and dwell, come back over days, claim shop
  packets now and then and spend them on baskets they chose, use their newcomer packet some day,
  refund rarely;
* a click farm: fresh accounts on a few shared devices and addresses, no browsing (or one view),
  claim a shop's packet, order at once, pay at once (orders without a packet when the claim is refused:
  brushing still fakes a sale);
* merchant-consumer rings: a shop's staff operator works from the shop's address and device, shared
  with a handful of consumer accounts that claim that shop's packets day after day and order just over
  the minimum spend;
* sybils: many new accounts from one or two networks and devices, each spending its registration
  packet at once.

Metrics (``metrics``) are over paid orders: flagged is ``risk_decision`` in (review, block); planted
orders are the positives. Nothing is inferred: an order without a verdict is not flagged.
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from sqlalchemy import select

from models import RiskCommunity, db
from risk.communities import GraphSettings, find_communities

START = datetime(2030, 1, 7, 0, 0, tzinfo=UTC)  # a fixed Monday: a seed's run does not depend on today's date
FLAGGED = ("review", "block")
FRAUD_KINDS = ("click_farm", "ring", "sybil")
GOALS = {"precision": 0.9, "recall": 0.8}
SEARCHES = ("noodles", "tea", "gift", "dumplings", "coffee", "cake", "rice", "hotpot", "fruit", "snack")
EVENT_KINDS = ("view", "search", "compare", "cart_add", "cart_remove", "page", "share")


# -- configuration and results ---------------------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    seed: int = 1
    honest: int = 240  # shoppers (about 1.4 paid orders each)
    farm_accounts: int = 70  # click-farm accounts
    rings: int = 2  # merchant-consumer rings
    ring_members: int = 5  # consumer accounts per ring
    sybils: int = 50  # sybil registrations
    days: int = 7  # simulated days
    database_url: str | None = None  # PostgreSQL: a database of its own beside it; None: a temporary SQLite file


@dataclass
class Device:
    """A phone: its server-issued device token, asked for by the first person who signs in on it."""

    token: str | None = None


@dataclass
class RingTruth:
    merchant_id: int
    user_ids: list[int] = field(default_factory=list)

    def members(self) -> set[str]:
        return {f"merchant:{self.merchant_id}"} | {f"user:{u}" for u in self.user_ids}


@dataclass
class Truth:
    planted: dict[str, str] = field(default_factory=dict)  # out_trade_no -> fraud kind
    honest: set[str] = field(default_factory=set)
    rings: list[RingTruth] = field(default_factory=list)
    script: list[tuple] = field(default_factory=list)  # (kind, person, total_fen, with packet) per planted order

    def plant(self, kind: str, person: str, order: dict, packet: bool) -> None:
        self.planted[order["out_trade_no"]] = kind
        self.script.append((kind, person, order["total_fen"], packet))


@dataclass
class Tally:
    """What happened on the way, by population: refused claims, requests, events."""

    claims: Counter = field(default_factory=Counter)  # (population, "granted" | "refused:<code>")
    registration_packets: Counter = field(default_factory=Counter)  # (population, "granted" | "refused")
    orders: Counter = field(default_factory=Counter)  # (population, "created" | "paid" | "failed")
    events: Counter = field(default_factory=Counter)  # HTTP status of POST /api/v1/events
    refunds: int = 0
    requests: int = 0

    def as_json(self) -> dict:
        def nest(counter: Counter) -> dict:
            out: dict = {}
            for (population, what), n in sorted(counter.items()):
                out.setdefault(population, {})[what] = n
            return out

        return {
            "claims": nest(self.claims),
            "registration_packets": nest(self.registration_packets),
            "orders": nest(self.orders),
            "events": {str(k): v for k, v in sorted(self.events.items())},
            "refunds": self.refunds,
            "requests": self.requests,
        }


@dataclass
class Metrics:
    paid: int
    planted_paid: int
    honest_paid: int
    unscored: int  # paid orders with no verdict at all (risk_decision NULL)
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float | None  # None: nothing flagged
    recall: float | None  # None: nothing planted
    honest_false_positive_rate: float | None
    recall_by_kind: dict[str, float | None]
    decisions: dict[str, int]

    def passed(self) -> bool:
        return (
            self.precision is not None
            and self.recall is not None
            and self.precision >= GOALS["precision"]
            and self.recall >= GOALS["recall"]
        )


def metrics(decisions: dict[str, str | None], planted: dict[str, str]) -> Metrics:
    """Precision and recall of the verdicts on paid orders (``out_trade_no`` -> ``risk_decision``).

    A planted order that was never paid is not counted (the limits stopped it before a verdict).
    """
    tp = fp = fn = tn = 0
    by_kind: dict[str, list[int]] = {k: [0, 0] for k in FRAUD_KINDS}  # kind -> [flagged, paid]
    for number, decision in decisions.items():
        flagged = decision in FLAGGED
        kind = planted.get(number)
        if kind is not None:
            by_kind.setdefault(kind, [0, 0])
            by_kind[kind][1] += 1
            by_kind[kind][0] += flagged
            tp, fn = tp + flagged, fn + (not flagged)
        else:
            fp, tn = fp + flagged, tn + (not flagged)
    ratio = lambda a, b: a / b if b else None  # noqa: E731
    return Metrics(
        paid=len(decisions),
        planted_paid=tp + fn,
        honest_paid=fp + tn,
        unscored=sum(1 for d in decisions.values() if d is None),
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
        precision=ratio(tp, tp + fp),
        recall=ratio(tp, tp + fn),
        honest_false_positive_rate=ratio(fp, fp + tn),
        recall_by_kind={k: ratio(f, n) for k, (f, n) in sorted(by_kind.items())},
        decisions=dict(Counter(str(d) for d in decisions.values())),
    )


@dataclass
class Communities:
    available: bool
    note: str
    # Per planted ring: "suspicious" (all its members, the shop and its consumer accounts, in one community the
    # job marked suspicious), "together" (in one community, not marked), "apart".
    rings: list[str] = field(default_factory=list)

    @property
    def found(self) -> list[bool]:
        return [r == "suspicious" for r in self.rings]

    @property
    def every_ring_found(self) -> bool | None:
        """None when there is nothing to say: the graph was not read, or no ring was planted (``--rings 0``)."""
        return all(self.found) if self.available and self.rings else None


@dataclass
class Result:
    config: SimConfig
    truth: Truth
    tally: Tally
    metrics: Metrics
    communities: Communities
    seconds: float
    scoring_present: bool
    ledger_violations: list[str]

    def as_json(self) -> dict:
        return {
            "config": asdict(self.config) | {"database_url": "(given)" if self.config.database_url else None},
            "seconds": round(self.seconds, 1),
            "scoring_present": self.scoring_present,
            "ledger_violations": self.ledger_violations,
            "metrics": asdict(self.metrics),
            "goals": GOALS,
            "pass": self.metrics.passed(),
            "communities": {
                "available": self.communities.available,
                "note": self.communities.note,
                "rings": self.communities.rings,
                "every_ring_found": self.communities.every_ring_found,
            },
            "planted": dict(Counter(self.truth.planted.values())),
            "tally": self.tally.as_json(),
        }


# -- the clock ------------------------------------------------------------------------------------


class SimClock:
    """The simulated now; ``installed()`` makes ``models.utcnow`` (and so every column default and every
    ``utcnow()`` of the app) and the WeChat simulator's ``success_time`` read it."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def to(self, at: datetime) -> None:
        self.now = max(self.now, at)

    @contextmanager
    def installed(self) -> Iterator[SimClock]:
        import models.base

        sim_pay = simulator_module("wechat.sim.pay")
        clock = self

        class ClockedDatetime(datetime):
            @classmethod
            def now(cls, tz=None):  # noqa: ANN001, ANN206 - datetime.now's own signature
                return clock.now.astimezone(tz) if tz is not None else clock.now.replace(tzinfo=None)

        patched = [(models.base, models.base.datetime), (sim_pay, sim_pay.datetime)]
        for module, _ in patched:
            module.datetime = ClockedDatetime
        try:
            yield self
        finally:
            for module, original in patched:
                module.datetime = original


def simulator_module(name: str):
    """A module of the WeChat simulator, as the app factory loaded it (simulator mode; only the factory imports
    the simulator, so the simulation finds it loaded rather than importing it)."""
    module = sys.modules.get(name)
    if module is None:
        raise RuntimeError(f"{name} is not loaded: the simulation runs only on an app in simulator mode")
    return module


# -- the world --------------------------------------------------------------------------------------


@dataclass
class Shop:
    merchant_id: int
    campaign_id: int  # its self-serve packet campaign (merchant-issued, merchant-funded)
    min_spend_fen: int
    products: list[dict]  # {"id", "price_fen"}
    ring: bool = False
    staff_token: str = ""


def app_settings(database_url: str) -> dict[str, Any]:
    return {
        "DATABASE_URL": database_url,
        "WECHAT_MODE": "simulator",
        "SECRET_KEY": secrets.token_urlsafe(32),
        "DATA_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "LOG_LEVEL": "ERROR",  # the table is the output; a warning per app (no REDIS_URL) is noise here
        "WECHAT_SIM_NOTIFY_DELAY_S": 0,
        "WECHAT_RETRY_BACKOFF_S": 0,
    }


@contextmanager
def throwaway_app(create_app: Callable, database_url: str | None) -> Iterator[Any]:
    """The app on an empty database of its own: a temporary SQLite file, or a PostgreSQL database created beside
    ``database_url``'s (its user may create databases) and dropped afterwards, ``WITH (FORCE)``: nothing else is
    touched (the simulator keeps its records in a schema of the app's database, so a schema would not do)."""
    if database_url is None:
        with tempfile.TemporaryDirectory(prefix="risk-sim-") as tmp:
            yield _built(create_app, f"sqlite:///{tmp}/sim.db")
        return
    from sqlalchemy import create_engine, make_url, text

    name = f"risk_sim_{os.getpid()}_{secrets.token_hex(3)}"
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield _built(create_app, url)
    finally:
        # the simulator's store (its schema wechat_sim) is in there too
        simulator_module("wechat.sim.store").shared_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _built(create_app: Callable, url: str):
    holder: dict = {}

    def post_into_app(target: str, headers: dict, body: bytes) -> int:
        return holder["app"].test_client().post(urlsplit(target).path, data=body, headers=headers).status_code

    app = create_app({**app_settings(url), "WECHAT_SIM_NOTIFY_TRANSPORT": post_into_app})
    holder["app"] = app
    from sqlalchemy import event

    from models import db

    with app.app_context():
        if db.engine.dialect.name == "sqlite":  # a throw-away file: a commit need not wait for the disk (WAL mode)

            @event.listens_for(db.engine, "connect")
            def no_fsync_per_commit(dbapi_connection, _record) -> None:
                dbapi_connection.execute("PRAGMA synchronous=NORMAL")

            db.engine.dispose()
        db.create_all()
        db.session.remove()
    return app


class Simulation:
    """One run: the set-up, the people's scripts merged by time, the verdicts read back."""

    def __init__(self, app, config: SimConfig, clock: SimClock) -> None:
        self.app, self.config, self.clock = app, config, clock
        self.client = app.test_client()
        self.rng = random.Random(config.seed)
        self.truth, self.tally = Truth(), Tally()
        self.shops: list[Shop] = []
        self.admin_token = ""
        self.registration_campaign_id = 0
        self._n = itertools.count(1)
        self.user_ids: dict[str, int] = {}
        self.simulator = app.extensions["wechat"].simulator

    # -- set-up through the models (a demo-like floor) --

    def setup(self) -> None:
        from models import Campaign, CampaignRules, Merchant, Operator, Product, db
        from models.operators import issue_operator_token
        from models.triggers import TriggerKind
        from rebate.deposits import top_up
        from rebate.rules import Form

        rng = random.Random(self.rng.getrandbits(64))
        with self.app.app_context():
            admin = Operator(username="sim-admin", display_name="Simulation admin", role="admin")
            db.session.add(admin)
            db.session.flush()
            self.admin_token = issue_operator_token(admin, label="sim")
            shop_count = 4 + self.config.rings
            for i in range(shop_count):
                ring = i >= 4
                merchant = Merchant(name=f"{'ring ' if ring else ''}shop {i + 1}")
                db.session.add(merchant)
                db.session.flush()
                prices = sorted(rng.randrange(8_00, 160_00, 10) for _ in range(8))
                products = [
                    Product(merchant_id=merchant.id, name=f"item {i + 1}.{j + 1}", category="food", price_fen=p)
                    for j, p in enumerate(prices)
                ]
                db.session.add_all(products)
                top_up(merchant.id, 1_000_000_00, f"sim-{i}", "the shop's marketing deposit (simulation)")
                min_spend = rng.choice((60_00, 80_00, 100_00))
                campaign = Campaign(
                    name=f"{merchant.name}: spend {min_spend // 100} get 10 off",
                    status="active",
                    issuer_type="merchant",
                    issuer_merchant_id=merchant.id,
                    funder_type="merchant_deposit",
                    funder_merchant_id=merchant.id,
                    budget_limit_fen=1_000_000_00,
                    packet_amount_fen=10_00,
                    packet_min_spend_fen=min_spend,
                    packet_merchant_id=merchant.id,
                    packet_valid_days=14,
                    trigger={"kind": TriggerKind.CLAIM},
                    # A colluding shop sets its own limits generously; the others keep a few a person.
                    claim_limits={"per_person": 60 if ring else 3, "per_ip_per_day": None, "min_interval_seconds": 60},
                )
                db.session.add(campaign)
                db.session.flush()
                rules = {
                    "roles": [
                        {"role": "issuer", "rate_bps": 1000, "form": Form.MERCHANT_CREDIT, "cap_fen": 100_00},
                        {"role": "consumer", "rate_bps": 500, "form": Form.BALANCE, "cap_fen": 50_00},
                    ]
                }
                db.session.add(CampaignRules(campaign_id=campaign.id, version=1, rules=rules))
                shop = Shop(merchant.id, campaign.id, min_spend, [], ring=ring)
                if ring:
                    staff = Operator(
                        username=f"sim-staff-{i}",
                        display_name="Shop staff",
                        role="merchant_staff",
                        merchant_id=merchant.id,
                    )
                    db.session.add(staff)
                    db.session.flush()
                    shop.staff_token = issue_operator_token(staff, label="sim")
                db.session.flush()
                shop.products = [{"id": p.id, "price_fen": p.price_fen} for p in products]
                self.shops.append(shop)
            newcomer = Campaign(
                name="Newcomer: spend 50 get 10 off, 8% back",
                status="active",
                issuer_type="platform",
                funder_type="platform_fund",
                budget_limit_fen=1_000_000_00,
                packet_amount_fen=10_00,
                packet_min_spend_fen=50_00,
                packet_valid_days=14,
                trigger={"kind": TriggerKind.REGISTRATION},
            )
            db.session.add(newcomer)
            db.session.flush()
            rules = {"roles": [{"role": "consumer", "rate_bps": 800, "form": Form.BALANCE, "cap_fen": 20_00}]}
            db.session.add(CampaignRules(campaign_id=newcomer.id, version=1, rules=rules))
            self.registration_campaign_id = newcomer.id
            db.session.commit()
            db.session.remove()

    # -- HTTP --

    def call(self, method: str, path: str, ip: str, *, token=None, device=None, json=None, key=None, operator=False):
        self.clock.advance(0.2)  # the network and the server's time
        self.tally.requests += 1
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if device is not None and device.token:
            headers["X-Device-Token"] = device.token
        if key:
            headers["Idempotency-Key"] = key
        return self.client.open(path, method=method, json=json, headers=headers, environ_base={"REMOTE_ADDR": ip})

    def new_device(self, ip: str, token: str) -> str | None:
        answer = self.call("POST", "/api/v1/devices", ip, token=token)
        return answer.json["device_token"] if answer.status_code == 201 else None

    def login(self, name: str, ip: str, device: Device | None, population: str) -> tuple[str, dict | None]:
        answer = self.call("POST", "/api/v1/auth/login", ip, device=device, json={"code": f"code-{name}"})
        if answer.status_code != 200:
            raise RuntimeError(f"login of {name} answered {answer.status_code}: {answer.get_data(as_text=True)}")
        token = answer.json["token"]
        self.user_ids[token] = answer.json["user"]["id"]
        if device is not None and device.token is None:  # the app asks for its device token once signed in
            device.token = self.new_device(ip, token)
        packets = self.call("GET", "/api/v1/me/red-packets", ip, token=token).json["items"]
        newcomer = next((p for p in packets if p["campaign_id"] == self.registration_campaign_id), None)
        self.tally.registration_packets[(population, "granted" if newcomer else "refused")] += 1
        return token, newcomer

    def events(self, ip: str, token: str, device: Device | None, events: list[dict]) -> None:
        """The mini-program's trail, best effort: a missing or refusing endpoint is counted, not fatal."""
        if events:
            answer = self.call("POST", "/api/v1/events", ip, token=token, device=device, json={"events": events})
            self.tally.events[answer.status_code] += 1

    def claim(self, shop: Shop, ip: str, token: str, device: Device | None, population: str) -> dict | None:
        answer = self.call(
            "POST", f"/api/v1/campaigns/{shop.campaign_id}/claim", ip, token=token, device=device, key=self.key()
        )
        if answer.status_code == 201:
            self.tally.claims[(population, "granted")] += 1
            return answer.json
        code = (answer.json or {}).get("error", str(answer.status_code))
        self.tally.claims[(population, f"refused:{code}")] += 1
        return None

    def order(self, ip, token, device, lines: list[tuple[int, int]], packet: dict | None, population: str):
        body: dict = {"lines": [{"product_id": p, "quantity": q} for p, q in lines]}
        if packet:
            body["red_packet_id"] = packet["id"]
        answer = self.call("POST", "/api/v1/orders", ip, token=token, device=device, json=body, key=self.key())
        if answer.status_code != 201 or not answer.json.get("payment"):
            self.tally.orders[(population, "failed")] += 1
            return None
        self.tally.orders[(population, "created")] += 1
        return answer.json

    def pay(self, ip: str, order: dict, population: str) -> bool:
        path = urlsplit(order["payment"]["simulator_checkout_url"]).path
        self.clock.advance(1)
        answer = self.client.post(path, headers={"Accept": "application/json"}, environ_base={"REMOTE_ADDR": ip})
        if answer.status_code != 200 or answer.json.get("trade_state") != "SUCCESS":
            self.tally.orders[(population, "checkout_failed")] += 1
            return False
        if not self.simulator.dispatcher.wait_idle(30):
            raise RuntimeError("the simulator's payment notification was not delivered within 30 s")
        self.tally.orders[(population, "paid")] += 1
        return True

    def refund(self, order: dict) -> None:
        answer = self.call(
            "POST",
            f"/admin/api/orders/{order['id']}/refunds",
            "192.0.2.1",
            token=self.admin_token,
            json={"amount_fen": order["payable_fen"], "reason": "customer changed their mind"},
            key=self.key(),
        )
        if answer.status_code == 201:
            self.tally.refunds += 1
            self.simulator.dispatcher.wait_idle(30)

    def key(self) -> str:
        return f"sim-{next(self._n)}"

    # -- the people (generators: each yields the simulated time it continues at) --

    def honest(self, n: int, family: dict | None, rng: random.Random) -> Iterator[datetime]:
        span = self.config.days * 86_400
        yield START + timedelta(seconds=rng.uniform(0, span * 0.7))
        ip = family["ip"] if family else f"10.{(n >> 8) & 255}.{n & 255}.{rng.randrange(2, 250)}"
        device = family.get("device") if family else None
        if device is None:
            device = Device()
            if family is not None:
                family["device"] = device
        token, newcomer = self.login(f"honest-{n}", ip, device, "honest")
        favourite = rng.choice(self.shops)
        for visit in range(rng.choice((1, 1, 2, 2, 3))):
            if visit:
                yield self.clock.now + timedelta(hours=rng.uniform(6, 60))
            shop = favourite if rng.random() < 0.6 else rng.choice(self.shops)
            browsed = yield from self.browse(shop, ip, token, device, rng, rng.randrange(3, 16))
            if rng.random() < 0.25:
                continue  # only looked
            basket = basket_of(browsed, rng)
            total = sum(price * q for (_, price), q in basket)
            packet = None
            if newcomer and total >= 50_00 and rng.random() < 0.7:
                packet, newcomer = newcomer, None
            elif rng.random() < 0.35:
                yield self.clock.now + timedelta(seconds=rng.uniform(5, 40))
                claimed = self.claim(shop, ip, token, device, "honest")
                if claimed and total < shop.min_spend_fen:  # a little more to reach the minimum, as people do
                    extra = min(shop.products, key=lambda p: abs(p["price_fen"] - (shop.min_spend_fen - total)))
                    basket.append(((extra["id"], extra["price_fen"]), 1))
                    total += extra["price_fen"]
                packet = claimed if claimed and total >= shop.min_spend_fen else None
            yield self.clock.now + timedelta(seconds=rng.uniform(20, 240))
            order = self.order(ip, token, device, [(pid, q) for (pid, _), q in merged(basket)], packet, "honest")
            if order is None:
                continue
            yield self.clock.now + timedelta(seconds=rng.uniform(10, 120))
            if self.pay(ip, order, "honest"):
                self.truth.honest.add(order["out_trade_no"])
                if rng.random() < 0.03:
                    yield self.clock.now + timedelta(hours=rng.uniform(2, 48))
                    self.refund(order)

    def browse(self, shop: Shop, ip, token, device, rng: random.Random, views: int):
        """Views with dwell, searches, comparisons, cart changes; the trail posted as the app would, a few at a time."""
        pending: list[dict] = [{"kind": "page", "path": f"/pages/shop?id={shop.merchant_id}", "dwell_ms": 4_000}]
        if rng.random() < 0.5:
            pending.append({"kind": "search", "query": rng.choice(SEARCHES)})
        seen: list[tuple[int, int]] = []
        for _ in range(views):
            product = rng.choice(shop.products)
            dwell = int(rng.uniform(4, 90) * 1000)
            pending.append({"kind": "view", "product_id": product["id"], "dwell_ms": dwell})
            seen.append((product["id"], product["price_fen"]))
            roll = rng.random()
            if roll < 0.15 and len(seen) > 1:
                pending.append({"kind": "compare", "product_id": product["id"]})
            elif roll < 0.35:
                pending.append({"kind": "cart_add", "product_id": product["id"]})
            elif roll < 0.4:
                pending.append({"kind": "cart_remove", "product_id": product["id"]})
            elif roll < 0.43:
                pending.append({"kind": "share", "product_id": product["id"]})
            if len(pending) >= 3:
                self.events(ip, token, device, pending)
                pending = []
            yield self.clock.now + timedelta(milliseconds=dwell)
        self.events(ip, token, device, pending)
        return seen

    def click_farm(self, n: int, farm: dict, rng: random.Random) -> Iterator[datetime]:
        yield farm["start"] + timedelta(seconds=n * rng.uniform(40, 120))
        ip, device = rng.choice(farm["ips"]), rng.choice(farm["devices"])
        token, newcomer = self.login(f"farm-{n}", ip, device, "click_farm")
        shop = farm["shop"]
        cheapest = cheapest_at_least(shop.products, shop.min_spend_fen)
        if rng.random() < 0.4:
            self.events(ip, token, device, [{"kind": "view", "product_id": cheapest[0][0], "dwell_ms": 1_200}])
        packet = self.claim(shop, ip, token, device, "click_farm")
        if packet is None and newcomer is not None:  # refused: the newcomer packet will do
            packet, cheapest = newcomer, cheapest_at_least(shop.products, max(shop.min_spend_fen, 50_00))
        yield self.clock.now + timedelta(seconds=rng.uniform(2, 10))
        order = self.order(ip, token, device, cheapest, packet, "click_farm")
        if order is None:
            return
        yield self.clock.now + timedelta(seconds=rng.uniform(3, 15))
        if self.pay(ip, order, "click_farm"):
            self.truth.plant("click_farm", f"farm-{n}", order, packet is not None)

    def ring_member(self, shop: Shop, ring: dict, n: int, rng: random.Random) -> Iterator[datetime]:
        yield START + timedelta(hours=rng.uniform(1, 20))
        ip, device = ring["ip"], ring["devices"][n % len(ring["devices"])]
        population = "ring"
        token, _ = self.login(f"ring-{shop.merchant_id}-{n}", ip, device, population)
        ring["truth"].user_ids.append(self.user_ids[token])
        lines = cheapest_at_least(shop.products, shop.min_spend_fen)
        day = 0
        while True:
            if rng.random() < 0.3:
                self.events(ip, token, device, [{"kind": "view", "product_id": lines[0][0], "dwell_ms": 2_000}])
            packet = self.claim(shop, ip, token, device, population)
            if packet is not None:
                yield self.clock.now + timedelta(seconds=rng.uniform(5, 60))
                order = self.order(ip, token, device, lines, packet, population)
                if order is not None:
                    yield self.clock.now + timedelta(seconds=rng.uniform(5, 40))
                    if self.pay(ip, order, population):
                        self.truth.plant("ring", f"ring-{shop.merchant_id}-{n}", order, True)
            day += 1
            if day >= self.config.days:
                return
            yield START + timedelta(days=day, hours=rng.uniform(1, 20))

    def staff(self, shop: Shop, ring: dict, rng: random.Random) -> Iterator[datetime]:
        """The shop's staff at work from the shop's address and device: reading its campaigns and orders daily."""
        for day in range(self.config.days):
            yield START + timedelta(days=day, hours=rng.uniform(0, 2))
            self.call(
                "GET", "/admin/api/campaigns?limit=50", ring["ip"], token=shop.staff_token, device=ring["devices"][0]
            )

    def sybil(self, n: int, nest: dict, rng: random.Random) -> Iterator[datetime]:
        burst = max(1, self.config.sybils * 2 // 5)  # the first 40 % register in a burst, the rest patiently
        if n < burst:
            yield nest["start"] + timedelta(seconds=n * 90)
        else:
            gap = (self.config.days - 1) * 86_400 / max(1, self.config.sybils - burst)
            yield nest["start"] + timedelta(days=1, seconds=(n - burst) * gap)
        ip, device = rng.choice(nest["ips"]), rng.choice(nest["devices"])
        token, newcomer = self.login(f"sybil-{n}", ip, device, "sybil")
        if newcomer is None:
            return  # the limits refused its packet: nothing to spend
        shop = rng.choice(self.shops[:4])
        lines = cheapest_at_least(shop.products, newcomer["min_spend_fen"])
        yield self.clock.now + timedelta(seconds=rng.uniform(3, 20))
        order = self.order(ip, token, device, lines, newcomer, "sybil")
        if order is None:
            return
        yield self.clock.now + timedelta(seconds=rng.uniform(3, 15))
        if self.pay(ip, order, "sybil"):
            self.truth.plant("sybil", f"sybil-{n}", order, True)

    # -- the run --

    def people(self) -> list[Iterator[datetime]]:
        cfg, rng = self.config, self.rng
        scripts: list[Iterator[datetime]] = []
        families: list[dict] = []
        for n in range(cfg.honest):
            family = None
            if rng.random() < 0.15:  # families of two share a device and an address
                if families and families[-1]["size"] < 2:
                    family = families[-1]
                else:
                    family = {"ip": f"10.200.{len(families) // 250}.{len(families) % 250 + 2}", "size": 0}
                    families.append(family)
                family["size"] += 1
            scripts.append(self.honest(n, family, random.Random(rng.getrandbits(64))))
        farm_rng = random.Random(rng.getrandbits(64))
        farm = {
            "shop": farm_rng.choice(self.shops[:4]),
            "ips": [f"172.16.9.{i}" for i in range(2, 5)],
            "start": START + timedelta(days=1, hours=2),
        }
        farm["devices"] = [self._device_at(farm["ips"][i % 3]) for i in range(4)]
        for n in range(cfg.farm_accounts):
            scripts.append(self.click_farm(n, farm, random.Random(rng.getrandbits(64))))
        for r, shop in enumerate(s for s in self.shops if s.ring):
            ring = {"ip": f"100.64.{r}.7", "truth": RingTruth(shop.merchant_id)}
            ring["devices"] = [self._device_at(ring["ip"]) for _ in range(2)]
            self.truth.rings.append(ring["truth"])
            scripts.append(self.staff(shop, ring, random.Random(rng.getrandbits(64))))
            for n in range(cfg.ring_members):
                scripts.append(self.ring_member(shop, ring, n, random.Random(rng.getrandbits(64))))
        nest = {"ips": ["198.51.100.23", "198.51.100.24"], "start": START + timedelta(hours=3)}
        nest["devices"] = [self._device_at(nest["ips"][i % 2]) for i in range(3)]
        for n in range(cfg.sybils):
            scripts.append(self.sybil(n, nest, random.Random(rng.getrandbits(64))))
        return scripts

    def _device_at(self, ip: str) -> Device:
        return Device()

    def play(self, progress: Callable[[int], None] = lambda _: None) -> None:
        """Every script's steps in time order (ties in the order the scripts were made)."""
        queue: list[tuple[datetime, int, Iterator[datetime]]] = []
        for seq, script in enumerate(self.people()):
            first = next(script, None)
            if first is not None:
                heapq.heappush(queue, (first, seq, script))
        while queue:
            at, seq, script = heapq.heappop(queue)
            self.clock.to(at)
            following = next(script, None)
            if following is None:
                progress(1)
            else:
                heapq.heappush(queue, (following, seq, script))

    def ledger(self) -> list[str]:
        """``flask ledger check``'s violations after the run (none expected, whatever the verdicts held)."""
        from ledger import check_ledger
        from models import db

        with self.app.app_context():
            report = check_ledger(self.app.config["POINT_VALUE_FEN"])
            db.session.remove()
        return list(report.violations)

    def verdicts(self) -> dict[str, str | None]:
        from sqlalchemy import select

        from models import Order, db

        with self.app.app_context():
            rows = db.session.execute(
                select(Order.out_trade_no, Order.risk_decision).where(Order.paid_at.is_not(None))
            ).all()
            db.session.remove()
        return {row.out_trade_no: row.risk_decision for row in rows}

    def communities(self) -> Communities:
        """Run the collusion job's finding on the simulated world (in one transaction, with the app's settings)."""
        with self.app.app_context():
            config = self.app.config
            settings = GraphSettings(days=config["RISK_GRAPH_DAYS"], threshold=config["RISK_COMMUNITY_THRESHOLD"])
            find_communities(self.clock.now, settings)
            db.session.commit()
            found = db.session.execute(select(RiskCommunity.members, RiskCommunity.suspicious)).all()
            db.session.remove()
        rings = []
        for ring in self.truth.rings:
            holding = [suspicious for members, suspicious in found if ring.members() <= set(members)]
            rings.append("suspicious" if any(holding) else "together" if holding else "apart")
        return Communities(True, f"{len(found)} communities, {sum(s for _, s in found)} suspicious", rings)


def scoring_present() -> bool:
    try:
        from risk import scoring
    except ImportError:
        return False
    return hasattr(scoring, "score_order")


# -- baskets ------------------------------------------------------------------------------------------


def basket_of(browsed: list[tuple[int, int]], rng: random.Random) -> list[tuple[tuple[int, int], int]]:
    """One to three of the products looked at, a few of some."""
    chosen = rng.sample(sorted(set(browsed)), k=min(len(set(browsed)), rng.choice((1, 1, 2, 3))))
    return [(item, rng.choice((1, 1, 1, 2, 3))) for item in chosen]


def merged(basket: list[tuple[tuple[int, int], int]]) -> list[tuple[tuple[int, int], int]]:
    total: Counter = Counter()
    for item, quantity in basket:
        total[item] += quantity
    return sorted(total.items())


def cheapest_at_least(products: list[dict], minimum: int) -> list[tuple[int, int]]:
    """The (product, quantity) lines of the smallest total at or above ``minimum``: one product up to 9 times,
    or two different products once each (what someone gaming a minimum spend orders)."""
    options: list[tuple[int, list[tuple[int, int]]]] = []
    for p in products:
        quantity = max(1, -(-minimum // p["price_fen"]))
        if quantity <= 9:
            options.append((p["price_fen"] * quantity, [(p["id"], quantity)]))
    for a, b in itertools.combinations(products, 2):
        if a["price_fen"] + b["price_fen"] >= minimum:
            options.append((a["price_fen"] + b["price_fen"], sorted([(a["id"], 1), (b["id"], 1)])))
    return min(options)[1]


# -- one call for the CLI, the bench and the tests ---------------------------------------------------------


def run(
    config: SimConfig,
    create_app: Callable,
    progress: Callable[[int], None] = lambda _: None,
    *,
    hook: Callable | None = None,
    phase: Callable[[str], None] = lambda _: None,
) -> Result:
    """The whole simulation on an app of its own made by ``create_app`` (app.py's factory: the shell passes it in,
    as application code never imports app.py); ``hook(app, simulation)`` runs after the play, before the app
    goes (the bench's scoring cost); ``phase`` hears of each phase in words (the CLI prints them on stderr)."""
    started = time.perf_counter()
    phase("making a throw-away database")
    with throwaway_app(create_app, config.database_url) as app:
        try:
            clock = SimClock(START)
            with clock.installed():
                sim = Simulation(app, config, clock)
                phase("setting up the shops, campaigns and people")
                sim.setup()
                phase(f"playing {population_size(config)} scripts over {config.days} simulated days")
                sim.play(progress)
                phase("reading the verdicts")
                decisions = sim.verdicts()
                phase("finding communities")
                communities = sim.communities()
                phase("checking the ledger")
                ledger = sim.ledger()
                if hook is not None:
                    hook(app, sim)
        finally:
            app.extensions["wechat"].simulator.dispatcher.stop()
            with app.app_context():
                from models import db

                db.session.remove()
                db.engine.dispose()
    return Result(
        config,
        sim.truth,
        sim.tally,
        metrics(decisions, sim.truth.planted),
        communities,
        time.perf_counter() - started,
        scoring_present(),
        ledger,
    )


def population_size(config: SimConfig) -> int:
    """How many scripts a run plays (the progress bar's length)."""
    rings = config.rings * (config.ring_members + 1)
    return config.honest + config.farm_accounts + rings + config.sybils


def report_lines(result: Result) -> list[str]:
    """The final table, in words and figures."""
    m, c = result.metrics, result.communities
    pct = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"seed {result.config.seed}: {m.paid} paid orders ({m.honest_paid} honest, {m.planted_paid} planted) "
        f"in {result.seconds:.1f} s",
        f"  verdicts: {', '.join(f'{k} {v}' for k, v in sorted(m.decisions.items()))}"
        + ("" if result.scoring_present else "  (risk.scoring.score_order not present: no order is scored)"),
        "  metric                     value   goal",
        f"  precision                  {pct(m.precision):>6}  >= {GOALS['precision']}",
        f"  recall                     {pct(m.recall):>6}  >= {GOALS['recall']}",
    ]
    for kind, value in m.recall_by_kind.items():
        lines.append(f"  recall, {kind:<18} {pct(value):>6}")
    lines.append(f"  honest false-positive rate {pct(m.honest_false_positive_rate):>6}")
    lines.append(f"  TP {m.tp}  FP {m.fp}  FN {m.fn}  TN {m.tn}  unscored {m.unscored}")
    if c.available:
        rings = ", ".join(c.rings)
        lines.append(f"  rings found as a suspicious community: {sum(c.found)}/{len(c.found)} ({rings}; {c.note})")
    else:
        lines.append(f"  rings found as a community: {c.note}")
    t = result.tally
    for population in ("honest", "click_farm", "ring", "sybil"):
        claims = {k[1]: v for k, v in t.claims.items() if k[0] == population}
        regs = {k[1]: v for k, v in t.registration_packets.items() if k[0] == population}
        orders = {k[1]: v for k, v in t.orders.items() if k[0] == population}
        refused = sum(v for k, v in claims.items() if k.startswith("refused"))
        lines.append(
            f"  {population:<10} claims granted {claims.get('granted', 0)}, refused {refused}; "
            f"newcomer packets granted {regs.get('granted', 0)}, refused {regs.get('refused', 0)}; "
            f"orders paid {orders.get('paid', 0)}, failed {orders.get('failed', 0)}"
        )
    lines.append(
        f"  events posted: {', '.join(f'HTTP {k} x{v}' for k, v in sorted(t.events.items())) or 'none'}"
        + ("  (the events endpoint is missing)" if set(t.events) == {404} else "")
    )
    lines.append(f"  refunds {t.refunds}; requests {t.requests}")
    violations = result.ledger_violations
    lines.append(f"  ledger check: {'ok' if not violations else f'{len(violations)} violations: {violations[:3]}'}")
    lines.append(
        ("PASS" if m.passed() else "FAIL")
        + f": precision >= {GOALS['precision']} and recall >= {GOALS['recall']}"
        + ("" if c.every_ring_found is None else f"; every planted ring found as a community: {c.every_ring_found}")
    )
    return lines
