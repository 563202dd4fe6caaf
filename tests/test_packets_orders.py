"""Packets (claim, lock, expire) and orders (create, close, pay): every refusal changes nothing.

Domain errors carry a ``kind`` the web layer turns into a status; the tests check
both the code and the status it maps to.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from ledger import account, balance
from models import (
    AccountKind,
    Alert,
    LedgerEntry,
    Order,
    PaymentNotification,
    Payout,
    Rebate,
    RedPacket,
    db,
    utcnow,
)
from rebate import claim_packet, close_order, create_order, issue_packet
from rebate.errors import BudgetExhausted, RebateError
from rebate.orders import LineRequest
from rebate.packets import expire_due_packets, generate_batch
from tests.payment_helpers import pay_as_wechat
from tests.test_wechat_callbacks import table_counts
from web.errors import KIND_STATUS

K = AccountKind
RULES = {
    "roles": [
        {"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 5_00},
        {"role": "inviter", "rate_bps": 300, "form": "wechat_change", "cap_fen": 3_00},
    ]
}
RESERVATION = 10_00 + 5_00 + 3_00  # face + the sum of the caps


def count(model) -> int:
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def budget(campaign) -> tuple[int, int]:
    db.session.refresh(campaign)
    return campaign.budget_reserved_fen, campaign.budget_committed_fen


def status_of(exc: RebateError) -> int:
    return KIND_STATUS[exc.kind]


def refused(call, *args, **kwargs) -> RebateError:
    """Run a domain operation that must fail; roll back as the request handler would."""
    with pytest.raises(RebateError) as info:
        call(*args, **kwargs)
    db.session.rollback()
    return info.value


def packet_state(packet) -> tuple:
    db.session.refresh(packet)
    return packet.status, packet.owner_id, packet.reserved_fen, packet.order_id


@pytest.fixture
def campaign(make_campaign):
    return make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00)


@pytest.fixture
def codes(campaign):
    packets = generate_batch(campaign, 3, utcnow(), batch_ref="b1")
    db.session.commit()
    return [p.claim_code for p in packets]


def give(campaign, user, ref=None) -> RedPacket:
    packet = issue_packet(campaign, user, source="test", source_ref=ref or str(user.id), now=utcnow())
    db.session.commit()
    return packet


def order_for(user, product, packet=None, quantity=1) -> Order:
    order = create_order(user, [LineRequest(product.id, quantity)], packet.id if packet else None, utcnow())
    db.session.commit()
    return order


# --- claims --------------------------------------------------------------------------------


def test_claim_by_code_reserves_face_plus_all_caps(campaign, codes, make_user):
    alice = make_user()

    packet = claim_packet(codes[0].lower(), alice, utcnow())
    db.session.commit()

    assert packet_state(packet) == ("issued", alice.id, RESERVATION, None)
    assert packet.claimed_at is not None
    assert budget(campaign) == (RESERVATION, 0)


def test_claiming_twice_returns_the_same_packet_and_reserves_once(campaign, codes, make_user):
    alice = make_user()
    first = claim_packet(codes[0], alice, utcnow())
    db.session.commit()

    again = claim_packet(codes[0], alice, utcnow())
    db.session.commit()

    assert again.id == first.id
    assert budget(campaign) == (RESERVATION, 0)


def test_someone_elses_claimed_code_is_not_found(campaign, codes, make_user):
    alice, mallory = make_user(), make_user()
    packet = claim_packet(codes[0], alice, utcnow())
    db.session.commit()

    error = refused(claim_packet, codes[0], mallory, utcnow())

    assert (status_of(error), error.code) == (404, "not_found")
    assert packet_state(packet) == ("issued", alice.id, RESERVATION, None)
    assert budget(campaign) == (RESERVATION, 0)


def test_unknown_code_is_not_found(campaign, codes, make_user):
    error = refused(claim_packet, "ZZZZZZZZZZZZZZZZ", make_user(), utcnow())

    assert status_of(error) == 404
    assert budget(campaign) == (0, 0)


def test_expired_code_is_refused(campaign, codes, make_user):
    packet = db.session.execute(select(RedPacket).filter_by(claim_code=codes[0])).scalar_one()
    packet.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()

    error = refused(claim_packet, codes[0], make_user(), utcnow())

    assert (status_of(error), error.code) == (409, "packet_expired")
    assert packet_state(packet) == ("unclaimed", None, 0, None)
    assert budget(campaign) == (0, 0)


def test_exhausted_budget_refuses_the_claim_and_changes_nothing(make_campaign, make_user):
    # given: a budget of 30 yuan fits one reservation of 18 but not two
    campaign = make_campaign(RULES, budget_limit_fen=30_00, packet_amount_fen=10_00)
    first, second = generate_batch(campaign, 2, utcnow(), batch_ref="b1")
    db.session.commit()
    claim_packet(first.claim_code, make_user(), utcnow())
    db.session.commit()

    # when
    error = refused(claim_packet, second.claim_code, make_user(), utcnow())

    # then
    assert isinstance(error, BudgetExhausted)
    assert (status_of(error), error.code) == (409, "budget_exhausted")
    assert packet_state(second) == ("unclaimed", None, 0, None)
    assert budget(campaign) == (RESERVATION, 0)


@pytest.mark.parametrize("status", ["paused", "ended", "draft"])
def test_claim_from_a_campaign_that_is_not_running_is_refused(campaign, codes, make_user, status):
    campaign.status = status
    db.session.commit()

    error = refused(claim_packet, codes[0], make_user(), utcnow())

    assert (status_of(error), error.code) == (409, "campaign_not_running")
    assert budget(campaign) == (0, 0)


def test_claim_after_the_campaign_ended_by_date_is_refused(campaign, codes, make_user):
    campaign.ends_at = utcnow() - timedelta(minutes=1)
    db.session.commit()

    error = refused(claim_packet, codes[0], make_user(), utcnow())

    assert (status_of(error), error.code) == (409, "campaign_not_running")


# --- creating orders -----------------------------------------------------------------------


@pytest.fixture
def shop(make_merchant, make_product):
    merchant = make_merchant()
    return merchant, make_product(merchant, price_fen=100_00, category="noodles")


def assert_order_refused(call, packet, expected_status, expected_code, *args):
    orders, state = count(Order), packet_state(packet)
    error = refused(call, *args)
    assert (status_of(error), error.code) == (expected_status, expected_code), str(error)
    assert count(Order) == orders
    assert packet_state(packet) == state
    return error


def test_order_with_a_packet_locks_it_and_discounts_exactly(campaign, make_user, shop):
    _, noodles = shop
    alice = make_user()
    packet = give(campaign, alice)

    order = order_for(alice, noodles, packet, quantity=2)

    assert (order.total_fen, order.discount_fen, order.payable_fen) == (200_00, 10_00, 190_00)
    assert packet_state(packet) == ("locked", alice.id, RESERVATION, order.id)
    assert [(li.quantity, li.unit_price_fen, li.line_total_fen) for li in order.lines] == [(2, 100_00, 200_00)]


def test_someone_elses_packet_is_not_found(campaign, make_user, shop):
    _, noodles = shop
    alice, mallory = make_user(), make_user()
    packet = give(campaign, alice)

    assert_order_refused(
        create_order, packet, 404, "packet_not_found", mallory, [LineRequest(noodles.id, 1)], packet.id, utcnow()
    )


def test_unknown_packet_is_not_found(campaign, make_user, shop):
    _, noodles = shop
    alice = make_user()
    packet = give(campaign, alice)

    assert_order_refused(
        create_order, packet, 404, "packet_not_found", alice, [LineRequest(noodles.id, 1)], packet.id + 99, utcnow()
    )


def test_expired_packet_is_refused(campaign, make_user, shop):
    _, noodles = shop
    alice = make_user()
    packet = give(campaign, alice)
    packet.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()

    assert_order_refused(
        create_order, packet, 409, "packet_expired", alice, [LineRequest(noodles.id, 1)], packet.id, utcnow()
    )


def test_locked_packet_is_refused(campaign, make_user, shop):
    _, noodles = shop
    alice = make_user()
    packet = give(campaign, alice)
    order_for(alice, noodles, packet)

    assert_order_refused(
        create_order, packet, 409, "packet_locked", alice, [LineRequest(noodles.id, 1)], packet.id, utcnow()
    )


def test_used_packet_is_refused(campaign, make_user, shop, pay):
    _, noodles = shop
    alice = make_user()
    packet = give(campaign, alice)
    pay(order_for(alice, noodles, packet))

    assert_order_refused(
        create_order, packet, 409, "packet_used", alice, [LineRequest(noodles.id, 1)], packet.id, utcnow()
    )


def test_below_the_packets_minimum_spend_is_refused(make_campaign, make_user, shop):
    _, noodles = shop
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00, packet_min_spend_fen=100_01)
    alice = make_user()
    packet = give(campaign, alice)

    assert_order_refused(
        create_order, packet, 422, "below_min_spend", alice, [LineRequest(noodles.id, 1)], packet.id, utcnow()
    )


def test_packet_for_another_category_is_refused(make_campaign, make_user, shop):
    _, noodles = shop
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00, packet_categories=["tea"])
    alice = make_user()
    packet = give(campaign, alice)

    error = assert_order_refused(
        create_order, packet, 422, "packet_wrong_category", alice, [LineRequest(noodles.id, 1)], packet.id, utcnow()
    )
    assert "tea" in str(error)


def test_packet_for_another_merchant_is_refused(make_campaign, make_merchant, make_user, shop):
    _, noodles = shop
    other = make_merchant()
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00, packet_merchant_id=other.id)
    alice = make_user()
    packet = give(campaign, alice)

    assert_order_refused(
        create_order, packet, 422, "packet_wrong_merchant", alice, [LineRequest(noodles.id, 1)], packet.id, utcnow()
    )


def test_category_packet_discounts_only_eligible_lines_and_checks_minimum_on_them(
    make_campaign, make_user, make_product, shop
):
    merchant, noodles = shop
    tea = make_product(merchant, price_fen=8_00, category="tea")
    campaign = make_campaign(
        RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00, packet_categories=["tea"], packet_min_spend_fen=15_00
    )
    alice = make_user()
    packet = give(campaign, alice)

    # one tea (8 yuan) is below the 15-yuan minimum even though the order is 108
    assert_order_refused(
        create_order,
        packet,
        422,
        "below_min_spend",
        alice,
        [LineRequest(noodles.id, 1), LineRequest(tea.id, 1)],
        packet.id,
        utcnow(),
    )

    # two teas (16) qualify; the discount is the packet's 10
    order = create_order(alice, [LineRequest(noodles.id, 1), LineRequest(tea.id, 2)], packet.id, utcnow())
    db.session.commit()
    assert (order.total_fen, order.discount_fen, order.payable_fen) == (116_00, 10_00, 106_00)


def test_packet_larger_than_the_order_leaves_1_fen_payable(campaign, make_user, make_product):
    alice = make_user()
    packet = give(campaign, alice)
    cheap = make_product(price_fen=3_00)

    order = order_for(alice, cheap, packet)

    assert (order.total_fen, order.discount_fen, order.payable_fen) == (3_00, 2_99, 1)


def test_close_order_unlocks_the_packet(campaign, make_user, shop):
    _, noodles = shop
    alice = make_user()
    packet = give(campaign, alice)
    order = order_for(alice, noodles, packet)

    close_order(order, utcnow())
    db.session.commit()

    assert order.status == "closed"
    assert packet_state(packet) == ("issued", alice.id, RESERVATION, None)
    assert budget(campaign) == (RESERVATION, 0)
    # and it can be spent again
    assert order_for(alice, noodles, packet).discount_fen == 10_00


def test_close_order_after_the_packet_expired_expires_it_and_frees_its_reservation(campaign, make_user, shop):
    _, noodles = shop
    alice = make_user()
    packet = give(campaign, alice)
    order = order_for(alice, noodles, packet)

    close_order(order, packet.expires_at + timedelta(seconds=1))
    db.session.commit()

    assert packet_state(packet) == ("expired", alice.id, 0, None)
    assert budget(campaign) == (0, 0)


def test_closing_a_paid_order_is_refused(campaign, make_user, shop, pay):
    _, noodles = shop
    order = order_for(make_user(), noodles)
    pay(order)

    error = refused(close_order, order, utcnow())

    assert (status_of(error), error.code) == (409, "order_not_open")
    assert db.session.get(Order, order.id).status == "paid"


def test_expire_due_packets_expires_issued_packets_and_releases_reservations(campaign, codes, make_user, shop):
    # given: one issued packet past its validity, one locked in an order, one still valid
    _, noodles = shop
    alice = make_user()
    issued = claim_packet(codes[0], alice, utcnow())
    locked = claim_packet(codes[1], alice, utcnow())
    valid = give(campaign, alice, ref="valid")
    db.session.commit()
    order_for(alice, noodles, locked)
    assert budget(campaign) == (3 * RESERVATION, 0)
    later = valid.expires_at - timedelta(seconds=1)
    for packet in (issued, locked):
        packet.expires_at = later - timedelta(seconds=1)
    # the batch's third packet (never claimed) was made before `valid`: on a slow machine more than a second
    # before, so its validity would end before `later` too; it is not what this test is about
    unclaimed = db.session.execute(select(RedPacket).filter_by(claim_code=codes[2])).scalar_one()
    unclaimed.expires_at = valid.expires_at
    db.session.commit()

    # when
    expired = expire_due_packets(later)
    db.session.commit()

    # then: only the issued one expires and its reservation is freed; the locked one waits for its order
    assert expired == 1
    assert packet_state(issued) == ("expired", alice.id, 0, None)
    assert packet_state(locked)[0] == "locked"
    assert packet_state(valid)[0] == "issued"
    assert budget(campaign) == (2 * RESERVATION, 0)
    assert expire_due_packets(later) == 0


def test_expire_due_packets_handles_unclaimed_batch_packets(campaign, codes, make_user):
    # given: an issued packet and an unclaimed batch packet, both past their validity
    alice = make_user()
    issued = claim_packet(codes[0], alice, utcnow())
    unclaimed = db.session.execute(select(RedPacket).filter_by(claim_code=codes[2])).scalar_one()
    now = utcnow()
    for packet in (issued, unclaimed):
        packet.expires_at = now - timedelta(seconds=1)
    db.session.commit()

    # when
    expired = expire_due_packets(now)
    db.session.commit()

    # then: both are expired (or at least the run does not fail), and the issued one's reservation is back
    assert expired == 2
    assert packet_state(issued) == ("expired", alice.id, 0, None)
    assert packet_state(unclaimed)[0] == "expired"
    assert budget(campaign) == (0, 0)


# --- apply_payment -------------------------------------------------------------------------


def test_amount_mismatch_flags_the_order_and_moves_no_money(campaign, make_user, shop):
    _, noodles = shop
    alice = make_user()
    packet = give(campaign, alice)
    order = order_for(alice, noodles, packet)

    outcome = pay_as_wechat(order.out_trade_no, "tx-1", order.payable_fen - 1, utcnow(), notification_id="N1")
    db.session.commit()

    assert outcome == "mismatch_flagged"
    db.session.refresh(order)
    assert order.status == "created"
    assert order.review_reason == "WeChat says 8999 fen was paid; the order asks 9000"
    [alert] = db.session.execute(select(Alert)).scalars().all()
    assert (alert.kind, alert.subject) == ("payment_mismatch", order.out_trade_no)
    assert count(PaymentNotification) == 0  # not accepted: WeChat keeps telling us, and is refused again
    assert count(LedgerEntry) == 0
    assert count(Rebate) == 0
    assert count(Payout) == 0
    assert packet_state(packet) == ("locked", alice.id, RESERVATION, order.id)
    assert budget(campaign) == (RESERVATION, 0)


def test_the_same_notification_twice_is_applied_once(campaign, make_user, shop, pay):
    _, noodles = shop
    alice = make_user()
    order = order_for(alice, noodles, give(campaign, alice))
    assert pay(order, notification_id="N1") == "applied"
    before = (count(LedgerEntry), count(Rebate), count(Payout), balance(account(K.USER_CASH, "user", alice.id)))
    assert before == (2, 2, 0, 4_50)  # sale + consumer rebate; the inviter rule has nobody

    assert pay(order, notification_id="N1") == "duplicate_notification"

    after = (count(LedgerEntry), count(Rebate), count(Payout), balance(account(K.USER_CASH, "user", alice.id)))
    assert after == before
    assert count(PaymentNotification) == 1
    assert budget(campaign) == (0, 14_50)


def test_paid_twice_without_notification_id_is_already_applied(campaign, make_user, shop, pay):
    _, noodles = shop
    alice = make_user()
    order = order_for(alice, noodles, give(campaign, alice))
    pay(order)
    entries = count(LedgerEntry)

    assert pay(order) == "already_applied"
    assert pay(order, notification_id="N2") == "already_applied"

    assert count(LedgerEntry) == entries
    assert count(Alert) == 0
    assert budget(campaign) == (0, 14_50)


def test_a_second_transaction_for_a_paid_order_is_alerted_not_applied(campaign, make_user, shop, pay):
    _, noodles = shop
    order = order_for(make_user(), noodles)
    pay(order)
    entries = count(LedgerEntry)

    outcome = pay_as_wechat(order.out_trade_no, "another-tx", order.payable_fen, utcnow())
    db.session.commit()

    assert outcome == "already_applied"
    assert count(LedgerEntry) == entries
    assert db.session.execute(select(Alert.kind)).scalars().all() == ["second_payment"]


def test_payment_of_a_closed_order_is_owed_back_and_moves_no_packet(campaign, make_user, shop):
    _, noodles = shop
    alice = make_user()
    packet = give(campaign, alice)
    order = order_for(alice, noodles, packet)
    close_order(order, utcnow())
    db.session.commit()

    outcome = pay_as_wechat(order.out_trade_no, "tx-late", order.payable_fen, utcnow())
    db.session.commit()

    assert outcome == "paid_after_close"
    assert count(LedgerEntry) == 1  # owed back to the payer (tests/test_paid_after_close.py): no sale
    assert packet_state(packet) == ("issued", alice.id, RESERVATION, None)
    assert db.session.execute(select(Alert.kind)).scalars().all() == ["paid_after_close"]


def test_unknown_out_trade_no_is_not_ours_and_records_nothing(app):
    before = table_counts()

    outcome = pay_as_wechat("O-NOPE", "tx", 100, utcnow(), notification_id="N1")
    db.session.commit()

    assert outcome == "not_ours"
    assert table_counts() == before


def test_paused_campaigns_packet_is_honoured_but_awards_nothing(campaign, make_user, shop, pay, client, user_headers):
    # given: alice holds a packet, then the campaign is paused
    _, noodles = shop
    alice = make_user()
    packet = give(campaign, alice)
    campaign.status = "paused"
    db.session.commit()

    # when: she spends it
    order = order_for(alice, noodles, packet)
    assert pay(order) == "applied"

    # then: the 10-yuan discount stands (the fund pays it), no rebate is paid, the rest of the reservation is freed
    assert (order.discount_fen, order.payable_fen) == (10_00, 90_00)
    rebates = db.session.execute(select(Rebate).filter_by(order_id=order.id).order_by(Rebate.id)).scalars().all()
    assert [(r.role, r.amount_fen, r.status, r.reason_code) for r in rebates] == [
        ("consumer", 0, "skipped", "campaign_not_running"),
        ("inviter", 0, "skipped", "campaign_not_running"),
    ]
    assert balance(account(K.USER_CASH, "user", alice.id)) == 0
    assert balance(account(K.PLATFORM_MARKETING_FUND)) == -10_00
    assert budget(campaign) == (0, 10_00)
    items = client.get("/api/v1/me/rebates", headers=user_headers(alice)).json["items"]
    consumer = next(i for i in items if i["role"] == "consumer")
    assert consumer["explanation"] == "No consumer rebate: the campaign was paused or had ended."


def test_unbudgeted_campaign_with_an_uncapped_rule_pays_the_full_rate(make_campaign, make_user, shop, pay):
    # given: no budget limit, so an uncapped 5 % rule is allowed
    _, noodles = shop
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]}, packet_amount_fen=10_00
    )
    alice = make_user()
    packet = give(campaign, alice)

    # when: a 100-yuan order is paid with the 10-yuan packet
    order = order_for(alice, noodles, packet)
    pay(order)

    # then: 5 % of 90 = 4.50, not "the campaign's budget ran out"
    rebate = db.session.execute(select(Rebate).filter_by(order_id=order.id)).scalar_one()
    assert (rebate.amount_fen, rebate.reason_code) == (4_50, "awarded")
    assert balance(account(K.USER_CASH, "user", alice.id)) == 4_50
