"""``flask seed-demo``: the demo data of ``make run`` (idempotent: a second run adds nothing but a token)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import click
from flask import current_app
from sqlalchemy import select

from models import Campaign, CampaignRules, Merchant, Operator, Product, RedPacket, db, unit_of_work, utcnow
from models.base import next_beijing_midnight
from models.triggers import TriggerKind
from rebate.deposits import top_up
from rebate.packets import generate_batch
from rebate.rules import Form
from web.auth import issue_operator_token
from web.payment_api import service_provider
from web.progress import Steps

DEMO_SUB_MCHID = "1900000109"  # FUND_FLOW=service_provider: the shop's sub-merchant number at the simulator
NEWCOMER = "Newcomer: spend 50 get 10 off, 8% back"
PRODUCTS = [("Beef noodles", "food", 50_00), ("Family feast", "food", 200_00), ("Tea", "drink", 12_00)]


def _campaign(name: str, rules: dict, **fields) -> Campaign:
    campaign = Campaign(name=name, status="active", **fields)
    db.session.add(campaign)
    db.session.flush()
    db.session.add(CampaignRules(campaign_id=campaign.id, version=1, rules=rules))
    return campaign


def seed(step: Callable[[str], None] = lambda _: None, *, service_provider: bool = False) -> dict:
    """The demo data; ``step`` hears of each phase (the command prints them on stderr).

    ``service_provider``: the shop is sub-merchant ``DEMO_SUB_MCHID``, and the newcomer packets are the shop's
    own (a platform-funded discount on its orders would pool money: ``rebate.fund_flow``)."""
    now = utcnow()
    this_week = next_beijing_midnight(now) - timedelta(days=1)
    shop = db.session.execute(select(Merchant).where(Merchant.name == "Noodle House")).scalar_one_or_none()
    created = shop is None
    if created:
        step("the shop, its products and its marketing deposit")
        shop = Merchant(name="Noodle House", sub_mchid=DEMO_SUB_MCHID if service_provider else None)
        db.session.add(shop)
        db.session.flush()
        db.session.add_all(Product(merchant_id=shop.id, name=n, category=c, price_fen=p) for n, c, p in PRODUCTS)
        if not service_provider:  # in service-provider mode the platform takes no deposit: sales fund it
            top_up(shop.id, 10_000_00, "demo", "the shop's marketing deposit (demo)")  # its campaign's budget
        step("three campaigns")
        consumer_change = {"role": "consumer", "rate_bps": 500, "form": Form.WECHAT_CHANGE, "cap_fen": 50_00}
        issuer_credit = {"role": "issuer", "rate_bps": 1000, "form": Form.MERCHANT_CREDIT, "cap_fen": 100_00}
        _campaign(
            "First order over 200 earns 20 off",
            # service-provider mode: the shop's own sales pay, by profit sharing, the buyer only (it would pay
            # itself its issuer side as credit the platform holds: rebate.fund_flow)
            {"roles": [consumer_change] if service_provider else [issuer_credit, consumer_change]},
            issuer_type="merchant",
            issuer_merchant_id=shop.id,
            funder_type="merchant_deposit",
            funder_merchant_id=shop.id,
            funded_from_sales=service_provider,
            budget_limit_fen=10_000_00,
            packet_amount_fen=20_00,
            packet_min_spend_fen=50_00,
            packet_merchant_id=shop.id,
            trigger={"kind": TriggerKind.ORDER_PAID, "min_order_fen": 200_00, "first_order_only": True},
        )
        back = Form.WECHAT_CHANGE if service_provider else Form.BALANCE  # shared from sales: change only
        newcomer = _campaign(
            NEWCOMER,
            {"roles": [{"role": "consumer", "rate_bps": 800, "base": "order_total", "form": back, "cap_fen": 20_00}]},
            **_newcomer_funder(shop, service_provider),
            budget_limit_fen=5_000_00,
            packet_amount_fen=10_00,
            packet_min_spend_fen=50_00,
            trigger={"kind": TriggerKind.CLAIM_CODE},
            # One packet per person; no per-address limits: every local request (`make demo`'s
            # included) comes from 127.0.0.1, so that address would stand for everybody.
            claim_limits={"per_person": 1, "per_ip_per_day": None, "min_interval_seconds": None},
        )
        _campaign(
            "Invite friends: 10% of their spend, doubled this week",
            {
                "applies_to": "referral",
                "roles": [
                    {
                        "role": "inviter",
                        "rate_bps": 1000,
                        "form": Form.WECHAT_CHANGE,
                        "cap_fen": 50_00,
                        "windows": [
                            {  # from the start of today (Beijing): WeChat's success_time has whole seconds,
                                # so a window from this very instant missed a payment made within the second
                                "starts_at": this_week.isoformat(),
                                "ends_at": (this_week + timedelta(days=7)).isoformat(),
                                "factor_bps": 20_000,
                            }
                        ],
                    }
                ],
            },
            issuer_type="platform",
            funder_type="platform_fund",
            budget_limit_fen=5_000_00,
        )
        db.session.flush()
        step("claim codes for the newcomer campaign")
        generate_batch(newcomer, 5, now, batch_ref="demo")
    else:
        step("already present: nothing to add")
    seeded_for = _seeded_for()
    # The newcomer campaign's codes that a claim still takes: an operator's batch of another campaign (paused,
    # ended, other terms) is no newcomer code, and a code past its validity is refused by the claim.
    codes = (
        db.session.execute(
            select(RedPacket.claim_code)
            .join(Campaign, Campaign.id == RedPacket.campaign_id)
            .where(
                Campaign.name == NEWCOMER,
                RedPacket.status == "unclaimed",
                RedPacket.source == "batch",
                RedPacket.expires_at > now,
            )
            .order_by(RedPacket.id)
            .limit(5)
        )
        .scalars()
        .all()
    )
    step("the demo admin and a one-day token")
    admin = db.session.execute(select(Operator).where(Operator.username == "demo-admin")).scalar_one_or_none()
    if admin is None:
        admin = Operator(username="demo-admin", display_name="Demo admin", role="admin")
        db.session.add(admin)
        db.session.flush()
    staff = db.session.execute(select(Operator).where(Operator.username == "demo-shop")).scalar_one_or_none()
    if staff is None:  # the shop owner's view of the console: Noodle House only
        staff = Operator(
            username="demo-shop", display_name="Noodle House staff", role="merchant_staff", merchant_id=shop.id
        )
        db.session.add(staff)
        db.session.flush()
    return {
        "created": created,
        "seeded_for": seeded_for,
        "merchant_id": shop.id,
        "codes": codes,
        "admin_token": issue_operator_token(admin, label="demo", ttl=timedelta(days=1)),
        "shop_token": issue_operator_token(staff, label="demo", ttl=timedelta(days=1)),
    }


def _seeded_for() -> str | None:
    """The fund flow the demo data was seeded for: its newcomer packets are the platform's in direct mode, paid from
    the shop's own sales in service-provider mode (None when that campaign is gone)."""
    funded_from_sales = db.session.execute(
        select(Campaign.funded_from_sales).where(Campaign.name == NEWCOMER).order_by(Campaign.id).limit(1)
    ).scalar_one_or_none()
    if funded_from_sales is None:
        return None
    return "service_provider" if funded_from_sales else "direct"


def _newcomer_funder(shop: Merchant, service_provider: bool) -> dict:
    if not service_provider:
        return {"issuer_type": "platform", "funder_type": "platform_fund"}
    return {
        "issuer_type": "merchant",
        "issuer_merchant_id": shop.id,
        "funder_type": "merchant_deposit",
        "funder_merchant_id": shop.id,
        "funded_from_sales": True,
        "packet_merchant_id": shop.id,
    }


@click.command("seed-demo")
def seed_demo_command() -> None:
    """Seed a merchant, products, three campaigns and claim codes; print an admin token."""
    if current_app.config["WECHAT_MODE"] == "live" and not current_app.config["SEED_DEMO_DATA"]:
        raise click.ClickException("refusing to seed demo data in live mode; set SEED_DEMO_DATA=1 if you mean it")
    step = Steps("seed-demo")
    with unit_of_work():
        result = seed(step, service_provider=service_provider())
    step("committed")
    click.echo("demo data " + ("created" if result["created"] else "already present"))
    running = "service_provider" if service_provider() else "direct"
    if result["seeded_for"] not in (None, running):  # the shop's orders would be refused (rebate.fund_flow)
        click.echo(
            f"  the demo data was seeded for FUND_FLOW={result['seeded_for']}, and this runs FUND_FLOW={running}: "
            f"the demo shop's orders are refused. Stop the server, then `FUND_FLOW={running} make reset` and "
            f"`FUND_FLOW={running} make run`."
        )
    for code in result["codes"]:
        click.echo(f"  newcomer packet claim code: {code}")
    if not result["codes"]:  # all claimed, or past their validity (30 days): the demo makes its own
        click.echo(
            "  no newcomer packet claim code left: `make demo` makes its own, and the admin token more "
            "(POST /admin/api/campaigns/<id>/packets/batch, README: Walk through the demo)"
        )
    click.echo(f"  admin token (1 day): {result['admin_token']}")
    click.echo(f"  Noodle House staff token (1 day): {result['shop_token']}")
    base = current_app.config.get("PUBLIC_BASE_URL") or "http://127.0.0.1:5000"
    click.echo(f"  console: {base.rstrip('/')}/console/ (sign in with either token)")
