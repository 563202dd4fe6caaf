"""``FUND_FLOW=service_provider`` with the simulator, the way ``make run`` starts: the app factory on a fresh
database brought up by the migrations, ``flask seed-demo``, every job once (``flask jobs run-once``, profit
sharing included), health, and a newcomer's first order prepaid to the demo shop's sub-merchant."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from flask_migrate import upgrade
from sqlalchemy import select

from app import create_app
from ledger import check_ledger
from models import Merchant, Order, Product, RedPacket, db
from web.demo import DEMO_SUB_MCHID


def test_the_app_starts_seeds_and_runs_its_jobs_in_service_provider_mode_on_the_simulator(tmp_path):
    # given: make run's settings, in service-provider mode, on a database the migrations build
    app = create_app(
        {
            "WECHAT_MODE": "simulator",
            "FUND_FLOW": "service_provider",
            "SEED_DEMO_DATA": True,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'sp.db'}",
            "PUBLIC_BASE_URL": "http://127.0.0.1:5000",
            "CLAIM_IP_PER_DAY": 0,
            "CLAIM_IP_INTERVAL_SECONDS": 0,
            "WECHAT_SIM_NOTIFY_TRANSPORT": lambda *_: 204,  # nothing leaves this test
            "TESTING": True,
        }
    )
    sim = app.extensions["wechat"].simulator
    try:
        with app.app_context():
            upgrade()
            runner = app.test_cli_runner()
            # when: the demo data is seeded (twice: the second run finds it) and every job runs once
            seeded = runner.invoke(args=["seed-demo"])
            again = runner.invoke(args=["seed-demo"])
            jobs = runner.invoke(args=["jobs", "run-once"])
            # then
            assert seeded.exit_code == 0, seeded.output
            assert "demo data created" in seeded.output and "already present" in again.output
            assert jobs.exit_code == 0, jobs.output
            assert "share_due_orders: {}" in jobs.output and "query_profit_shares: {}" in jobs.output
            shop = db.session.execute(select(Merchant).where(Merchant.name == "Noodle House")).scalar_one()
            assert shop.sub_mchid == DEMO_SUB_MCHID
            noodles = db.session.execute(select(Product).where(Product.name == "Beef noodles")).scalar_one()
            code = next(line.split(": ")[1] for line in seeded.output.splitlines() if "packet claim code:" in line)
            noodles_id = noodles.id
            db.session.remove()

        client = app.test_client()
        assert client.get("/healthz").status_code == 200
        # when: a newcomer signs in, claims a code and orders the shop's noodles with it
        token = client.post("/api/v1/auth/login", json={"code": "code-alice"}).json["token"]
        alice = {"Authorization": f"Bearer {token}"}
        claimed = client.post("/api/v1/red-packets/claim", json={"code": code}, headers=alice)
        assert claimed.status_code == 201, claimed.json
        body = {"lines": [{"product_id": noodles_id, "quantity": 1}], "red_packet_id": claimed.json["id"]}
        created = client.post("/api/v1/orders", json=body, headers=alice)
        # then: the order is the sub-merchant's, prepaid through the partner JSAPI with profit sharing
        assert created.status_code == 201, created.json
        assert created.json["payment"] is not None, created.json.get("payment_error")
        assert urlsplit(created.json["payment"]["simulator_checkout_url"]).path.startswith("/_sim/")
        sent = sim.orders[created.json["out_trade_no"]]["request"]
        assert sent["sub_mchid"] == DEMO_SUB_MCHID and sent["settle_info"] == {"profit_sharing": True}
        with app.app_context():
            order = db.session.get(Order, created.json["id"])
            assert (order.sub_mchid, order.profit_sharing) == (DEMO_SUB_MCHID, True)
            assert db.session.get(RedPacket, claimed.json["id"]).status != "issued"
            report = check_ledger()
            assert report.ok, json.dumps(report.violations, default=str)
            db.session.remove()
    finally:
        sim.dispatcher.stop()
        with app.app_context():
            db.engine.dispose()
