"""The challenge story (docs/architecture.md §16), every balance after each step.

Alice and Bob hold 20 and 10 yuan of earlier rebates. Alice starts a two-day step challenge, 5 yuan from
the loser; Bob joins. Both stakes are reserved. Alice walks more: her stake comes back; Bob's funds a
5-yuan packet issued by Bob to Alice. Alice spends it on a 20-yuan order paid through WeChat Pay (15 yuan
paid): Bob, the packet's issuer, earns 10 % of it back (1.50, from the platform's marketing fund). Alice
refunds the order: Bob's 1.50 is clawed back, the packet's 5 yuan returns to Bob's stake, and the sweep
gives it back to his balance.
"""

from __future__ import annotations

from datetime import timedelta

import time_machine
from sqlalchemy import select

from challenges import (
    ChallengeSpec,
    create_challenge,
    join_challenge,
    record_steps,
    settle_challenge,
    standings,
    sweep_prizes,
)
from insights.trace import trace_packet
from models import Challenge, ChallengePrize, Notice, Order, PacketStatus, RedPacket, db
from rebate import create_order
from rebate.orders import LineRequest
from rebate.refunds import apply_refund
from tests.challenge_helpers import DAY1, DAY2, DAY3, NOW, at_beijing, cash, fund, fund_account, staked
from tests.money_helpers import app_money
from web.views import PLAIN_REASONS


def test_the_loser_pays_the_winner_a_packet_and_earns_back_when_it_is_spent(make_user, make_product, pay):
    alice, bob = make_user(), make_user()
    alice.nickname, bob.nickname = "Alice", "Bob"
    fund(alice.id, 20_00)
    fund(bob.id, 10_00)
    fund_before = fund_account()
    db.session.commit()

    # given: Alice starts a 2-day step challenge, 5 yuan from the loser; her stake is reserved at once
    spec = ChallengeSpec(kind="steps", days=2, stake=5_00, start_day=DAY1)
    challenge = create_challenge(alice.id, spec, NOW, group=("wecom", "chat-1"))
    db.session.commit()
    assert (cash(alice.id), staked(alice.id)) == (15_00, 5_00)

    # when Bob joins (twice: one participation, one reservation)
    join_challenge(challenge.id, bob.id, NOW + timedelta(minutes=5))
    join_challenge(challenge.id, bob.id, NOW + timedelta(minutes=6))
    db.session.commit()
    assert (cash(bob.id), staked(bob.id)) == (5_00, 5_00)
    assert db.session.get(Challenge, challenge.id).participants == 2

    # the days pass; WeRun uploads the morning after the last day close both days
    morning = at_beijing(DAY3, 8)
    record_steps(alice.id, [(DAY1, 12_000), (DAY2, 9_000)], morning)
    table = standings(challenge.id, morning)
    assert [w["user_ids"] for w in table.waiting] == [[bob.id], [bob.id]]  # Bob's data still awaited
    assert not table.decided
    record_steps(bob.id, [(DAY1, 8_000), (DAY2, 7_000)], morning)
    db.session.commit()
    table = standings(challenge.id, morning)
    assert table.decided and table.winners == [alice.id]
    assert [(r.user_id, r.total, r.rank, r.name) for r in table.rows] == [
        (alice.id, 21_000, 1, "Alice"),
        (bob.id, 15_000, 2, "Bob"),
    ]

    # settlement: Alice's stake back; Bob's funds a packet Bob issues to Alice
    assert settle_challenge(challenge.id, morning) is True
    db.session.commit()
    assert settle_challenge(challenge.id, morning) is False  # exactly once
    assert (cash(alice.id), staked(alice.id)) == (20_00, 0)
    assert (cash(bob.id), staked(bob.id)) == (5_00, 5_00)  # held for the packet until it is spent
    prize = db.session.execute(select(ChallengePrize)).scalar_one()
    packet = db.session.get(RedPacket, prize.packet_id)
    assert (packet.owner_id, packet.issuer_type, packet.issuer_user_id, packet.amount_fen) == (
        alice.id,
        "user",
        bob.id,
        5_00,
    )
    traced = trace_packet(packet, PLAIN_REASONS, morning)
    assert traced["challenge"]["challenge_id"] == challenge.id and traced["challenge"]["payer_user_id"] == bob.id
    assert any(f"challenge #{challenge.id}" in line for line in traced["lines"])
    events = {(n.user_id, n.event) for n in db.session.execute(select(Notice)).scalars()}
    assert {(alice.id, "challenge_settled"), (bob.id, "challenge_settled"), (alice.id, "packet_received")} <= events

    # Alice spends it on a 20-yuan order, paid through WeChat Pay
    with time_machine.travel(morning + timedelta(hours=2), tick=False):
        product = make_product(price_fen=20_00)
        order = create_order(alice, [LineRequest(product.id, 1)], packet.id, morning + timedelta(hours=2))
        db.session.commit()
        assert order.payable_fen == 15_00
        pay(order, at=morning + timedelta(hours=2))
    assert staked(bob.id) == 0  # the sale took the packet's value from Bob's stake
    assert cash(bob.id) == 5_00 + 1_50  # 10 % of the 15 yuan Alice paid, back to Bob (the issuer)
    assert fund_account() == fund_before - 1_50  # the loser's rebate is the platform's marketing
    assert cash(alice.id) == 20_00
    assert sweep_prizes(morning + timedelta(hours=3)) == 0  # the whole face was used: nothing to give back
    db.session.commit()

    # Alice refunds the order: Bob's rebate is clawed back, the packet's value returns to him
    order = db.session.get(Order, order.id)
    apply_refund(order.out_trade_no, "R-challenge-1", order.paid_fen, morning + timedelta(hours=4), money=app_money())
    db.session.commit()
    assert cash(bob.id) == 5_00
    assert staked(bob.id) == 5_00
    assert sweep_prizes(morning + timedelta(hours=5)) == 5_00
    db.session.commit()
    assert (cash(bob.id), staked(bob.id)) == (10_00, 0)
    assert sweep_prizes(morning + timedelta(hours=6)) == 0
    assert fund_account() == fund_before


def test_an_unused_packet_goes_back_to_the_loser_when_it_expires(make_user):
    from rebate.packets import expire_due_packets

    alice, bob = make_user(), make_user()
    fund(alice.id, 5_00)
    fund(bob.id, 5_00)
    challenge = create_challenge(alice.id, ChallengeSpec(kind="steps", days=1, stake=3_00, start_day=DAY1), NOW)
    join_challenge(challenge.id, bob.id, NOW)
    db.session.commit()
    late = challenge.report_deadline  # nobody uploaded: missing counts as zero, everyone tied at zero
    record_steps(bob.id, [(DAY1, 5_000)], at_beijing(DAY2, 9))
    assert settle_challenge(challenge.id, late) is True
    db.session.commit()
    assert (cash(alice.id), staked(alice.id)) == (2_00, 3_00)  # Alice lost (0 steps, counted as zero)
    assert cash(bob.id) == 5_00
    packet = db.session.execute(select(RedPacket)).scalar_one()
    assert expire_due_packets(packet.expires_at) == 1
    db.session.commit()
    assert db.session.get(RedPacket, packet.id).status == PacketStatus.EXPIRED
    assert sweep_prizes(packet.expires_at) == 3_00
    db.session.commit()
    assert (cash(alice.id), staked(alice.id)) == (5_00, 0)
