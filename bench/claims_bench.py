"""``python -m bench claims``: claims on one hot campaign, against the empty route; then zero oversell.

Every claim is ``POST /api/v1/campaigns/<id>/claim`` by a different person (a fresh user and
token) from one self-serve campaign (trigger ``claim``, a 5.00 packet, the consumer earning 10 %
up to 10.00: 15.00 reserved per packet) whose budget is far from its limit, on gunicorn
(deploy/gunicorn.conf.py) and PostgreSQL, interleaved with the empty route. The per-network-address
claim limits are off, the platform's and the campaign's (every client is 127.0.0.1, as in
``make run``); the per-person limits stay (the platform's defaults, the campaign's one packet per
person), so each claim takes its counters.

Then oversell: a campaign whose budget holds exactly ``BENCH_OVERSELL_BUDGET`` packets (default 20)
gets ten times as many claims from all clients at once; exactly that many must succeed, every
other one be refused with a 4xx, and the database hold exactly that many packets and a
reservation within the limit (the line says "zero oversell" or stops the run). Then that sold-out
campaign's refusals against the empty route, as a flash sale's traffic is after the sell-out (each a 409).

Goals (issue 11): at least 0.20x the empty route, at most 4 SQL statements per claim operation. Measured twice:
without, then with an ``Idempotency-Key`` on every claim (each its own, as a client that retries sends).
The statements printed are those of the whole HTTP request (the token's user, the commit
included), counted in-process on the same data, after one claim (a server process that has read the campaign
before: on PostgreSQL its claims are then one statement, ``rebate/claim_at_once.py``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

from bench import harness
from bench.harness import BenchWeChat, Clients, CpuMeter, Figures, Request, Server, ServerShape

ROUNDS = harness.env_int("BENCH_ROUNDS", 6)
ROUND_S = harness.env_float("BENCH_ROUND_SECONDS", 2.0)
CLIENTS = harness.env_int("BENCH_CLIENTS", 4)
OVERSELL_BUDGET = harness.env_int("BENCH_OVERSELL_BUDGET", 20)
PACKET_FEN = 5_00
RULES = {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "wechat_change", "cap_fen": 10_00}]}
RESERVED_FEN = PACKET_FEN + 10_00  # face value + the largest rebate
# The campaign's own limits: one packet per person; none per network address (all clients are 127.0.0.1).
CAMPAIGN_LIMITS = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": 1, "per_person_per_day": None}
CLAIM_SETTINGS = {"CLAIM_IP_PER_DAY": "0", "CLAIM_IP_INTERVAL_SECONDS": "0"}


def run() -> Iterator[str]:
    url = harness.database_url()
    if not url:
        yield "claims: skipped (set BENCH_DATABASE_URL=postgresql+psycopg://… : it measures gunicorn on PostgreSQL)"
        return
    yield from ClaimsBench(url).run()


class People:
    """Fresh users with their bearer tokens, made in this process."""

    def __init__(self, app) -> None:
        self.app = app
        self.tokens: list[str] = []

    def take(self, count: int) -> list[str]:
        if len(self.tokens) < count:
            self.make(count - len(self.tokens) + 200)
        taken, self.tokens = self.tokens[:count], self.tokens[count:]
        return taken

    def give_back(self, tokens: list[str]) -> None:
        self.tokens[:0] = tokens

    def make(self, count: int) -> None:
        from models import User, db
        from web.auth import issue_user_token

        with self.app.app_context():
            users = [User() for _ in range(count)]
            db.session.add_all(users)
            db.session.commit()
            self.tokens += [issue_user_token(u, "mini_program") for u in users]


def campaign(app, budget_fen: int, name: str) -> int:
    from models import Campaign, CampaignRules, db

    with app.app_context():
        c = Campaign(
            name=name,
            status="active",
            issuer_type="platform",
            funder_type="platform_fund",
            budget_limit_fen=budget_fen,
            packet_amount_fen=PACKET_FEN,
            trigger={"kind": "claim"},
            claim_limits=CAMPAIGN_LIMITS,
        )
        db.session.add(c)
        db.session.flush()
        db.session.add(CampaignRules(campaign_id=c.id, version=1, rules=RULES))
        db.session.commit()
        return c.id


def claims(campaign_id: int, tokens: list[str], keyed: bool = False) -> list[Request]:
    """A claim per token; ``keyed``: each with an ``Idempotency-Key`` of its own (as a retrying client sends)."""
    path = f"/api/v1/campaigns/{campaign_id}/claim"
    out = []
    for t in tokens:
        headers = {"Authorization": f"Bearer {t}", "Content-Type": "application/json"}
        if keyed:
            headers["Idempotency-Key"] = secrets.token_hex(8)
        out.append(("POST", path, b"{}", headers))
    return out


class ClaimsBench:
    def __init__(self, url: str) -> None:
        self.url = url
        self.shape = ServerShape.from_env()

    def run(self) -> Iterator[str]:
        clients = Clients(CLIENTS)
        try:
            with harness.workspace() as tmp, harness.ThrowAwayDatabase(self.url, "claims") as database:
                self.database = database
                settings = harness.app_settings(database.url, BenchWeChat(tmp), **CLAIM_SETTINGS)
                harness.migrate(settings)
                app = harness.in_process_app(settings)
                people = People(app)
                hot = campaign(app, 10**12, "hot")
                with Server(settings, self.shape, tmp) as server:
                    for keyed, name in ((False, "claims on one hot campaign"), (True, "the same, keyed")):
                        meter = CpuMeter(server, database.name)
                        empty, real = self.measure(clients, server, people, hot, meter, keyed)
                        statements = self.statements(app, people, hot, keyed)
                        extra = f"; {statements} SQL statements per claim request"
                        yield harness.ratio_line(name, self.shape, CLIENTS, empty, real, extra)
                    line, small = self.oversell(app, clients, server, people)
                    yield line
                    meter = CpuMeter(server, database.name)
                    empty, real = self.measure(clients, server, people, small, meter, expected=409)
                    name = "refused after the sell-out (409)"
                    yield harness.ratio_line(name, self.shape, CLIENTS, empty, real, "")
                with app.app_context():
                    from models import db

                    db.engine.dispose()
        finally:
            clients.close()

    def measure(
        self,
        clients: Clients,
        server: Server,
        people: People,
        hot: int,
        meter: CpuMeter,
        keyed: bool = False,
        expected: int = 201,
    ) -> tuple[Figures, Figures]:
        warm = clients.each(server.port, claims(hot, people.take(50), keyed), 60)
        harness.check_statuses(Figures("warm-up", [warm]), {expected})
        self.database.analyze()  # as autovacuum would have
        estimate = 100.0
        empty, real = Figures("empty"), Figures("claims")
        for _ in range(ROUNDS):
            empty.measured(meter, lambda: clients.repeat(server.port, harness.empty_request(), ROUND_S))
            tokens = people.take(int(estimate * ROUND_S * 1.5) + 4 * CLIENTS)  # made before the metered round
            requests = claims(hot, tokens, keyed)
            r = real.measured(meter, lambda: clients.each(server.port, requests, ROUND_S))  # noqa: B023 - called at once
            people.give_back([t for i, t in enumerate(tokens) if i not in r.sent])
            estimate = max(estimate, r.answered / r.seconds)
        harness.check_statuses(real, {expected})
        harness.check_statuses(empty, {204})
        return empty, real

    def statements(self, app, people: People, hot: int, keyed: bool = False) -> int:
        """The statements of one claim, after one more (a server's process has read the campaign before)."""
        (warm, (method, path, body, headers)) = claims(hot, people.take(2), keyed)
        with app.app_context():
            from models import db

            client = app.test_client()
            client.open(warm[1], method=warm[0], data=warm[2], headers=warm[3])
            with harness.counted(db.engine) as statements:
                response = client.open(path, method=method, data=body, headers=headers)
            if response.status_code != 201:
                raise RuntimeError(f"in-process claim answered {response.status_code}: {response.data!r}")
        return len(statements)

    def oversell(self, app, clients: Clients, server: Server, people: People) -> tuple[str, int]:
        """Ten times more claims than the budget holds, all clients at once: exactly the budget's packets. The
        line, and the campaign (sold out)."""
        from sqlalchemy import func, select

        from ledger import check_ledger
        from models import Campaign, RedPacket, db

        small = campaign(app, OVERSELL_BUDGET * RESERVED_FEN, "small")
        asked = 10 * OVERSELL_BUDGET
        done = clients.each(server.port, claims(small, people.take(asked)), 120)
        statuses = done.statuses
        server_errors = {s: n for s, n in statuses.items() if s >= 500}
        with app.app_context():
            packets = db.session.execute(select(func.count()).where(RedPacket.campaign_id == small)).scalar_one()
            c = db.session.get(Campaign, small)
            reserved, limit = c.budget_reserved_fen + c.budget_committed_fen, c.budget_limit_fen
            report = check_ledger()
            db.session.rollback()
        granted = statuses.get(201, 0)
        if server_errors or granted != OVERSELL_BUDGET or packets != OVERSELL_BUDGET or reserved > limit:
            raise RuntimeError(
                f"oversell check failed: answers {dict(statuses)}, {packets} packets, reserved {reserved} of {limit}"
            )
        if not report.ok:
            raise RuntimeError("ledger check failed after the claims:\n" + "\n".join(report.violations))
        refused = ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items()) if s != 201)
        return (
            f"claims oversell check: {asked} claims at once for a budget of {OVERSELL_BUDGET} packets → "
            f"{granted} granted ({refused}), {packets} packets, {reserved} of {limit} fen reserved: zero oversell"
        ), small
