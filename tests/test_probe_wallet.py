"""Probes of the person's wallet (GET /api/v1/me/wallet): every fen of theirs is shown somewhere."""

from __future__ import annotations

from challenges.stakes import reserve
from ledger import check_ledger
from models import StakeSource, db
from tests.test_wallet import fund


def test_wallet_shows_what_challenge_stakes_hold_so_the_numbers_add_up(make_user, client, user_headers):
    # given: a person given 20 yuan and 500 points, who stakes 5 yuan in one challenge and 200 points in another
    alice = make_user()
    fund(alice, cash_fen=20_00, points=500)
    reserve(1, StakeSource.BALANCE, alice.id, 5_00)
    reserve(2, StakeSource.POINTS, alice.id, 200)
    db.session.commit()

    # when: she looks at her wallet
    shown = client.get("/api/v1/me/wallet", headers=user_headers(alice))

    # then: the stakes are shown beside what she holds: together the 20 yuan and 500 points she was given
    assert shown.status_code == 200, shown.json
    body = shown.json
    assert (body["cash_fen"], body["staked_fen"]) == (15_00, 5_00)
    assert (body["points"], body["points_staked"]) == (300, 200)
    assert body["cash_fen"] + body["held_for_orders_fen"] + body["staked_fen"] == 20_00
    assert body["points"] + body["points_held_for_orders"] + body["points_staked"] == 500
    report = check_ledger()
    assert report.ok, report.violations
