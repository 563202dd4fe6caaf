"""The challenges' job: start, cancel and settle due challenges, and give back what loser packets left.

Each challenge is its own transaction (``unit_of_work``): its row is taken with ``SKIP LOCKED``, its status
moves with every ledger entry, packet and notice of its settlement, so jobs on several nodes settle each
challenge once, and a crash mid-way rolls that one back for the next pass. Then each ended challenge packet
(expired, revoked, spent for less than its face, or refunded) gives its stake back to the loser, once per
packet (``challenges.sweep``). A challenge or prize that fails is skipped, logged and told to an operator once
(``jobs.payouts.row_failed``): the people's stakes stay held until it goes through.
"""

from __future__ import annotations

from collections import Counter

from challenges import due_challenges, open_prizes, settle_challenge, sweep_prize
from jobs.payouts import row_failed
from models import unit_of_work, utcnow


def settle_challenges() -> Counter:
    """The scheduled job: how many challenges were settled or cancelled, and fen given back to losers."""
    done: Counter = Counter()
    after = 0
    while True:  # page on by id: running challenges stay due for their whole period and must not hide the rest
        with unit_of_work():
            due = due_challenges(utcnow(), after=after)
        if not due:
            break
        for challenge_id in due:
            try:
                with unit_of_work():
                    if settle_challenge(challenge_id, utcnow()):
                        done["settled"] += 1
            except Exception as exc:  # one challenge that cannot settle must not stop the rest; its people's
                # stakes stay held until it does, so an operator is told (once), not only the log
                row_failed("challenge_not_settled", "challenge", challenge_id, exc)
                done["failed"] += 1
        after = due[-1]
    after = 0
    while True:  # page on by id: spent packets' prizes stay open for the refund watch and must not hide the rest
        with unit_of_work():
            prizes = open_prizes(after=after)
        if not prizes:
            return done
        for prize_id in prizes:
            try:
                with unit_of_work():
                    done["returned_fen"] += sweep_prize(prize_id, utcnow())
            except Exception as exc:  # one prize that cannot be swept must not stall every loser after it
                row_failed("challenge_prize_not_swept", "prize", prize_id, exc)
                done["sweep_failed"] += 1
        after = prizes[-1]
