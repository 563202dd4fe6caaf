"""A lift of a ban on an address or a network finds its orders by their network, not by reading every held order
placed over IPv6 (``Order.ip_net``, migration 0046; ``rebate.milestones.held_orders``).

Before, a lift of an IPv6 ban read every order placed over IPv6 with a rebate still held, and tested each one in
Python: on a platform where most phones reach it over IPv6, hundreds of thousands of rows in one request.
The ledger check runs after every test (tests/conftest.py).
"""

from __future__ import annotations

import pytest
from sqlalchemy import update

import rebate.milestones as milestones
from models import Order, db, utcnow
from rebate import create_order
from rebate.orders import LineRequest
from tests.conftest import on_postgres
from tests.test_probe20_bans import admin, ban, buy, held_of, lift, report_both, shop  # noqa: F401 - fixtures

HELD = 9_00


@pytest.fixture
def tested(monkeypatch):
    """The orders ``held_orders`` read back and tested one by one in Python (``risk.bans.subjects``)."""
    seen: list[tuple] = []
    real = milestones.subjects

    def counting(**kw):
        seen.append((kw.get("device"), kw.get("ip")))
        return real(**kw)

    monkeypatch.setattr(milestones, "subjects", counting)
    return seen


@pytest.mark.parametrize(
    ("value", "ip", "others"),
    [
        ("2001:db8:7::/48", "2001:db8:7:0:1::9", ["2001:db8:8::1", "2001:db8:9:1::1", "2400:cb00::5"]),
        ("2001:db8:7:0:1::9", "2001:db8:7:0:1::9", ["2001:db8:8::1", "2400:cb00::5"]),
        ("198.51.100.0/24", "::ffff:198.51.100.9", ["198.51.101.9", "203.0.113.5"]),
    ],
)
def test_a_network_ban_lift_reads_only_the_orders_of_its_network(client, admin, buy, tested, value, ip, others):  # noqa: F811
    # given: a buyer refused by a ban on their network, and buyers of other networks with rebates held too
    mine = buy(ip=ip)
    theirs = [buy(ip=other) for other in others]
    ban_id = ban(client, admin, "net", value)
    report_both(mine)
    for order in theirs:
        report_both(order)  # theirs are paid at once: nothing bans them
    strangers = [buy(ip=other) for other in others]  # still held (no milestone yet)

    # when: the ban is lifted
    tested.clear()
    lift(client, admin, ban_id)

    # then: the buyer is paid, and only orders of the banned network were read to find them
    assert held_of(mine.id) == ("awarded", HELD, 0)
    assert all(held_of(o.id) == ("held", 0, HELD) for o in strangers)
    assert {ip_ for _, ip_ in tested if ip_ is not None} == {ip}, tested


def test_an_order_written_before_its_network_was_kept_is_still_found(client, admin, buy, tested):  # noqa: F811
    # given: an order whose ip_net was never written (a process of the code of before, during a deploy)
    order = buy(ip="2001:db8:7:0:1::9")
    db.session.execute(update(Order).where(Order.id == order.id).values(ip_net=None))
    db.session.commit()
    ban_id = ban(client, admin, "net", "2001:db8:7::/48")
    report_both(order)

    # when: the ban is lifted
    lift(client, admin, ban_id)

    # then: it is found all the same
    assert held_of(order.id) == ("awarded", HELD, 0)


def test_an_orders_network_follows_its_address(shop, make_user):  # noqa: F811
    _, product, _ = shop
    order = create_order(make_user(), [LineRequest(product.id, 1)], None, utcnow(), ip="2001:db8:7:0:1::9")
    assert order.ip_net == "2001:db8:7::/48"
    order.ip = "::ffff:10.1.2.7"
    assert order.ip_net == "10.1.2.0/24"
    order.ip = "not an address"
    assert order.ip_net == ""  # filled: no network to find it by
    order.ip = None
    assert order.ip_net is None


def test_the_job_fills_the_network_of_orders_written_before_it_was_kept(client, admin, buy):  # noqa: F811
    from jobs.risk import fill_order_networks_job

    # given: orders of before the column (NULL), one of an address that is none
    v6, v4, odd = buy(ip="2001:db8:7:0:1::9"), buy(ip="::ffff:198.51.100.9"), buy(ip="unknown")
    db.session.execute(update(Order).values(ip_net=None))
    db.session.commit()

    # when: the job runs, twice
    assert fill_order_networks_job() == {"filled": 3}
    assert fill_order_networks_job() == {"filled": 0}
    db.session.expire_all()

    # then: each has its network ("" for no address: nothing left to fill), and a ban's lift finds them by it
    assert [db.session.get(Order, o.id).ip_net for o in (v6, v4, odd)] == ["2001:db8:7::/48", "198.51.100.0/24", ""]
    ban_id = ban(client, admin, "net", "2001:db8:7::/48")
    report_both(v6)
    lift(client, admin, ban_id)
    assert held_of(v6.id) == ("awarded", HELD, 0)


@pytest.mark.parametrize(
    ("value", "ip", "neighbour"),
    [
        ("198.51.100.9", "198.51.100.9", "198.51.100.10"),  # a single IPv4 address: its /24 is read, not all of it
        ("2001:db8:7:0:1::9", "2001:db8:7:0:1::9", "2001:db8:7:0:1::10"),
    ],
)
def test_a_single_address_ban_lift_leaves_its_neighbours_held(client, admin, buy, value, ip, neighbour):  # noqa: F811
    mine, theirs = buy(ip=ip), buy(ip=neighbour)
    ban_id = ban(client, admin, "net", value)
    report_both(mine)
    lift(client, admin, ban_id)
    assert held_of(mine.id) == ("awarded", HELD, 0)
    assert held_of(theirs.id) == ("held", 0, HELD)  # no milestone reported: still waiting


@pytest.mark.skipif(not on_postgres(), reason="PostgreSQL's planner")
def test_the_lookup_of_a_networks_orders_can_use_the_indexes(buy):  # noqa: F811
    """Both halves of the lookup (by network, and the few orders not filled yet) go through an index: with
    sequential scans off, PostgreSQL reads ``orders`` through them (a condition no index serves would scan it)."""
    from sqlalchemy import select, text

    from models import Rebate

    buy(ip="2001:db8:7:0:1::9")
    query = (
        select(Rebate.order_id).join(Order, Order.id == Rebate.order_id).where(milestones._may_be_in("2001:db8:7::/48"))
    )
    compiled = query.compile(db.engine, compile_kwargs={"literal_binds": True})
    db.session.execute(text("SET LOCAL enable_seqscan = off"))
    plan = "\n".join(db.session.execute(text(f"EXPLAIN {compiled}")).scalars())
    db.session.rollback()
    assert "Seq Scan on orders" not in plan, plan
    assert "ix_orders_ip_net" in plan and "ix_orders_ip_net_unfilled" in plan, plan
