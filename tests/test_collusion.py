"""Collusion: the graph's communities, their scores, one case per suspicious community (SQLite and PostgreSQL)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
from sqlalchemy import func, select

from models import (
    Campaign,
    Merchant,
    Order,
    Rebate,
    RedPacket,
    ReviewCase,
    RiskCommunity,
    RiskIdentifier,
    User,
    db,
)
from risk.communities import GraphSettings, build_graph, find_communities, score_graph
from tests.concurrency import together

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SETTINGS = GraphSettings()
_n = count(1)


class World:
    """Rows written straight to the tables (the graph reads only them): shops, shoppers, a ring."""

    def __init__(self, now: datetime = NOW, seed: int = 7):
        self.now = now
        self.rng = random.Random(seed)
        self.campaigns: dict[int, Campaign] = {}
        self.orders: list[dict] = []
        self.packets: list[dict] = []
        self.rebates: list[dict] = []

    def merchant(self) -> Merchant:
        m = Merchant(name=f"shop-{next(_n)}")
        db.session.add(m)
        db.session.flush()
        c = Campaign(
            name=f"c-{m.id}",
            issuer_type="merchant",
            issuer_merchant_id=m.id,
            funder_type="merchant_deposit",
            funder_merchant_id=m.id,
            status="active",
        )
        db.session.add(c)
        db.session.flush()
        self.campaigns[m.id] = c
        return m

    def user(self, age_days: float, inviter: User | None = None) -> User:
        u = User(created_at=self.now - timedelta(days=age_days), inviter_id=inviter.id if inviter else None)
        db.session.add(u)
        db.session.flush()
        return u

    def seen(self, owner, kind: str, value: str) -> None:
        owner_type = "merchant" if isinstance(owner, Merchant) else "user"
        db.session.add(
            RiskIdentifier(
                kind=kind,
                value=value,
                owner_type=owner_type,
                owner_id=owner.id,
                first_seen=self.now - timedelta(days=3),
                last_seen=self.now - timedelta(hours=1),
            )
        )

    def order(self, user: User, merchant: Merchant, *, packet: bool, days_ago: float, rebate_fen: int = 0) -> None:
        n = next(_n)
        paid_at = self.now - timedelta(days=days_ago)
        packet_id = None
        if packet:
            packet_id = n
            self.packets.append(
                {
                    "id": n,
                    "campaign_id": self.campaigns[merchant.id].id,
                    "rules_version": 1,
                    "issuer_type": "merchant",
                    "issuer_merchant_id": merchant.id,
                    "owner_id": user.id,
                    "amount_fen": 5_00,
                    "merchant_id": merchant.id,
                    "status": "used",
                    "expires_at": self.now + timedelta(days=30),
                    "source": "test",
                    "source_ref": str(n),
                    "order_id": n,
                    "claimed_at": paid_at - timedelta(hours=1),
                    "used_at": paid_at,
                }
            )
        self.orders.append(
            {
                "id": n,
                "out_trade_no": f"T{n}",
                "user_id": user.id,
                "merchant_id": merchant.id,
                "status": "paid",
                "total_fen": 100_00,
                "payable_fen": 100_00,
                "paid_fen": 100_00,
                "packet_id": None,  # set after the packets are in (the foreign key)
                "paid_at": paid_at,
                "time_expire": paid_at,
                "created_at": paid_at,
            }
        )
        if packet_id:
            self.orders[-1]["_packet"] = packet_id
        if rebate_fen:
            for role, kind, who in (("consumer", "user", user.id), ("merchant", "merchant", merchant.id)):
                self.rebates.append(
                    {
                        "order_id": n,
                        "campaign_id": self.campaigns[merchant.id].id,
                        "rules_version": 1,
                        "role": role,
                        "beneficiary_type": kind,
                        "beneficiary_id": who,
                        "form": "cash",
                        "status": "awarded",
                        "original_fen": rebate_fen,
                        "amount_fen": rebate_fen,
                        "reason_code": "awarded",
                        "created_at": paid_at,
                    }
                )

    def save(self) -> None:
        packets = {o["id"]: o.pop("_packet") for o in self.orders if "_packet" in o}
        db.session.execute(Order.__table__.insert(), self.orders)
        if self.packets:
            db.session.execute(RedPacket.__table__.insert(), self.packets)
        for order_id, packet_id in packets.items():
            db.session.execute(Order.__table__.update().where(Order.id == order_id).values(packet_id=packet_id))
        if self.rebates:
            db.session.execute(Rebate.__table__.insert(), self.rebates)
        db.session.commit()


def honest_shoppers(w: World, shops: list[Merchant], people: int) -> list[User]:
    """Old accounts, each on their own phone; an office of 8 shares a network address, a family a phone."""
    users = [w.user(age_days=w.rng.uniform(20, 400)) for _ in range(people)]
    for i, u in enumerate(users):
        w.seen(u, "device", f"phone-{u.id}")
        w.seen(u, "net", "10.8.0.0/24" if i < 8 else f"10.{9 + i // 200}.{i % 200}.0/24")
        for _ in range(w.rng.randint(1, 3)):
            w.order(u, w.rng.choice(shops), packet=w.rng.random() < 0.4, days_ago=w.rng.uniform(0, 29), rebate_fen=3_00)
    w.seen(users[10], "device", "family-phone")
    w.seen(users[11], "device", "family-phone")
    return users


def ring(w: World, shop: Merchant, accounts: int = 5, orders: int = 6, device: str = "ring-phone") -> list[User]:
    """Fresh accounts on one phone (the shop's staff use it too), ordering at the shop with its packets."""
    users = [w.user(age_days=w.rng.uniform(0.5, 3)) for _ in range(accounts)]
    w.seen(shop, "device", device)
    for u in users:
        w.seen(u, "device", device)
        for k in range(orders):
            w.order(u, shop, packet=k > 0, days_ago=w.rng.uniform(0, 0.4), rebate_fen=5_00)
    return users


@pytest.fixture
def world(app):
    w = World()
    shops = [w.merchant() for _ in range(3)]
    honest = honest_shoppers(w, shops, 120)
    ringers = ring(w, shops[0])
    w.save()
    return w, shops, honest, ringers


def test_a_planted_ring_is_one_community_with_one_case_and_honest_shoppers_are_not_flagged(world):
    w, shops, honest, ringers = world

    summary = find_communities(NOW, SETTINGS)
    db.session.commit()

    suspicious = db.session.execute(select(RiskCommunity).where(RiskCommunity.suspicious.is_(True))).scalars().all()
    assert len(suspicious) == 1, [(c.members, c.reasons) for c in suspicious]
    community = suspicious[0]
    users = {m for m in community.members if m.startswith("user:")}
    assert users == {f"user:{u.id}" for u in ringers}
    assert summary["cases"] == 1
    case = db.session.execute(select(ReviewCase)).scalar_one()
    assert case.kind == "community" and case.community_id == community.id
    assert case.merchant_id == shops[0].id
    # Each ring order paid 5 yuan to the buyer and 5 to the shop.
    assert case.held_fen == len(ringers) * 6 * 2 * 5_00
    words = " | ".join(case.reasons)
    assert "5 accounts share 1 device (ring-phone)" in words
    assert f"staff of merchant:{shops[0].id}" in words
    assert f"83 % of 30 orders spent a packet of merchant:{shops[0].id}" in words
    assert "5 of 5 accounts under 7 days old" in words
    flagged = {m for c in suspicious for m in c.members}
    assert not flagged & {f"user:{u.id}" for u in honest}


def test_the_ring_is_found_when_its_accounts_share_only_a_network_address_with_invites(app):
    # Sybils: fresh accounts invited by one of them, on one /24, each with its own device token.
    w = World()
    shop = w.merchant()
    honest_shoppers(w, [shop, w.merchant()], 60)
    boss = w.user(age_days=2)
    sybils = [w.user(age_days=1, inviter=boss) for _ in range(6)]
    for u in [boss, *sybils]:
        w.seen(u, "net", "172.16.5.0/24")
        w.seen(u, "device", f"emulator-{u.id}")
    for u in sybils:
        w.seen(u, "device", "emulator-shared")  # …but one emulator image leaks its token to all of them
        w.order(u, shop, packet=True, days_ago=0.2, rebate_fen=2_00)
    w.save()

    find_communities(NOW, SETTINGS)
    db.session.commit()

    community = db.session.execute(select(RiskCommunity).where(RiskCommunity.suspicious.is_(True))).scalar_one()
    assert {f"user:{u.id}" for u in sybils} <= set(community.members)
    assert any("invited by members" in r for r in community.reasons)


def test_honest_shoppers_alone_open_no_case(app):
    w = World()
    honest_shoppers(w, [w.merchant() for _ in range(3)], 150)
    w.save()

    summary = find_communities(NOW, SETTINGS)
    db.session.commit()

    assert summary["cases"] == 0
    assert db.session.execute(select(func.count(ReviewCase.id))).scalar_one() == 0
    assert db.session.execute(select(func.count(RiskCommunity.id)).where(RiskCommunity.suspicious)).scalar_one() == 0


def test_the_same_community_is_stored_and_opened_once(world):
    first = find_communities(NOW, SETTINGS)
    db.session.commit()
    again = find_communities(NOW + timedelta(hours=1), SETTINGS)
    db.session.commit()

    assert first["cases"] == 1 and again["cases"] == 0 and again["known"] >= 1
    assert db.session.execute(select(func.count(ReviewCase.id))).scalar_one() == 1
    fingerprints = db.session.execute(select(RiskCommunity.fingerprint)).scalars().all()
    assert len(fingerprints) == len(set(fingerprints))


def test_a_grown_ring_continues_its_open_case_instead_of_opening_another(world):
    w, shops, _, ringers = world
    find_communities(NOW, SETTINGS)
    db.session.commit()
    # One more account joins the phone: a new fingerprint, 6 of 7 members shared (Jaccard 0.86).
    extra = World(now=NOW, seed=9)
    extra.campaigns = w.campaigns
    newcomer = extra.user(age_days=1)
    extra.seen(newcomer, "device", "ring-phone")
    for k in range(6):
        extra.order(newcomer, shops[0], packet=k > 0, days_ago=0.1)
    extra.save()

    summary = find_communities(NOW + timedelta(hours=1), SETTINGS)
    db.session.commit()

    assert summary["continued"] == 1 and summary["cases"] == 0
    assert db.session.execute(select(func.count(ReviewCase.id))).scalar_one() == 1
    latest = db.session.execute(select(RiskCommunity).order_by(RiskCommunity.id.desc())).scalars().first()
    assert f"user:{newcomer.id}" in latest.members
    assert any(r.startswith("continues community") for r in latest.reasons)


def test_the_job_on_several_nodes_at_once_stores_and_opens_once(world, app):
    from jobs.risk import run_collusion

    results = together(3, lambda i: run_collusion(NOW, SETTINGS), app=app)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(r["cases"] for r in results) == 1
    assert db.session.execute(select(func.count(ReviewCase.id))).scalar_one() == 1
    assert db.session.execute(select(func.count(RiskCommunity.id)).where(RiskCommunity.suspicious)).scalar_one() == 1


def test_the_graph_leaves_public_identifiers_and_single_owner_identifiers_out(app):
    w = World()
    shop = w.merchant()
    people = [w.user(age_days=100) for _ in range(60)]
    for u in people:
        w.seen(u, "net", "100.64.0.0/24")  # a carrier's block: 60 owners, more than max_owners
        w.seen(u, "device", f"own-{u.id}")
        w.order(u, shop, packet=False, days_ago=1)
    w.save()

    graph = build_graph(NOW, SETTINGS).graph

    assert not [n for n in graph if n.startswith(("net:", "device:"))]
    assert graph.number_of_nodes() == 61
    assert score_graph(build_graph(NOW, SETTINGS), SETTINGS)[0].score == 0


def test_the_api_lists_communities_with_their_cases(world, client, make_operator):
    _, headers = make_operator("support")
    find_communities(NOW, SETTINGS)
    db.session.commit()
    case = db.session.execute(select(ReviewCase)).scalar_one()

    listed = client.get("/admin/api/risk/communities?suspicious=true", headers=headers)
    everything = client.get("/admin/api/risk/communities?limit=100&offset=0", headers=headers)
    one = client.get(f"/admin/api/risk/communities/{case.community_id}", headers=headers)

    assert listed.status_code == 200
    [item] = listed.get_json()["items"]
    assert item["id"] == case.community_id and item["suspicious"] is True
    assert item["case"]["id"] == case.id and item["case"]["status"] == "open"
    assert any("share 1 device" in r for r in item["reasons"])
    assert len(everything.get_json()["items"]) >= 1
    assert one.status_code == 200 and one.get_json() == item
    unsuspicious = client.get("/admin/api/risk/communities?suspicious=false", headers=headers).get_json()["items"]
    assert all(not c["suspicious"] and c["case"] is None for c in unsuspicious)


@pytest.mark.parametrize(
    "query",
    ["suspicious=perhaps", "limit=0", "limit=501", "limit=ten", "offset=-1", "colour=red"],
)
def test_the_api_refuses_bad_query_parameters(app, client, make_operator, query):
    _, headers = make_operator("admin")

    response = client.get(f"/admin/api/risk/communities?{query}", headers=headers)

    assert response.status_code == 422
    assert response.get_json()["error"] == "validation_error"


def test_the_api_is_for_platform_roles_and_answers_404_for_an_unknown_community(app, client, make_operator):
    _, staff = make_operator("merchant_staff")
    _, admin = make_operator("admin")

    assert client.get("/admin/api/risk/communities", headers=staff).status_code == 403
    assert client.get("/admin/api/risk/communities/99", headers=admin).status_code == 404
