"""Review-case set-ups: a paid order whose rebates are held for review, as the payment holds them.

The payment's hold (status ``review``, ``held_fen`` = the amount, ``amount_fen`` = 0, the budget committed,
nothing paid or queued) is made here by paying the order with balance-form rebates and undoing what was
paid: each rebate's ledger entry is reversed, so the money sits in the funder's account, committed.
"""

from __future__ import annotations

from sqlalchemy import select

from ledger import Leg, account, balance, post_entry
from models import AccountKind, Campaign, Order, Rebate, ReviewCase, User, db, utcnow
from rebate import create_order, issue_packet
from rebate.awards import beneficiary_account
from rebate.campaigns import funder_account
from rebate.orders import LineRequest
from risk.cases import open_community_case, open_order_case

TWO_ROLES = {
    "roles": [
        {"role": "issuer", "rate_bps": 1000, "form": "balance", "cap_fen": 1_000_00},
        {"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1_000_00},
    ]
}
DEVICE = "0123456789abcdef01234567"


def cash(user_id: int) -> int:
    return balance(account(AccountKind.USER_CASH, "user", user_id))


def rebates_of(order_id: int) -> dict[str, Rebate]:
    db.session.expire_all()
    rows = db.session.execute(select(Rebate).where(Rebate.order_id == order_id)).scalars()
    return {r.role: r for r in rows}


def paid_order(make_user, make_product, make_campaign, pay, price_fen: int = 100_00, merchant=None, **campaign):
    """A paid order with a user-issued packet: 10 % to the issuer, 5 % to the buyer (balance), paid out.

    Returns (order, buyer, issuer, campaign)."""
    issuer, buyer = make_user(), make_user()
    campaign.setdefault("budget_limit_fen", 10_000_00)
    camp = make_campaign(TWO_ROLES, issuer_type="user", issuer_user_id=issuer.id, packet_amount_fen=10_00, **campaign)
    packet = issue_packet(camp, buyer, source="test", source_ref=f"r{buyer.id}", now=utcnow())
    product = make_product(merchant, price_fen=price_fen) if merchant else make_product(price_fen=price_fen)
    order = create_order(buyer, [LineRequest(product.id, 1)], packet.id, utcnow())
    order.device, order.ip = DEVICE, "198.51.100.23"
    db.session.commit()
    pay(order)
    return db.session.get(Order, order.id), buyer, issuer, db.session.get(Campaign, camp.id)


def hold_for_review(order: Order, roles: tuple[str, ...] | None = None, form: str | None = None) -> ReviewCase:
    """Turn the order's paid rebates (of ``roles``, default all) into review holds and open its case.

    ``form``: the held rebates' form from now on (e.g. ``wechat_change``: a release then queues a payout)."""
    held = 0
    for rebate in rebates_of(order.id).values():
        if rebate.amount_fen <= 0 or (roles and rebate.role not in roles):
            continue
        campaign = db.session.get(Campaign, rebate.campaign_id)
        post_entry(
            f"test-review-hold:{rebate.id}",
            "held for review (test set-up)",
            [Leg(beneficiary_account(rebate), -rebate.amount_fen), Leg(funder_account(campaign), rebate.amount_fen)],
        )
        rebate.held_fen, rebate.amount_fen, rebate.status = rebate.amount_fen, 0, "review"
        if form:
            rebate.form = form
        held += rebate.held_fen
    why = ["paid 9 s after first view"]
    case = open_order_case(order.id, order.user_id, order.merchant_id, held, 87, why, utcnow())
    db.session.commit()
    return case


def community_case(members: list[str], concerned_fen: int = 0, merchant_id: int | None = None) -> ReviewCase:
    from models import RiskCommunity

    community = RiskCommunity(
        fingerprint="|".join(sorted(members))[:64], members=members, size=len(members), score=0.9, suspicious=True
    )
    community.reasons = ["4 accounts on one device"]
    db.session.add(community)
    db.session.flush()
    case = open_community_case(community.id, merchant_id, concerned_fen, ["dense ring"], utcnow())
    db.session.commit()
    return case


def status_of(user_id: int) -> str:
    db.session.expire_all()
    return db.session.get(User, user_id).status
