"""Every money event writes its notice, in the event's own transaction, once (docs/architecture.md §14).

Through the real operations: payments (notification intake), triggers, claims, the payout dispatcher with a
scripted rail, the transfer notification route against the simulator's signed bills, refunds, review
decisions through the admin API, and the expiring-packets job. A retry writes nothing more.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from jobs.expiring import tell_expiring_packets
from jobs.payouts import dispatch_due
from models import Notice, PacketStatus, Payout, Rebate, RedPacket, db, utcnow
from notices.watch import WatchSettings, drafts_for
from payouts import MoneySettings
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings
from payouts.transfer_rail import TransferRail
from rebate import create_order, issue_packet
from rebate.claims import claim_from_campaign
from rebate.orders import LineRequest
from rebate.packets import release_packet
from rebate.refunds import apply_refund
from rebate.triggers import bind_inviter, invite_code_of
from risk import Claimant, PlatformLimits
from risk.rules import forget_rules
from tests.concurrency import together
from tests.money_helpers import app_money, queue_from_balance
from tests.review_helpers import hold_for_review, paid_order
from tests.test_dispatch import ScriptedRail
from tests.test_risk_payment import shop  # noqa: F401 - fixture: orders the payment scores
from tests.test_transfer_notify import NOTIFY, bill_resource, deliver
from tests.test_wechat_callbacks import no_network  # noqa: F401 - fixture

CHANGE = {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "wechat_change", "cap_fen": 100_00}]}
BALANCE = {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "balance", "cap_fen": 100_00}]}
POINTS = {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "points", "cap_fen": 100_00}]}
QUIET = {"roles": [{"role": "issuer", "rate_bps": 100, "form": "balance", "cap_fen": 1_00}]}  # no person earns
FRAUD_WORDS = ("score", "rule", "device", "farm", "fraud", "risk", "ban", "review_high", "account")


@pytest.fixture(autouse=True)
def fresh_rules(app):
    forget_rules()
    yield
    forget_rules()


def notices(event: str | None = None, user_id: int | None = None) -> list[Notice]:
    db.session.expire_all()
    stmt = select(Notice).order_by(Notice.id)
    if event:
        stmt = stmt.where(Notice.event == event)
    if user_id:
        stmt = stmt.where(Notice.user_id == user_id)
    found = list(db.session.execute(stmt).scalars())
    db.session.rollback()
    return found


def all_count() -> int:
    db.session.expire_all()
    n = db.session.execute(select(func.count(Notice.id))).scalar_one()
    db.session.rollback()
    return n


@pytest.fixture
def bought(app, make_user, make_product, make_campaign, pay):
    """A buyer's order paid with a platform packet whose campaign pays ``rules``; returns (order, buyer)."""

    def make(rules: dict, price_fen: int = 200_00):
        buyer = make_user(appid=app.config["WECHAT_APPID"])
        product = make_product(price_fen=price_fen)
        campaign = make_campaign(rules, budget_limit_fen=1_000_000_00, packet_amount_fen=10_00)
        packet = issue_packet(campaign, buyer, source="test", source_ref=f"b{buyer.id}", now=utcnow())
        db.session.flush()
        order = create_order(buyer, [LineRequest(product.id, 1)], packet.id, utcnow())
        db.session.commit()
        pay(order)
        return order, buyer

    return make


# -- the payment: money landed in the app, packets received, nothing when there is nothing to tell ------------


def test_a_balance_rebate_tells_the_buyer_it_landed_once(bought, pay):
    order, buyer = bought(BALANCE)
    (landed,) = notices("rebate_landed")
    rebate = db.session.execute(select(Rebate).where(Rebate.order_id == order.id)).scalar_one()
    assert landed.user_id == buyer.id and landed.key == f"rebate:{rebate.id}:landed"
    assert landed.facts == {"rebate_id": rebate.id, "amount_fen": 19_00, "form": "balance"}
    assert all_count() == 1  # the packet the test issued itself (source "test") is not told
    # when: WeChat delivers the same payment again
    pay(db.session.get(type(order), order.id))
    assert all_count() == 1


def test_points_tell_the_points_landed(bought):
    order, buyer = bought(POINTS)
    (landed,) = notices("rebate_landed")
    assert landed.facts["form"] == "points" and landed.facts["points"] > 0 and landed.facts["amount_fen"] == 19_00


def test_points_worth_more_than_a_fen_are_told_at_what_the_points_credited_are_worth(app, bought):
    """At 3 fen a point, 10 % of 197.00 is 19.70: 656 points are credited (19.68); the notice says 19.68 and 656,
    not the award's 19.70 (two fen no point carries)."""
    app.config["POINT_VALUE_FEN"] = 3
    order, buyer = bought(POINTS, price_fen=207_00)
    (landed,) = notices("rebate_landed")
    assert (landed.facts["points"], landed.facts["amount_fen"]) == (656, 19_68)


def test_a_wechat_change_rebate_tells_nothing_at_payment(bought):
    bought(CHANGE)  # the payout is queued: money has not reached the person yet
    assert all_count() == 0


def test_an_order_paid_trigger_packet_is_told_with_the_merchant_as_issuer(
    app, make_user, make_merchant, make_product, make_campaign, pay
):
    # given: a merchant's campaign issues a 5-yuan packet when an order of at least 100 yuan is paid there
    shop = make_merchant("茶馆")
    product = make_product(shop, price_fen=150_00)
    campaign = make_campaign(
        QUIET,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        packet_amount_fen=5_00,
        trigger={"kind": "order_paid", "min_order_fen": 100_00},
    )
    buyer = make_user()
    order = create_order(buyer, [LineRequest(product.id, 1)], None, utcnow())
    db.session.commit()
    # when
    pay(order)
    # then: one notice, naming the merchant, in the payment's transaction
    (told,) = notices("packet_received")
    packet = db.session.execute(select(RedPacket).where(RedPacket.campaign_id == campaign.id)).scalar_one()
    assert told.user_id == buyer.id and told.key == f"packet:{packet.id}:received"
    assert told.facts == {
        "packet_id": packet.id,
        "amount_fen": 5_00,
        "issuer": "茶馆",
        "expires_at": packet.expires_at.isoformat(),
    }
    pay(db.session.get(type(order), order.id))  # a repeat
    assert all_count() == 1


def test_a_referral_gift_names_the_inviter_and_a_self_claimed_packet_is_not_told(app, make_user, make_campaign):
    inviter, newcomer = make_user(), make_user()
    inviter.nickname = "小王"
    referral = make_campaign(QUIET, packet_amount_fen=10_00, trigger={"kind": "referral_bind"})
    self_serve = make_campaign(QUIET, packet_amount_fen=3_00, trigger={"kind": "claim"})
    code = invite_code_of(inviter)
    db.session.commit()
    # when: the newcomer binds to the inviter (a gift they did not pick), then claims a packet themselves
    (gift,) = bind_inviter(newcomer, code, utcnow(), limits=PlatformLimits.off())
    db.session.commit()
    claim_from_campaign(self_serve.id, newcomer, utcnow(), claimant=Claimant(newcomer.id), limits=PlatformLimits.off())
    db.session.commit()
    # then: the gift is told, the claim is not
    (told,) = notices()
    assert (told.event, told.key, told.facts["issuer"]) == ("packet_received", f"packet:{gift.id}:received", "小王")
    assert referral.id == db.session.get(RedPacket, gift.id).campaign_id


# -- review holds and clawbacks: the amount and plain words, never why -------------------------------------------


def test_a_rebate_held_for_review_is_told_by_id_and_amount_only(shop, pay):  # noqa: F811
    order, people, *_ = shop(farm=True)  # a click farm's order: the payment holds its rebates for review
    pay(order)
    held = notices("rebate_held")
    rebates = {r.id: r for r in db.session.execute(select(Rebate).where(Rebate.order_id == order.id)).scalars()}
    assert {n.user_id for n in held} == {people["issuer"].id, people["consumer"].id, people["inviter"].id}
    for notice in held:
        assert set(notice.facts) == {"rebate_id", "amount_fen"}
        assert notice.facts["amount_fen"] == rebates[notice.facts["rebate_id"]].held_fen
        assert notice.key == f"rebate:{notice.facts['rebate_id']}:held"
    assert all(n.event == "rebate_held" for n in notices())  # nothing else: nothing landed


def test_a_refund_clawback_tells_the_amount_and_order_refunded(app, bought):
    order, buyer = bought(BALANCE)
    before = all_count()
    # when: the whole order is refunded (REFUND.SUCCESS), and the notice applied again
    for _ in range(2):
        apply_refund(order.out_trade_no, "R-1", order.paid_fen, utcnow(), "wx-r-1", money=app_money())
        db.session.commit()
    (told,) = notices("rebate_clawed_back")
    assert told.user_id == buyer.id
    assert (told.facts["amount_fen"], told.facts["reason"], told.facts["reason_code"]) == (
        19_00,
        "订单退款",
        "order_refunded",
    )
    assert all_count() == before + 1


def test_a_reviewer_claw_back_tells_plain_words_and_no_fraud_detail(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    order, buyer, issuer, _ = paid_order(make_user, make_product, make_campaign, pay)
    case = hold_for_review(order, roles=("consumer",))  # the issuer's 9.00 was paid, the buyer's 4.50 held
    _, admin = make_operator("admin")
    for _ in range(2):  # decided twice: the second answers the case as decided, nothing more
        resp = client.post(
            f"/admin/api/reviews/{case.id}/decide",
            json={"outcome": "claw_back", "reason": "issuer and buyer share a device farm"},
            headers=admin,
        )
        assert resp.status_code == 200, resp.get_json()
    told = {n.user_id: n for n in notices("rebate_clawed_back")}
    assert set(told) == {issuer.id, buyer.id}
    assert (told[issuer.id].facts["amount_fen"], told[buyer.id].facts["amount_fen"]) == (9_00, 4_50)
    for notice in told.values():
        assert notice.facts["reason"] == "订单审核未通过"
        text = json.dumps(notice.facts, ensure_ascii=False).lower()
        assert not [w for w in FRAUD_WORDS if w in text], text


# -- payouts: the watcher ---------------------------------------------------------------------------------------


def rebate_payout(bought) -> Payout:
    order, _ = bought(CHANGE)
    return db.session.execute(select(Payout).where(Payout.order_id == order.id)).scalar_one()


def run(rail, at=None, hours=24):
    settings = DispatchSettings(money=MoneySettings(), confirm_ttl=timedelta(hours=hours))
    result = dispatch_due({rail.name: rail}, settings=settings, clock=(lambda: at) if at else utcnow)
    db.session.expire_all()
    return result


def test_a_transfer_to_confirm_is_told_at_once_and_reminded_before_it_closes(app, bought):
    payout = rebate_payout(bought)
    rail = ScriptedRail(
        RailResult(Outcome.WAITING_USER_CONFIRM, "WAIT_USER_CONFIRM", package_info="pkg"),
        query_answers=(RailResult(Outcome.WAITING_USER_CONFIRM, "WAIT_USER_CONFIRM"),),
    )
    run(rail)
    payout = db.session.get(Payout, payout.id)
    closes = payout.sent_at + timedelta(hours=24)
    (now_told,) = notices("transfer_to_confirm")
    (reminder,) = notices("transfer_reminder")
    for notice in (now_told, reminder):
        assert notice.user_id == payout.user_id
        assert notice.facts == {"payout_id": payout.id, "amount_fen": 19_00, "closes_at": closes.isoformat()}
    assert now_told.key == f"payout:{payout.id}:to_confirm" and reminder.key == f"payout:{payout.id}:reminder"
    assert now_told.next_attempt_at <= utcnow()
    assert reminder.next_attempt_at == closes - timedelta(hours=app.config["NOTICE_TRANSFER_REMINDER_HOURS"])
    # when: the dispatcher checks on it again hours later, still waiting
    run(rail, at=utcnow() + timedelta(hours=7))
    assert all_count() == 2


def test_a_succeeded_payout_tells_the_money_landed_once(app, bought):
    payout = rebate_payout(bought)
    run(ScriptedRail(RailResult(Outcome.SUCCEEDED, "SUCCESS", wechat_ref="bill-1")))
    (landed,) = notices("rebate_landed")
    assert landed.key == f"payout:{payout.id}:landed"
    assert landed.facts == {
        "payout_id": payout.id,
        "rebate_id": payout.rebate_id,
        "amount_fen": 19_00,
        "form": "wechat_change",
    }


def test_the_transfer_notification_of_a_confirmed_bill_tells_landed_once(app, client, bought, no_network):  # noqa: F811
    payout = rebate_payout(bought)
    rail = TransferRail(
        app.extensions["wechat"].pay,
        appid=app.config["WECHAT_APPID"],
        notify_url=app.config["PUBLIC_BASE_URL"] + NOTIFY,
    )
    dispatch_due({rail.name: rail})
    db.session.expire_all()
    payout = db.session.get(Payout, payout.id)
    assert payout.status == "waiting_user_confirm"
    resource = bill_resource(app, payout, "SUCCESS")
    # when: WeChat notifies the success, and the same bill again under another notification id
    assert deliver(client, app, resource).status_code == 204
    assert deliver(client, app, resource).status_code == 204
    assert [n.key for n in notices("rebate_landed")] == [f"payout:{payout.id}:landed"]


def test_a_bill_the_user_never_confirmed_tells_the_money_is_back_in_the_balance(app, bought):
    payout = rebate_payout(bought)
    rail = ScriptedRail(
        RailResult(Outcome.WAITING_USER_CONFIRM, package_info="p"),
        query_answers=(RailResult(Outcome.CANCELLED, "CANCELLED"),),
    )
    run(rail)
    run(rail, at=utcnow() + timedelta(days=1))
    assert db.session.get(Payout, payout.id).status == "cancelled"
    (failed,) = notices("payout_failed")
    assert failed.key == f"payout:{payout.id}:failed" and failed.user_id == payout.user_id
    assert failed.facts == {
        "payout_id": payout.id,
        "amount_fen": 19_00,
        "reason": "未在时限内确认收款",
        "reason_code": "not_confirmed",
    }


def test_a_failure_that_is_retried_tells_nothing_and_the_last_one_tells_once(app, bought):
    payout = rebate_payout(bought)
    fail = RailResult(Outcome.FAILED, "FAIL", "bank refused")
    rail = ScriptedRail(fail, fail, fail)
    run(rail)
    assert notices("payout_failed") == []  # retried on a new payout: the money is on its way again
    run(rail)
    run(rail)
    db.session.expire_all()
    retries = db.session.execute(select(Payout).order_by(Payout.id)).scalars().all()
    assert [p.id for p in retries][0] == payout.id
    assert [p.status for p in retries] == ["failed", "failed", "failed"]
    (failed,) = notices("payout_failed")
    assert failed.facts["payout_id"] == retries[-1].id and failed.facts["reason_code"] == "failed"


def test_a_withdrawal_is_only_reminded(app, make_user):
    user = make_user()
    payout = queue_from_balance(user, 5_00)
    run(ScriptedRail(RailResult(Outcome.WAITING_USER_CONFIRM, package_info="p")))
    assert [n.key for n in notices()] == [f"payout:{payout.id}:reminder"]


def test_a_late_reminder_is_not_written(app, make_user):
    user = make_user()
    payout = queue_from_balance(user, 5_00)
    db.session.execute(update(Payout).where(Payout.id == payout.id).values(sent_at=utcnow() - timedelta(hours=22)))
    payout = db.session.get(Payout, payout.id)
    payout.status, payout.package_info = "waiting_user_confirm", "p"
    assert drafts_for([payout], WatchSettings(24, 3), utcnow()) == []  # closes in 2 h: no reminder 3 h before
    db.session.rollback()


def test_no_payout_moved_no_notice_and_no_statement(app, make_user):
    from tests.test_hot_path_sql import counted

    user = make_user()
    with counted() as statements:
        user.nickname = "x"
        db.session.commit()
    assert len(statements) <= 3 and not any("notices" in s for s in statements)


# -- the expiring packets job -------------------------------------------------------------------------------------


@pytest.fixture
def held_packets(app, make_user, make_campaign):
    """Packets in several states; returns {name: packet id}."""

    def make():
        owner = make_user()
        campaign = make_campaign(QUIET, packet_amount_fen=5_00, packet_valid_days=30)
        now = utcnow()
        made = {}
        for name, claimed_ago, expires_in, status in (
            ("due", timedelta(days=2), timedelta(hours=20), "issued"),
            ("due_too", timedelta(days=9), timedelta(hours=1), "issued"),
            ("later", timedelta(days=2), timedelta(hours=30), "issued"),
            ("just_got", timedelta(hours=1), timedelta(hours=3), "issued"),  # expires within hours of issue
            ("gone", timedelta(days=2), timedelta(hours=-1), "issued"),  # already expired, not yet swept
            ("last_minutes", timedelta(days=2), timedelta(minutes=5), "issued"),
            ("revoked", timedelta(days=2), timedelta(hours=5), "revoked"),
        ):
            packet = issue_packet(campaign, owner, source="test", source_ref=name, now=now)
            packet.claimed_at, packet.expires_at = now - claimed_ago, now + expires_in
            if status == "revoked":
                release_packet(packet, PacketStatus.REVOKED)
            made[name] = packet.id
        db.session.commit()
        return owner, made

    return make


def test_the_expiring_job_tells_each_due_packet_once(app, held_packets):
    owner, made = held_packets()
    first = tell_expiring_packets(batch=1)  # keyset batches of one
    told = notices("packet_expiring")
    assert sorted(n.facts["packet_id"] for n in told) == sorted([made["due"], made["due_too"]])
    packet = db.session.get(RedPacket, made["due"])
    due = next(n for n in told if n.facts["packet_id"] == made["due"])
    assert due.key == f"packet:{made['due']}:expiring" and due.user_id == owner.id
    assert due.facts == {"packet_id": packet.id, "amount_fen": 5_00, "expires_at": packet.expires_at.isoformat()}
    assert first["told"] == 2
    assert tell_expiring_packets()["told"] == 0 and all_count() == 2


def test_two_expiring_runs_at_once_write_each_notice_once(app, held_packets):
    held_packets()
    held_packets()
    results = together(2, lambda i: tell_expiring_packets(batch=2), app=app)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(r["told"] for r in results) == 4
    keys = [n.key for n in notices("packet_expiring")]
    assert len(keys) == len(set(keys)) == 4


def test_the_reminder_setting_is_checked_at_start_up(app):
    from config import ConfigError, load_config

    with pytest.raises(ConfigError, match="NOTICE_TRANSFER_REMINDER_HOURS"):
        load_config(
            {"WECHAT_MODE": "simulator", "TRANSFER_CONFIRM_HOURS": 3, "NOTICE_TRANSFER_REMINDER_HOURS": 3}, environ={}
        )
    assert load_config({"WECHAT_MODE": "simulator"}, environ={})["NOTICE_TRANSFER_REMINDER_HOURS"] == 3


def test_status_moves_go_through_the_orm_so_the_watcher_sees_them():
    """A bulk UPDATE of payouts.status would bypass the watcher: none exists outside tests."""
    import pathlib
    import re

    root = pathlib.Path(__file__).parent.parent
    offenders = []
    for path in root.glob("*/**/*.py"):
        if path.parts[len(root.parts)] in ("tests", ".venv", "bench", "migrations"):
            continue
        source = path.read_text(encoding="utf-8")
        for match in re.finditer(r"update\(Payout\)[^\n]*(\n[^\n]*){0,3}", source):
            if "status" in match.group(0).split(".values(")[-1].split(")")[0]:
                offenders.append(str(path))
    assert offenders == []


def test_an_operator_cancel_tells_the_money_is_back_in_the_balance(app, make_user):
    from payouts.operations import cancel

    payout = queue_from_balance(make_user(), 5_00)
    cancel(db.session.get(Payout, payout.id), utcnow(), "sent twice by mistake")
    db.session.commit()
    (failed,) = notices("payout_failed")
    assert (failed.facts["reason_code"], failed.facts["reason"]) == ("cancelled", "发放已取消")
    assert "mistake" not in json.dumps(failed.facts, ensure_ascii=False)  # the operator's words stay inside


def test_a_coupon_that_falls_back_to_the_balance_tells_it_landed_there(app, make_user):
    from ledger import account
    from models import AccountKind
    from payouts import enqueue_payout

    user = make_user()
    payout = enqueue_payout(
        rail="wechat_coupon",
        user_id=user.id,
        amount_fen=3_00,
        source=account(AccountKind.PLATFORM_MARKETING_FUND),
        key=f"coupon:{user.id}",
        memo="coupon rebate",
        number_prefix="",
        fallback_rail="balance",
    )
    db.session.commit()
    rail = ScriptedRail(RailResult(Outcome.FALLBACK, "NO_STOCK", "no stock of this value"))
    rail.name = "wechat_coupon"
    run(rail)
    assert notices("payout_failed") == []  # the money came from the fund: it landed in the balance instead
    (landed,) = notices("rebate_landed")
    assert landed.key == f"payout:{payout.id}:to-balance:landed" and landed.user_id == user.id
    assert (landed.facts["form"], landed.facts["amount_fen"]) == ("balance", 3_00)
