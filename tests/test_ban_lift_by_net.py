"""A lift of a ban on an address or a network finds its orders by their network, not by reading every held order
placed over IPv6 (``Order.ip_net``, migration 0046; ``rebate.milestones.orders_to_resume``).

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
from tests.test_probe20_bans import admin, ban, buy, held_of, lift, report_both, shop  # noqa: F401 - fixtures

HELD = 9_00


@pytest.fixture
def tested(monkeypatch):
    """The orders ``orders_to_resume`` read back and tested one by one in Python (``risk.bans.subjects``)."""
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
    assert order.ip_net is None


def test_the_migration_fills_the_network_of_orders_a_lift_can_still_concern(client, admin, buy):  # noqa: F811
    import importlib.util

    from app import MIGRATIONS_DIR

    spec = importlib.util.spec_from_file_location("m0046", f"{MIGRATIONS_DIR}/versions/0046_order_ip_net.py")
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    # given: held orders of before the column (NULL), one of an address that is none
    v6, v4, odd = buy(ip="2001:db8:7:0:1::9"), buy(ip="::ffff:198.51.100.9"), buy(ip="unknown")
    db.session.execute(update(Order).values(ip_net=None))
    db.session.commit()

    # when: the migration fills them
    migration.fill(db.session.connection())
    db.session.commit()
    db.session.expire_all()

    # then: each has its network, and a ban's lift finds them by it
    assert [db.session.get(Order, o.id).ip_net for o in (v6, v4, odd)] == ["2001:db8:7::/48", "198.51.100.0/24", None]
    ban_id = ban(client, admin, "net", "2001:db8:7::/48")
    report_both(v6)
    lift(client, admin, ban_id)
    assert held_of(v6.id) == ("awarded", HELD, 0)
