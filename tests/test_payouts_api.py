"""The payout endpoints: withdrawals, the user's payouts, and the operator's view and hand.

Every refusal is checked to change nothing: row counts, balances and the
payout's status are compared before and after.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from jobs.payouts import dispatch_due
from ledger import Leg, account, balance, check_ledger, post_entry
from models import AccountKind, AuditLog, LedgerFlow, Payout, RailControl, db, utcnow
from payouts import MoneySettings, enqueue_payout
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings
from tests.test_dispatch import ScriptedRail, ok
from tests.test_wechat_callbacks import table_counts

WITHDRAW = "/api/v1/me/withdrawals"
MINE = "/api/v1/me/payouts"
ADMIN = "/admin/api/payouts"
RAILS = "/admin/api/rails"


# -- helpers -------------------------------------------------------------------------


def cash_of(user) -> int:
    return balance(account(AccountKind.USER_CASH, "user", user.id))


def clearing(kind: AccountKind) -> int:
    return balance(account(kind))


def fund(user, amount_fen: int, key: str = "") -> None:
    post_entry(
        f"fund:{user.id}:{key}",
        "rebate",
        [
            Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -amount_fen),
            Leg(account(AccountKind.USER_CASH, "user", user.id), amount_fen),
        ],
    )
    db.session.commit()


def snapshot() -> dict:
    """Everything a refusal must leave alone."""
    db.session.expire_all()
    kinds = (
        AccountKind.REBATE_PAYABLE,
        AccountKind.PAYOUT_IN_TRANSIT,
        AccountKind.WECHAT_SETTLEMENT,
        AccountKind.PLATFORM_MARKETING_FUND,
    )
    balances = {k: clearing(k) for k in kinds}
    db.session.commit()  # reading a balance may have created the (empty) platform account
    statuses = dict(db.session.execute(select(Payout.id, Payout.status)).all())
    counts = table_counts()
    counts.pop("idempotency_records", None)  # the key's claim is released, never a business row
    return {"counts": counts, "statuses": statuses, "balances": balances}


def run(rail, settings=None, at=None):
    outcomes = dispatch_due(
        {rail.name: rail},
        settings=settings or DispatchSettings(money=MoneySettings()),
        clock=(lambda: at) if at else utcnow,
    )
    db.session.expire_all()
    return outcomes


def later(days: int = 1):
    return utcnow() + timedelta(days=days)


def reason(text: str = "checked on the merchant platform") -> dict:
    return {"reason": text}


@pytest.fixture
def cash_user(app, make_user):
    """A user with a mini-program identity and ``amount_fen`` of cash balance."""

    def make(amount_fen: int = 5_00):
        user = make_user(appid=app.config["WECHAT_APPID"])
        fund(user, amount_fen)
        return user

    return make


@pytest.fixture
def queued(app, cash_user):
    """A payout queued from a user's cash balance (as a cash rebate leaves it)."""

    def make(amount_fen: int = 5_00, rail: str = "wechat_change", user=None):
        user = user or cash_user(amount_fen)
        if user is not None and cash_of(user) < amount_fen:
            fund(user, amount_fen, key=str(utcnow().timestamp()))
        payout = enqueue_payout(
            number_prefix="",
            rail=rail,
            user_id=user.id,
            amount_fen=amount_fen,
            source=account(AccountKind.USER_CASH, "user", user.id),
            key=f"q:{user.id}:{utcnow().timestamp()}",
            memo="test payout",
        )
        db.session.commit()
        return payout

    return make


@pytest.fixture
def needs_operator(queued):
    """A payout dead-lettered either after it reached WeChat (``sent=True``) or before."""

    def make(sent: bool, amount_fen: int = 5_00):
        payout = queued(amount_fen)
        answer = RailResult(Outcome.UNKNOWN, "TIMEOUT") if sent else RailResult(Outcome.CONFIG_ERROR, "NO_AUTH")
        run(ScriptedRail(answer), DispatchSettings(money=MoneySettings(), max_attempts=1))
        payout = db.session.get(Payout, payout.id)
        assert payout.status == "needs_operator" and (payout.sent_at is not None) is sent
        return payout

    return make


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")


@pytest.fixture
def finance(make_operator):
    return make_operator("finance")


def audits(action: str) -> list[AuditLog]:
    db.session.expire_all()
    return list(db.session.execute(select(AuditLog).filter_by(action=action)).scalars())


# -- withdrawals ---------------------------------------------------------------------


def test_withdrawing_3_of_5_yuan_queues_a_transfer_and_leaves_2(app, client, cash_user, user_headers):
    # given
    user = cash_user(5_00)
    # when
    response = client.post(WITHDRAW, json={"amount_fen": 3_00}, headers=user_headers(user))
    # then
    assert response.status_code == 201, response.json
    body = response.json
    assert (body["rail"], body["amount_fen"], body["status"]) == ("wechat_change", 3_00, "pending")
    assert "external_no" not in body and "package_info" not in body  # the user's view
    payout = db.session.get(Payout, body["id"])
    assert (payout.user_id, payout.external_no) == (user.id, f"TB{payout.id:012d}")
    assert cash_of(user) == 2_00
    assert clearing(AccountKind.REBATE_PAYABLE) == 3_00  # on the payout's own clearing flow
    flow = db.session.get(LedgerFlow, payout.flow)
    assert flow is not None and flow.closed_at is None
    assert f"flow {payout.flow}: 300 in flight on" in " ".join(check_ledger().in_flight)


@pytest.mark.parametrize(
    ("amount_fen", "status", "error"),
    [
        (99, 422, "below_withdrawal_minimum"),
        (5_01, 409, "insufficient_balance"),
        (0, 422, "validation_error"),
        (-1_00, 422, "validation_error"),
        ("300", 422, "validation_error"),
        (3.5, 422, "validation_error"),
    ],
)
def test_refused_withdrawal_changes_nothing(app, client, cash_user, user_headers, amount_fen, status, error):
    # given
    user = cash_user(5_00)
    before = snapshot()
    # when
    response = client.post(WITHDRAW, json={"amount_fen": amount_fen}, headers=user_headers(user))
    # then
    assert (response.status_code, response.json["error"]) == (status, error)
    assert snapshot() == before
    assert cash_of(user) == 5_00


def test_minimum_follows_the_setting(app, client, cash_user, user_headers):
    app.config["WITHDRAWAL_MIN_FEN"] = 2_00
    user = cash_user(5_00)
    assert client.post(WITHDRAW, json={"amount_fen": 1_99}, headers=user_headers(user)).status_code == 422
    assert client.post(WITHDRAW, json={"amount_fen": 2_00}, headers=user_headers(user)).status_code == 201
    assert cash_of(user) == 3_00


def test_withdrawing_everything_then_one_fen_more_is_refused(app, client, cash_user, user_headers):
    user = cash_user(5_00)
    assert client.post(WITHDRAW, json={"amount_fen": 5_00}, headers=user_headers(user)).status_code == 201
    before = snapshot()
    again = client.post(WITHDRAW, json={"amount_fen": 1_00}, headers=user_headers(user))
    assert (again.status_code, again.json["error"]) == (409, "insufficient_balance")
    assert snapshot() == before and cash_of(user) == 0


def test_idempotency_key_replay_makes_one_payout(app, client, cash_user, user_headers):
    # given
    user = cash_user(5_00)
    headers = user_headers(user, **{"Idempotency-Key": "withdraw-1"})
    # when
    first = client.post(WITHDRAW, json={"amount_fen": 3_00}, headers=headers)
    replay = client.post(WITHDRAW, json={"amount_fen": 3_00}, headers=headers)
    other_body = client.post(WITHDRAW, json={"amount_fen": 1_00}, headers=headers)
    # then
    assert first.status_code == replay.status_code == 201
    assert replay.json == first.json and replay.headers["Idempotent-Replayed"] == "true"
    assert (other_body.status_code, other_body.json["error"]) == (422, "idempotency_key_reused")
    assert db.session.query(Payout).count() == 1
    assert cash_of(user) == 2_00


def test_a_banned_user_cannot_withdraw(app, client, cash_user, user_headers):
    user = cash_user(5_00)
    headers = user_headers(user)
    user.status, user.banned_reason = "banned", "fraud"
    db.session.commit()
    before = snapshot()
    response = client.post(WITHDRAW, json={"amount_fen": 3_00}, headers=headers)
    assert (response.status_code, response.json["error"]) == (403, "user_banned")
    assert snapshot() == before and cash_of(user) == 5_00


def test_a_ban_committed_after_the_request_read_the_person_refuses_the_withdrawal(app, cash_user):
    from sqlalchemy import update

    from models import User
    from payouts import MoneySettings
    from payouts.operations import PayoutError, withdraw

    # given: the request read the person (active); a ban commits before the withdrawal takes the row lock
    user = cash_user(5_00)
    assert user.is_active
    db.session.execute(
        update(User).where(User.id == user.id).values(status="banned").execution_options(synchronize_session=False)
    )
    db.session.commit()
    db.session.execute(select(User.id).where(User.id == user.id))  # (the stale row stays in the session)
    # when / then: refused under the lock, nothing queued
    with pytest.raises(PayoutError) as refused:
        withdraw(user, 3_00, 1_00, "k1", money=MoneySettings())
    assert refused.value.code == "user_banned"
    db.session.rollback()
    assert db.session.query(Payout).count() == 0 and cash_of(user) == 5_00


def test_anonymous_withdrawal_is_401(client):
    assert client.post(WITHDRAW, json={"amount_fen": 3_00}).status_code == 401


def test_ten_concurrent_withdrawals_of_the_whole_balance_pay_once(app, cash_user, user_headers):
    # given
    user = cash_user(5_00)
    headers = [user_headers(user, **{"Idempotency-Key": f"all-{i}"}) for i in range(10)]
    user_id = user.id  # the threads must not lazy-load through this thread's session
    db.session.rollback()
    barrier = threading.Barrier(10)
    statuses: list[int] = []
    seen_balances: list[int] = []

    def withdraw(h: dict) -> None:
        with app.app_context():
            client = app.test_client()
            barrier.wait()
            statuses.append(client.post(WITHDRAW, json={"amount_fen": 5_00}, headers=h).status_code)
            seen_balances.append(balance(account(AccountKind.USER_CASH, "user", user_id)))
            db.session.remove()

    # when
    threads = [threading.Thread(target=withdraw, args=(h,)) for h in headers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then
    assert sorted(statuses) == [201] + [409] * 9
    db.session.rollback()
    assert db.session.query(Payout).count() == 1
    assert cash_of(user) == 0
    assert min(seen_balances) >= 0


# -- the user's payouts ---------------------------------------------------------------


def test_my_payouts_show_package_info_only_while_waiting(app, client, queued, cash_user, user_headers):
    # given: one waiting for confirmation, one paid after it had waited, one still queued, and a stranger's
    user = cash_user(15_00)
    waiting, paid, pending = (queued(5_00, user=user) for _ in range(3))
    stranger_payout = queued(7_00)
    rail = ScriptedRail(
        *[RailResult(Outcome.WAITING_USER_CONFIRM, "WAIT_USER_CONFIRM", package_info=f"pkg-{n}") for n in range(4)],
        query_answers=(ok("bill-paid"),),
    )
    pending.held = True  # stays pending
    db.session.commit()
    run(rail)
    paid_row = db.session.get(Payout, paid.id)
    paid_row.next_attempt_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    run(rail)  # queries the one due: paid
    # when
    items = client.get(MINE, headers=user_headers(user)).json["items"]
    # then
    by_id = {i["id"]: i for i in items}
    assert set(by_id) == {waiting.id, paid.id, pending.id}
    assert stranger_payout.id not in by_id
    assert by_id[waiting.id]["status"] == "waiting_user_confirm"
    assert by_id[waiting.id]["package_info"] == db.session.get(Payout, waiting.id).package_info
    assert by_id[paid.id]["status"] == "succeeded" and "package_info" not in by_id[paid.id]
    assert by_id[pending.id]["status"] == "pending" and "package_info" not in by_id[pending.id]
    assert all("external_no" not in i and "user_id" not in i for i in items)


def test_confirm_opened_is_recorded_but_changes_no_status(app, client, queued, user_headers):
    # given
    payout = queued()
    run(ScriptedRail(RailResult(Outcome.WAITING_USER_CONFIRM, package_info="pkg-1")))
    user = db.session.get(Payout, payout.id).user_id
    from models import User

    headers = user_headers(db.session.get(User, user))
    before = snapshot()
    # when
    first = client.post(f"{MINE}/{payout.id}/confirm-opened", headers=headers)
    opened_at = db.session.get(Payout, payout.id).confirm_opened_at
    again = client.post(f"{MINE}/{payout.id}/confirm-opened", headers=headers)
    # then
    assert first.status_code == again.status_code == 200
    assert first.json["status"] == "waiting_user_confirm" and first.json["package_info"] == "pkg-1"
    db.session.expire_all()
    row = db.session.get(Payout, payout.id)
    assert opened_at is not None and row.confirm_opened_at == opened_at  # the first opening is kept
    assert snapshot() == before  # not proof of anything: no status, no money


def test_someone_elses_payout_is_404_and_untouched(app, client, queued, make_user, user_headers):
    payout = queued()
    stranger = make_user(appid=app.config["WECHAT_APPID"])
    response = client.post(f"{MINE}/{payout.id}/confirm-opened", headers=user_headers(stranger))
    missing = client.post(f"{MINE}/999999/confirm-opened", headers=user_headers(stranger))
    assert response.status_code == missing.status_code == 404
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).confirm_opened_at is None


# -- operator: reading ---------------------------------------------------------------


def test_list_by_status_and_rail(app, client, queued, admin):
    # given
    _, headers = admin
    transfer = queued(5_00)
    packet = queued(6_00, rail="cash_red_packet")
    paid = queued(7_00)
    rail = ScriptedRail(ok("bill-7"))
    transfer.held = packet.held = True
    db.session.commit()
    run(rail)
    # when
    everything = client.get(ADMIN, headers=headers).json["items"]
    pending = client.get(ADMIN, query_string={"status": "pending"}, headers=headers).json["items"]
    succeeded = client.get(ADMIN, query_string={"status": "succeeded"}, headers=headers).json["items"]
    packets = client.get(ADMIN, query_string={"rail": "cash_red_packet"}, headers=headers).json["items"]
    both = client.get(ADMIN, query_string={"status": "pending", "rail": "wechat_change"}, headers=headers)
    # then
    assert [i["id"] for i in everything] == [paid.id, packet.id, transfer.id]
    assert [i["id"] for i in pending] == [packet.id, transfer.id]
    assert [(i["id"], i["wechat_ref"]) for i in succeeded] == [(paid.id, "bill-7")]
    assert [i["id"] for i in packets] == [packet.id]
    assert [i["id"] for i in both.json["items"]] == [transfer.id]
    assert everything[0]["external_no"] == f"TB{paid.id:012d}" and everything[0]["user_id"]


def test_one_payout_lists_every_attempt(app, client, queued, admin):
    # given: a timeout, then a query that finds it paid
    _, headers = admin
    payout = queued()
    rail = ScriptedRail(RailResult(Outcome.UNKNOWN, "TIMEOUT", "read timed out"), query_answers=(ok("bill-9"),))
    run(rail)
    run(rail, at=later())
    # when
    body = client.get(f"{ADMIN}/{payout.id}", headers=headers).json
    # then
    assert (body["status"], body["attempts"] and len(body["attempts"])) == ("succeeded", 2)
    assert [(a["action"], a["response_code"], a["outcome"]) for a in body["attempts"]] == [
        ("send", "TIMEOUT", "unknown"),
        ("query", "SUCCESS", "succeeded"),
    ]
    assert all("openid" not in a["request"] for a in body["attempts"])  # masked summary
    assert client.get(f"{ADMIN}/999999", headers=headers).status_code == 404


# -- operator: resend ----------------------------------------------------------------


def test_resend_of_a_payout_that_reached_wechat_queries_first(app, client, needs_operator, admin):
    # given
    operator, headers = admin
    payout = needs_operator(sent=True)
    # when
    response = client.post(f"{ADMIN}/{payout.id}/resend", json=reason(), headers=headers)
    # then
    assert response.status_code == 200, response.json
    assert (response.json["status"], response.json["attempts"]) == ("unknown", 0)
    rail = ScriptedRail(query_answers=(ok("bill-q"),))
    run(rail)
    assert rail.calls == [("query", payout.external_no)]  # no send: it may already exist at WeChat
    assert db.session.get(Payout, payout.id).status == "succeeded"
    [entry] = audits("payout.resend")
    assert (entry.operator_id, entry.target_id, entry.reason) == (operator.id, str(payout.id), reason()["reason"])


def test_resend_of_a_payout_that_never_left_sends_the_same_number(app, client, needs_operator, admin):
    _, headers = admin
    payout = needs_operator(sent=False)
    response = client.post(f"{ADMIN}/{payout.id}/resend", json=reason(), headers=headers)
    assert response.json["status"] == "pending"
    rail = ScriptedRail(ok())
    run(rail)
    assert rail.calls == [("send", payout.external_no)]
    assert db.session.get(Payout, payout.id).status == "succeeded"


@pytest.mark.parametrize("state", ["pending", "waiting_user_confirm", "succeeded"])
def test_resend_outside_needs_operator_is_409_and_changes_nothing(app, client, queued, admin, state):
    # given
    _, headers = admin
    payout = queued()
    if state == "waiting_user_confirm":
        run(ScriptedRail(RailResult(Outcome.WAITING_USER_CONFIRM, package_info="p")))
    elif state == "succeeded":
        run(ScriptedRail(ok()))
    before = snapshot()
    # when
    response = client.post(f"{ADMIN}/{payout.id}/resend", json=reason(), headers=headers)
    # then
    assert (response.status_code, response.json["error"]) == (409, "payout_state")
    assert snapshot() == before
    assert db.session.get(Payout, payout.id).status == state


def test_resend_replayed_with_its_key_acts_once(app, client, needs_operator, admin):
    _, headers = admin
    payout = needs_operator(sent=False)
    keyed = {**headers, "Idempotency-Key": "resend-1"}
    first = client.post(f"{ADMIN}/{payout.id}/resend", json=reason(), headers=keyed)
    replay = client.post(f"{ADMIN}/{payout.id}/resend", json=reason(), headers=keyed)
    assert first.status_code == replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.json == first.json
    assert len(audits("payout.resend")) == 1


# -- operator: cancel ----------------------------------------------------------------


def test_cancel_of_an_unsent_payout_returns_the_money_and_closes_the_flow(app, client, queued, admin):
    # given
    _, headers = admin
    payout = queued(5_00)
    from models import User

    user = db.session.get(User, payout.user_id)
    assert cash_of(user) == 0
    # when
    response = client.post(f"{ADMIN}/{payout.id}/cancel", json=reason("user asked"), headers=headers)
    # then
    assert response.status_code == 200 and response.json["status"] == "cancelled"
    db.session.expire_all()
    assert cash_of(user) == 5_00
    assert clearing(AccountKind.REBATE_PAYABLE) == 0
    assert db.session.get(LedgerFlow, payout.flow).closed_at is not None
    assert check_ledger().ok
    assert db.session.query(Payout).filter_by(retry_of_id=payout.id).count() == 0
    [entry] = audits("payout.cancel")
    assert entry.reason == "user asked" and entry.details == {"status": "cancelled"}


class CancellableRail(ScriptedRail):
    """A transfer rail that can also cancel an unconfirmed bill."""

    def __init__(self, *send_answers, cancel_answer=None, **kwargs):
        super().__init__(*send_answers, **kwargs)
        self.cancel_answer = cancel_answer or RailResult(Outcome.CANCELLED, "CANCELLED")

    def cancel(self, external_no):
        self.calls.append(("cancel", external_no))
        return self.cancel_answer


def test_cancel_of_a_waiting_transfer_is_done_at_wechat_by_the_next_pass(app, client, queued, admin):
    # given: a transfer waiting for the user's confirmation (5 yuan in transit)
    _, headers = admin
    payout = queued(5_00)
    waiting = RailResult(Outcome.WAITING_USER_CONFIRM, "WAIT_USER_CONFIRM", package_info="p")
    rail = CancellableRail(waiting, query_answers=(waiting,))
    run(rail)
    # when
    response = client.post(f"{ADMIN}/{payout.id}/cancel", json=reason("user asked"), headers=headers)
    # then: only requested; the money stays in transit until WeChat confirms the cancellation
    assert response.status_code == 200 and response.json["status"] == "waiting_user_confirm"
    db.session.expire_all()
    assert clearing(AccountKind.PAYOUT_IN_TRANSIT) == 5_00
    # when: the dispatcher's next pass
    run(rail)
    # then
    assert rail.calls == [("send", payout.external_no), ("query", payout.external_no), ("cancel", payout.external_no)]
    row = db.session.get(Payout, payout.id)
    from models import User

    assert row.status == "cancelled"
    assert cash_of(db.session.get(User, row.user_id)) == 5_00
    assert clearing(AccountKind.PAYOUT_IN_TRANSIT) == 0 and clearing(AccountKind.REBATE_PAYABLE) == 0
    assert db.session.get(LedgerFlow, row.flow).closed_at is not None


def test_a_payout_whose_request_reached_wechat_is_resolved_not_cancelled(app, client, needs_operator, admin):
    # given: dead-lettered after WeChat refused its request (NO_AUTH): the number was used once
    _, headers = admin
    payout = needs_operator(sent=False)
    # when / then: cancel is refused (only resolve, with evidence, may say it failed)
    refused = client.post(f"{ADMIN}/{payout.id}/cancel", json=reason(), headers=headers)
    assert refused.status_code == 409
    resolved = client.post(
        f"{ADMIN}/{payout.id}/resolve", json={"outcome": "failed", "reason": "NO_AUTH: refused"}, headers=headers
    )
    assert resolved.json["status"] == "failed"
    db.session.expire_all()
    assert clearing(AccountKind.REBATE_PAYABLE) == 0 and clearing(AccountKind.PAYOUT_IN_TRANSIT) == 0


@pytest.mark.parametrize("state", ["unknown", "needs_operator_sent", "succeeded", "cancelled"])
def test_cancel_of_a_payout_that_may_have_left_is_409_and_changes_nothing(
    app, client, queued, needs_operator, admin, state
):
    # given
    _, headers = admin
    if state == "needs_operator_sent":
        payout = needs_operator(sent=True)
    else:
        payout = queued()
        answers = {
            "unknown": RailResult(Outcome.UNKNOWN, "TIMEOUT"),
            "succeeded": ok(),
            "cancelled": RailResult(Outcome.FALLBACK, "NO_OPENID"),
        }
        run(ScriptedRail(answers[state]))
        if state == "cancelled":  # the fallback queued nothing for wechat_change: it stays in the balance
            assert db.session.get(Payout, payout.id).status == "cancelled"
    before = snapshot()
    # when
    response = client.post(f"{ADMIN}/{payout.id}/cancel", json=reason(), headers=headers)
    # then
    assert (response.status_code, response.json["error"]) == (409, "payout_state")
    assert snapshot() == before
    assert audits("payout.cancel") == []


def test_cancel_of_a_payout_whose_send_was_answered_systemerror_is_refused(app, client, queued, admin):
    # given: every send answered SYSTEMERROR ("busy: retry the same number, only one is sent") until dead-lettered
    _, headers = admin
    payout = queued()
    rail = ScriptedRail(*[RailResult(Outcome.RETRY, "SYSTEMERROR", "busy")] * 2)
    run(rail, DispatchSettings(money=MoneySettings(), max_attempts=2))
    run(rail, DispatchSettings(money=MoneySettings(), max_attempts=2), at=later())
    assert db.session.get(Payout, payout.id).status == "needs_operator"
    before = snapshot()
    # when
    response = client.post(f"{ADMIN}/{payout.id}/cancel", json=reason(), headers=headers)
    # then: it reached WeChat twice; only a query (resend) or evidence (resolve) may settle it
    assert response.status_code == 409
    assert snapshot() == before


# -- operator: resolve ---------------------------------------------------------------


def test_resolve_succeeded_moves_the_money_out_to_settlement(app, client, needs_operator, admin):
    # given: 5 yuan in transit, WeChat's merchant platform shows it paid
    _, headers = admin
    payout = needs_operator(sent=True)
    assert clearing(AccountKind.PAYOUT_IN_TRANSIT) == 5_00
    # when
    response = client.post(
        f"{ADMIN}/{payout.id}/resolve", json={"outcome": "succeeded", "reason": "paid per bill"}, headers=headers
    )
    # then
    assert response.status_code == 200 and response.json["status"] == "succeeded"
    db.session.expire_all()
    assert clearing(AccountKind.PAYOUT_IN_TRANSIT) == 0 and clearing(AccountKind.REBATE_PAYABLE) == 0
    assert clearing(AccountKind.WECHAT_SETTLEMENT) == 5_00
    assert db.session.get(LedgerFlow, payout.flow).closed_at is not None
    [entry] = audits("payout.resolve")
    assert entry.details == {"outcome": "succeeded"} and entry.reason == "paid per bill"


def test_resolve_failed_returns_the_money_to_the_user(app, client, needs_operator, admin):
    _, headers = admin
    payout = needs_operator(sent=True)
    from models import User

    user = db.session.get(User, payout.user_id)
    response = client.post(
        f"{ADMIN}/{payout.id}/resolve", json={"outcome": "failed", "reason": "bill shows FAIL"}, headers=headers
    )
    assert response.json["status"] == "failed"
    db.session.expire_all()
    assert cash_of(user) == 5_00
    assert clearing(AccountKind.PAYOUT_IN_TRANSIT) == 0 and clearing(AccountKind.WECHAT_SETTLEMENT) == 0
    assert db.session.get(LedgerFlow, payout.flow).closed_at is not None


@pytest.mark.parametrize(
    "body",
    [
        {"outcome": "maybe", "reason": "unsure"},
        {"outcome": "succeeded"},
        {"outcome": "succeeded", "reason": "no"},
    ],
)
def test_resolve_with_a_bad_body_is_422(app, client, needs_operator, admin, body):
    _, headers = admin
    payout = needs_operator(sent=True)
    before = snapshot()
    response = client.post(f"{ADMIN}/{payout.id}/resolve", json=body, headers=headers)
    assert response.status_code == 422
    assert snapshot() == before


@pytest.mark.parametrize("state", ["pending", "succeeded"])
def test_resolve_outside_needs_operator_is_409(app, client, queued, admin, state):
    _, headers = admin
    payout = queued()
    if state == "succeeded":
        run(ScriptedRail(ok()))
    before = snapshot()
    response = client.post(
        f"{ADMIN}/{payout.id}/resolve", json={"outcome": "failed", "reason": "mistake"}, headers=headers
    )
    assert (response.status_code, response.json["error"]) == (409, "payout_state")
    assert snapshot() == before


def test_resolve_replayed_with_its_key_moves_money_once(app, client, needs_operator, admin):
    _, headers = admin
    payout = needs_operator(sent=True)
    keyed = {**headers, "Idempotency-Key": "resolve-1"}
    body = {"outcome": "succeeded", "reason": "paid per bill"}
    first = client.post(f"{ADMIN}/{payout.id}/resolve", json=body, headers=keyed)
    replay = client.post(f"{ADMIN}/{payout.id}/resolve", json=body, headers=keyed)
    assert first.status_code == replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    db.session.expire_all()
    assert clearing(AccountKind.WECHAT_SETTLEMENT) == 5_00
    assert len(audits("payout.resolve")) == 1


# -- operator: manual payouts --------------------------------------------------------


def manual(client, headers, user, amount_fen, **extra):
    body = {"user_id": user.id, "amount_fen": amount_fen, "reason": "goodwill for a late delivery"}
    return client.post(ADMIN, json=body, headers={"Idempotency-Key": uuid.uuid4().hex, **headers, **extra})


def test_manual_payout_below_the_threshold_is_pending_at_once(app, client, make_user, admin):
    # given
    operator, headers = admin
    user = make_user(appid=app.config["WECHAT_APPID"])
    # when
    response = manual(client, headers, user, 49_999)
    # then
    assert response.status_code == 201, response.json
    assert (response.json["status"], response.json["amount_fen"], response.json["rail"]) == (
        "pending",
        49_999,
        "wechat_change",
    )
    db.session.expire_all()
    assert clearing(AccountKind.PLATFORM_MARKETING_FUND) == -49_999
    assert clearing(AccountKind.REBATE_PAYABLE) == 49_999
    [entry] = audits("payout.manual")
    assert entry.operator_id == operator.id and entry.details == {"amount_fen": 49_999, "user_id": user.id}
    rail = ScriptedRail(ok())
    run(rail)
    assert rail.calls == [("send", response.json["external_no"])]


def test_manual_payout_at_the_threshold_waits_for_a_second_operator(app, client, make_user, admin, finance):
    # given
    creator, creator_headers = admin
    approver, approver_headers = finance
    user = make_user(appid=app.config["WECHAT_APPID"])
    created = manual(client, creator_headers, user, 50_000)
    payout_id = created.json["id"]
    # then: it waits and the dispatcher leaves it alone
    assert (created.status_code, created.json["status"]) == (201, "needs_operator")
    rail = ScriptedRail(ok())
    run(rail, at=later())
    assert rail.calls == []
    # when: the creator tries to approve, or to resend it past the approval
    before = snapshot()
    own = client.post(f"{ADMIN}/{payout_id}/approve", json=reason("looks fine"), headers=creator_headers)
    resent = client.post(f"{ADMIN}/{payout_id}/resend", json=reason("push it"), headers=creator_headers)
    # then
    assert (own.status_code, own.json["error"]) == (403, "same_operator")
    assert (resent.status_code, resent.json["error"]) == (409, "approval_required")
    assert snapshot() == before
    # when: a second operator approves
    approved = client.post(f"{ADMIN}/{payout_id}/approve", json=reason("second pair of eyes"), headers=approver_headers)
    # then
    assert (approved.status_code, approved.json["status"]) == (200, "pending")
    db.session.expire_all()
    row = db.session.get(Payout, payout_id)
    assert (row.created_by_operator_id, row.approved_by_operator_id) == (creator.id, approver.id)
    assert [a.operator_id for a in audits("payout.approve")] == [approver.id]
    again = client.post(f"{ADMIN}/{payout_id}/approve", json=reason("again"), headers=approver_headers)
    assert (again.status_code, again.json["error"]) == (409, "no_approval_needed")
    run(rail)
    assert rail.calls == [("send", row.external_no)]


def test_threshold_follows_the_setting(app, client, make_user, admin):
    app.config["MANUAL_PAYOUT_APPROVAL_FEN"] = 1_000
    _, headers = admin
    user = make_user()
    assert manual(client, headers, user, 999).json["status"] == "pending"
    assert manual(client, headers, user, 1_000).json["status"] == "needs_operator"


def test_manual_payouts_split_under_the_threshold_add_up_to_it(app, client, make_user, make_operator, admin):
    # given: approval from 10 yuan; one operator pays a person three times 4 yuan
    app.config["MANUAL_PAYOUT_APPROVAL_FEN"] = 1_000
    _, headers = admin
    amy, bob = make_user(), make_user()
    assert [manual(client, headers, amy, 400).json["status"] for _ in range(3)] == [
        "pending",
        "pending",
        "needs_operator",  # 12 yuan in a day: one payout that needs a second pair of eyes
    ]
    # the same operator to someone else: the 8 yuan it paid unapproved still count
    assert manual(client, headers, bob, 300).json["status"] == "needs_operator"
    # another operator to amy: what amy was paid unapproved counts too
    _, other = make_operator("admin")
    assert manual(client, other, amy, 300).json["status"] == "needs_operator"
    # another operator to a third person: nothing of theirs counts
    assert manual(client, other, make_user(), 999).json["status"] == "pending"


def test_a_manual_payout_waiting_for_approval_can_be_cancelled_back_to_the_fund(
    app, client, make_user, admin, make_operator
):
    _, headers = admin
    user = make_user()
    payout_id = manual(client, headers, user, 60_000).json["id"]
    response = client.post(f"{ADMIN}/{payout_id}/cancel", json=reason("not needed"), headers=headers)
    assert response.json["status"] == "cancelled"
    db.session.expire_all()
    assert clearing(AccountKind.PLATFORM_MARKETING_FUND) == 0 and clearing(AccountKind.REBATE_PAYABLE) == 0
    # a second operator's approval arriving after the cancel is told what happened (a probe found no_approval_needed)
    _, other = make_operator("finance")
    late = client.post(f"{ADMIN}/{payout_id}/approve", json=reason("looks right"), headers=other)
    assert (late.status_code, late.json["error"]) == (409, "payout_state") and "cancelled" in late.json["message"]


def test_a_manual_payout_waiting_for_approval_cannot_be_resolved_as_paid(app, client, make_user, admin):
    _, headers = admin
    payout_id = manual(client, headers, make_user(), 60_000).json["id"]
    before = snapshot()
    response = client.post(
        f"{ADMIN}/{payout_id}/resolve", json={"outcome": "succeeded", "reason": "paid by hand"}, headers=headers
    )
    assert response.status_code == 409
    assert snapshot() == before


def test_manual_payout_replayed_with_its_key_makes_one(app, client, make_user, admin):
    _, headers = admin
    user = make_user()
    first = manual(client, headers, user, 1_00, **{"Idempotency-Key": "manual-1"})
    replay = manual(client, headers, user, 1_00, **{"Idempotency-Key": "manual-1"})
    assert first.status_code == replay.status_code == 201 and replay.json["id"] == first.json["id"]
    assert db.session.query(Payout).count() == 1
    assert len(audits("payout.manual")) == 1
    assert clearing(AccountKind.PLATFORM_MARKETING_FUND) == -1_00


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"user_id": 999_999}, 404),
        ({"amount_fen": 0}, 422),
        ({"amount_fen": 2_000_001}, 422),
        ({"rail": "wechat_coupon"}, 422),
        ({"reason": ""}, 422),
    ],
)
def test_refused_manual_payout_changes_nothing(app, client, make_user, admin, change, status):
    _, headers = admin
    user = make_user()
    before = snapshot()
    body = {"user_id": user.id, "amount_fen": 1_00, "reason": "goodwill", **change}
    response = client.post(ADMIN, json=body, headers={**headers, "Idempotency-Key": "refused-1"})
    assert response.status_code == status
    assert snapshot() == before


# -- operator: roles -----------------------------------------------------------------


def test_support_reads_but_cannot_act(app, client, make_operator, needs_operator, make_user):
    # given
    _, headers = make_operator("support")
    payout = needs_operator(sent=True)
    before = snapshot()
    # then: reading is fine
    assert client.get(ADMIN, headers=headers).status_code == 200
    assert client.get(f"{ADMIN}/{payout.id}", headers=headers).status_code == 200
    assert client.get(RAILS, headers=headers).status_code == 200
    # and every action is 403
    acting = [
        client.post(f"{ADMIN}/{payout.id}/resend", json=reason(), headers=headers),
        client.post(f"{ADMIN}/{payout.id}/cancel", json=reason(), headers=headers),
        client.post(f"{ADMIN}/{payout.id}/approve", json=reason(), headers=headers),
        client.post(f"{ADMIN}/{payout.id}/resolve", json={"outcome": "failed", "reason": "x" * 5}, headers=headers),
        client.post(ADMIN, json={"user_id": make_user().id, "amount_fen": 100, "reason": "gift"}, headers=headers),
        client.put(f"{RAILS}/wechat_change", json={"enabled": False, "reason": "stop"}, headers=headers),
    ]
    assert [r.status_code for r in acting] == [403] * 6
    before["counts"]["users"] += 1
    before["counts"]["user_identities"] += 1
    assert snapshot() == before


def test_merchant_staff_and_users_see_nothing(app, client, make_operator, queued, user_headers):
    _, headers = make_operator("merchant_staff")
    payout = queued()
    from models import User

    as_user = user_headers(db.session.get(User, payout.user_id))
    assert client.get(ADMIN, headers=headers).status_code == 403
    assert client.get(f"{ADMIN}/{payout.id}", headers=headers).status_code == 403
    assert client.get(RAILS, headers=headers).status_code == 403
    assert client.post(f"{ADMIN}/{payout.id}/cancel", json=reason(), headers=headers).status_code == 403
    assert client.get(ADMIN, headers=as_user).status_code == 401
    assert client.get(ADMIN).status_code == 401
    assert db.session.get(Payout, payout.id).status == "pending"


# -- operator: rail switches ---------------------------------------------------------


def test_switching_a_rail_off_stops_the_dispatcher_at_once_and_on_again_resumes(app, client, queued, admin):
    # given
    operator, headers = admin
    payout = queued()
    # when
    off = client.put(f"{RAILS}/wechat_change", json={"enabled": False, "reason": "WeChat incident"}, headers=headers)
    rail = ScriptedRail(ok())
    run(rail)
    # then
    assert off.status_code == 200 and off.json == {
        "rail": "wechat_change",
        "enabled": False,
        "reason": "WeChat incident",
    }
    assert rail.calls == []
    assert db.session.get(Payout, payout.id).status == "pending"
    listed = {r["rail"]: r for r in client.get(RAILS, headers=headers).json["items"]}
    assert listed["wechat_change"] == {
        "rail": "wechat_change",
        "configured": True,
        "enabled": False,
        "paused_until": None,
        "reason": "WeChat incident",
    }
    assert listed["cash_red_packet"]["enabled"] is True and set(listed) == {
        "wechat_change",
        "cash_red_packet",
        "wechat_coupon",
        "card_coupon",
        "profit_sharing",
    }
    # profit sharing sends only in the service-provider fund flow
    assert listed["profit_sharing"]["configured"] is False
    assert listed["profit_sharing"]["reason"] == "not configured: set FUND_FLOW=service_provider"
    [entry] = audits("rail.switch")
    assert (entry.operator_id, entry.target_id, entry.details) == (operator.id, "wechat_change", {"enabled": False})
    # when: switched on again
    client.put(f"{RAILS}/wechat_change", json={"enabled": True, "reason": "resolved"}, headers=headers)
    run(rail)
    assert rail.calls == [("send", payout.external_no)]


def test_switching_on_clears_a_notenough_pause(app, client, queued, admin):
    _, headers = admin
    queued()
    run(ScriptedRail(RailResult(Outcome.PAUSE_RAIL, "NOT_ENOUGH", "top up")))
    # then: the listing says what the dispatcher does: a paused rail is off until its pause ends
    paused = {r["rail"]: r for r in client.get(RAILS, headers=headers).json["items"]}["wechat_change"]
    assert paused["paused_until"] is not None and paused["enabled"] is False
    client.put(f"{RAILS}/wechat_change", json={"enabled": True, "reason": "topped up"}, headers=headers)
    db.session.expire_all()
    assert db.session.get(RailControl, "wechat_change").paused_until is None
    listed = {r["rail"]: r for r in client.get(RAILS, headers=headers).json["items"]}["wechat_change"]
    assert (listed["enabled"], listed["paused_until"]) == (True, None)


def test_switching_an_unknown_rail_is_404_and_a_bad_body_422(app, client, admin):
    _, headers = admin
    before = snapshot()
    assert client.put(f"{RAILS}/balance", json={"enabled": False, "reason": "stop"}, headers=headers).status_code == 404
    bad = client.put(f"{RAILS}/wechat_change", json={"enabled": "maybe", "reason": "stop"}, headers=headers)
    assert bad.status_code == 422
    assert snapshot() == before


def test_rail_switch_replayed_with_its_key_is_audited_once(app, client, admin):
    _, headers = admin
    keyed = {**headers, "Idempotency-Key": "rail-1"}
    body = {"enabled": False, "reason": "incident"}
    first = client.put(f"{RAILS}/cash_red_packet", json=body, headers=keyed)
    replay = client.put(f"{RAILS}/cash_red_packet", json=body, headers=keyed)
    assert first.status_code == replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert len(audits("rail.switch")) == 1


def test_manual_payouts_sent_at_once_still_add_up_to_the_threshold(app, make_user, admin):
    # given: approval from 10 yuan; one operator sends six 4-yuan payouts to one person at the same moment
    from types import SimpleNamespace

    from tests.concurrency import together

    app.config["MANUAL_PAYOUT_APPROVAL_FEN"] = 1_000
    _, headers = admin
    user = SimpleNamespace(id=make_user().id)  # (read in the threads, outside the test's session)

    def work(i: int) -> str:
        answer = manual(app.test_client(), headers, user, 400)
        assert answer.status_code == 201, answer.json
        return answer.json["status"]

    statuses = together(6, work)
    assert not [s for s in statuses if isinstance(s, Exception)], statuses
    # then: whatever the order, at most two go without a second operator (8 yuan); the rest wait for one
    assert sorted(statuses) == ["needs_operator"] * 4 + ["pending"] * 2


def test_a_manual_payout_below_the_limit_takes_no_approval_after_the_fact(app, client, make_user, admin, finance):
    # given: a manual payout below the limit, gone out at once without a second operator (outside probe)
    _, creator_headers = admin
    _, approver_headers = finance
    payout_id = manual(client, creator_headers, make_user(), 100).json["id"]
    before = snapshot()
    # when: a second operator "approves" it
    answer = client.post(f"{ADMIN}/{payout_id}/approve", json=reason("other approve"), headers=approver_headers)
    # then: refused, and nothing recorded: no approval, no audit line (its amount still counts toward the limit)
    assert (answer.status_code, answer.json["error"]) == (409, "no_approval_needed")
    assert snapshot() == before
    db.session.expire_all()
    assert db.session.get(Payout, payout_id).approved_by_operator_id is None
    assert audits("payout.approve") == []
    detail = client.get(f"{ADMIN}/{payout_id}", headers=creator_headers).json
    assert detail["awaiting_approval"] is False


def test_a_manual_payout_below_the_limit_back_with_an_operator_is_resent_not_approved(app, client, make_user, admin):
    # given: a manual payout below the limit that reached WeChat, timed out and came back to an operator
    _, headers = admin
    payout_id = manual(client, headers, make_user(appid=app.config["WECHAT_APPID"]), 100).json["id"]
    run(ScriptedRail(RailResult(Outcome.UNKNOWN, "TIMEOUT")), DispatchSettings(money=MoneySettings(), max_attempts=1))
    db.session.expire_all()
    assert db.session.get(Payout, payout_id).status == "needs_operator"
    assert client.get(f"{ADMIN}/{payout_id}", headers=headers).json["awaiting_approval"] is False
    # when: an operator resends it
    resent = client.post(f"{ADMIN}/{payout_id}/resend", json=reason("query it again"), headers=headers)
    # then: back to the dispatcher (queried first: it may have reached WeChat), no approval asked
    assert (resent.status_code, resent.json["status"]) == (200, "unknown"), resent.json


def test_a_held_manual_payout_says_it_awaits_approval(app, client, make_user, admin):
    _, headers = admin
    payout_id = manual(client, headers, make_user(), 60_000).json["id"]
    assert client.get(f"{ADMIN}/{payout_id}", headers=headers).json["awaiting_approval"] is True


def test_payouts_under_the_limit_back_with_an_operator_still_add_up_to_it(app, client, make_user, admin):
    # given: manual payouts just under the limit to one person while the rail is broken (review finding)
    _, headers = admin
    limit = app.config["MANUAL_PAYOUT_APPROVAL_FEN"]
    user = make_user(appid=app.config["WECHAT_APPID"])
    broken = DispatchSettings(money=MoneySettings(), max_attempts=1)
    first = manual(client, headers, user, limit - 1).json
    run(ScriptedRail(RailResult(Outcome.CONFIG_ERROR, "NO_AUTH")), broken)
    assert client.get(f"{ADMIN}/{first['id']}", headers=headers).json["status"] == "needs_operator"
    # when: the next one is made
    second = manual(client, headers, user, limit - 1).json
    # then: the first, back with an operator (it goes out again on a resend, unapproved), still counts: held
    assert (second["status"], second["awaiting_approval"]) == ("needs_operator", True)
    resent = client.post(f"{ADMIN}/{first['id']}/resend", json=reason("rail fixed"), headers=headers)
    assert resent.status_code == 200
    refused = client.post(f"{ADMIN}/{second['id']}/resend", json=reason("rail fixed"), headers=headers)
    assert (refused.status_code, refused.json["error"]) == (409, "approval_required")
