"""The console's operations pages (web/console/operations.py): payouts, reconciliation, lookup, audit log,
reviews and bans — every read and action through the admin API's own views."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from models import AuditLog, Ban, Payout, ReviewCase, db, utcnow
from models.base import BEIJING
from models.reconciliation import ReconciliationMismatch
from tests.browser import browser, live_server, page, shot, sign_in  # noqa: F401 - fixtures
from tests.console_helpers import post, token_of
from tests.console_helpers import sign_in as client_sign_in
from tests.review_helpers import community_case, hold_for_review, paid_order
from tests.test_payouts_api import cash_user, needs_operator, queued  # noqa: F401 - fixtures
from tests.test_reconciliation_api import make_mismatch, make_run


def status_of(payout_id: int) -> str:
    db.session.expire_all()
    return db.session.get(Payout, payout_id).status


def actions() -> list[str]:
    db.session.expire_all()
    return db.session.execute(select(AuditLog.action).order_by(AuditLog.id)).scalars().all()


def html(answer) -> str:
    return answer.get_data(as_text=True)


@pytest.fixture
def signed_in(client, make_operator):
    """Sign the test client in as a new operator of ``role``; returns (operator, csrf)."""

    def make(role: str = "admin", merchant=None):
        operator, headers = make_operator(role, merchant)
        return operator, client_sign_in(client, headers)

    return make


# -- payouts ---------------------------------------------------------------------------------------


def test_payouts_page_lists_those_needing_an_operator_and_filters(client, signed_in, needs_operator, queued):
    stuck, waiting = needs_operator(sent=False), queued()
    signed_in("support")  # support reads payouts
    answer = client.get("/console/payouts")
    assert answer.status_code == 200
    assert f'data-payout="{stuck.id}"' in html(answer) and f'data-payout="{waiting.id}"' not in html(answer)
    assert "¥5.00" in html(answer)
    pending = html(client.get("/console/payouts?status=pending"))
    assert f'data-payout="{waiting.id}"' in pending and f'data-payout="{stuck.id}"' not in pending
    everything = html(client.get("/console/payouts?status="))
    assert f'data-payout="{waiting.id}"' in everything and f'data-payout="{stuck.id}"' in everything
    detail = client.get(f"/console/payouts/{stuck.id}")
    assert detail.status_code == 200 and stuck.external_no in html(detail)
    assert 'id="resend"' not in html(detail)  # support may not act: no forms


def test_resend_from_the_page_is_the_apis_resend_and_audited(client, signed_in, needs_operator):
    payout = needs_operator(sent=False)
    operator, csrf = signed_in("finance")
    answer = post(client, f"/console/payouts/{payout.id}/resend", {"reason": "rail configured now"}, csrf)
    assert answer.status_code == 302 and answer.headers["Location"].endswith(f"/console/payouts/{payout.id}")
    assert status_of(payout.id) == "pending"
    line = db.session.execute(select(AuditLog).where(AuditLog.action == "payout.resend")).scalar_one()
    assert (line.operator_id, line.reason) == (operator.id, "rail configured now")
    assert "Resent" in html(client.get(answer.headers["Location"]))


def test_cancel_and_its_refusals_change_nothing(client, signed_in, needs_operator, queued):
    sent = needs_operator(sent=True)  # one that may have reached WeChat (made first: the dispatcher runs)
    payout = queued()  # an unsent one
    _, csrf = signed_in("admin")
    before = actions()
    # no reason: the API's validation message, nothing changed
    answer = post(client, f"/console/payouts/{payout.id}/cancel", {"reason": ""}, csrf)
    assert answer.status_code == 422 and "reason" in html(answer)
    # no CSRF token: 400 before anything runs
    assert client.post(f"/console/payouts/{payout.id}/cancel", data={"reason": "customer asked"}).status_code == 400
    # a payout that may have reached WeChat: the API's 409 in words
    refused = post(client, f"/console/payouts/{sent.id}/cancel", {"reason": "customer asked"}, csrf)
    assert refused.status_code == 409 and "only an unsent payout" in html(refused)
    assert (status_of(payout.id), status_of(sent.id)) == ("pending", "needs_operator")
    assert actions() == before
    # then it is done
    done = post(client, f"/console/payouts/{payout.id}/cancel", {"reason": "customer asked"}, csrf)
    assert done.status_code == 302 and status_of(payout.id) == "cancelled"
    assert actions()[-1] == "payout.cancel"


def test_resolve_from_evidence(client, signed_in, needs_operator):
    payout = needs_operator(sent=True)
    _, csrf = signed_in("finance")
    bad = post(
        client, f"/console/payouts/{payout.id}/resolve", {"outcome": "maybe", "reason": "merchant platform"}, csrf
    )
    assert bad.status_code == 422 and "outcome" in html(bad) and status_of(payout.id) == "needs_operator"
    done = post(
        client, f"/console/payouts/{payout.id}/resolve", {"outcome": "failed", "reason": "merchant platform"}, csrf
    )
    assert done.status_code == 302 and status_of(payout.id) == "failed"


def test_a_manual_payout_needs_a_second_operator_and_the_page_shows_the_refusal(app, client, make_user, make_operator):
    creator, creator_headers = make_operator("admin")
    user = make_user(appid=app.config["WECHAT_APPID"])
    body = {"user_id": user.id, "amount_fen": app.config["MANUAL_PAYOUT_APPROVAL_FEN"], "reason": "goodwill gesture"}
    created = client.post(
        "/admin/api/payouts", json=body, headers={"Idempotency-Key": uuid.uuid4().hex, **creator_headers}
    )
    payout_id = created.json["id"]
    csrf = client_sign_in(client, creator_headers)
    assert "awaiting approval" in html(client.get("/console/payouts"))
    own = post(client, f"/console/payouts/{payout_id}/approve", {"reason": "looks right"}, csrf)
    assert own.status_code == 403 and "a second operator must approve" in html(own)
    assert status_of(payout_id) == "needs_operator" and "payout.approve" not in actions()
    _, approver_headers = make_operator("finance")
    csrf = client_sign_in(client, approver_headers)
    approved = post(client, f"/console/payouts/{payout_id}/approve", {"reason": "second pair of eyes"}, csrf)
    assert approved.status_code == 302 and status_of(payout_id) == "pending"


def test_payout_pages_refuse_the_wrong_role_and_unknown_ids(client, signed_in, needs_operator, make_merchant):
    payout = needs_operator(sent=False)
    _, csrf = signed_in("support")
    assert post(client, f"/console/payouts/{payout.id}/resend", {"reason": "try again"}, csrf).status_code == 403
    assert status_of(payout.id) == "needs_operator"
    assert client.get("/console/payouts/999999").status_code == 404
    signed_in("merchant_staff", make_merchant())
    assert client.get("/console/payouts").status_code == 403
    assert client.get(f"/console/payouts/{payout.id}").status_code == 403


# -- reconciliation --------------------------------------------------------------------------------


@pytest.fixture
def mismatch():
    run = make_run("2024-05-01", "trade", lines_read=4, matched=3, mismatches=1)
    row = make_mismatch(run, "T-CONSOLE-1")
    db.session.commit()
    return row


def test_reconciliation_page_and_resolving_a_mismatch(client, signed_in, mismatch):
    operator, csrf = signed_in("finance")
    page_html = html(client.get("/console/reconciliation"))
    assert "2024-05-01" in page_html and "T-CONSOLE-1" in page_html and "¥100.00" in page_html
    url = f"/console/reconciliation/mismatches/{mismatch.id}/resolve"
    missing = post(client, url, {"resolution": ""}, csrf)
    assert missing.status_code == 422 and "resolution" in html(missing)
    assert client.post(url, data={"resolution": "fee booked"}).status_code == 400  # no CSRF
    db.session.expire_all()
    assert db.session.get(ReconciliationMismatch, mismatch.id).resolved_at is None
    done = post(client, url, {"resolution": "WeChat fee booked", "reason": "bill line 3"}, csrf)
    assert done.status_code == 302
    db.session.expire_all()
    row = db.session.get(ReconciliationMismatch, mismatch.id)
    assert (row.resolved_by, row.resolution) == (operator.id, "WeChat fee booked")
    assert "T-CONSOLE-1" not in html(client.get("/console/reconciliation"))  # open ones only
    assert "WeChat fee booked" in html(client.get("/console/reconciliation?status=resolved"))
    again = post(client, url, {"resolution": "twice"}, csrf)
    assert again.status_code == 409 and "already resolved" in html(again)
    bad = client.get("/console/reconciliation?kind=nonsense")
    assert bad.status_code == 422


def test_reconciliation_is_for_admin_and_finance(client, signed_in, mismatch):
    _, csrf = signed_in("support")
    assert client.get("/console/reconciliation").status_code == 403
    url = f"/console/reconciliation/mismatches/{mismatch.id}/resolve"
    assert post(client, url, {"resolution": "not mine"}, csrf).status_code == 403
    db.session.expire_all()
    assert db.session.get(ReconciliationMismatch, mismatch.id).resolved_at is None


# -- customer-service lookup -----------------------------------------------------------------------


@pytest.fixture
def two_shops(make_user, make_product, make_campaign, make_merchant, pay):
    """An order (with its packet and buyer) at each of two merchants."""
    mine, theirs = make_merchant(), make_merchant()
    own = paid_order(make_user, make_product, make_campaign, pay, merchant=mine)
    other = paid_order(make_user, make_product, make_campaign, pay, merchant=theirs)
    return mine, own, other


def test_lookup_traces_in_words_and_merchant_staff_see_only_their_own(client, signed_in, two_shops):
    mine, (order, buyer, _, _), (other, other_buyer, _, _) = two_shops
    signed_in("merchant_staff", mine)
    answer = client.get(f"/console/lookup?kind=order&id={order.id}")
    assert answer.status_code == 200 and 'class="timeline"' in html(answer)
    assert order.out_trade_no in html(answer)
    assert client.get(f"/console/lookup?kind=packet&id={order.packet_id}").status_code == 200
    assert client.get(f"/console/lookup?kind=user&id={buyer.id}").status_code == 200
    for kind, id_ in (("order", other.id), ("packet", other.packet_id), ("user", other_buyer.id), ("order", 999999)):
        assert client.get(f"/console/lookup?kind={kind}&id={id_}").status_code == 404
    assert client.get("/console/lookup").status_code == 200  # the form
    for bad in ("abc", "-1", "0", str(2**31)):
        answer = client.get(f"/console/lookup?kind=order&id={bad}")
        assert answer.status_code == 422 and "positive whole number" in html(answer)
    assert client.get(f"/console/lookup?kind=campaign&id={order.id}").status_code == 404


def test_support_traces_any_merchants_order(client, signed_in, two_shops):
    _, _, (other, _, _, _) = two_shops
    signed_in("support")
    answer = client.get(f"/console/lookup?kind=order&id={other.id}")
    assert answer.status_code == 200 and "timeline" in html(answer)


# -- audit log -------------------------------------------------------------------------------------


def test_audit_log_page_is_paged_and_for_admin_and_finance(client, signed_in, make_operator):
    operator, _ = signed_in("finance")
    answer = client.get("/console/audit")
    assert answer.status_code == 200 and "console.sign_in" in html(answer)
    assert "console.sign_in" not in html(client.get("/console/audit?offset=50"))
    signed_in("support")
    assert client.get("/console/audit").status_code == 403


def test_audit_log_page_filters_by_action_and_beijing_days(client, signed_in):
    signed_in("admin")
    today = utcnow().astimezone(BEIJING).date()
    page_html = html(client.get(f"/console/audit?action=console.&from={today}&to={today}"))
    assert 'id="audit-filters"' in page_html and "console.sign_in" in page_html
    assert "console.sign_in" not in html(client.get("/console/audit?action=campaign."))
    yesterday = today - timedelta(days=1)
    assert "console.sign_in" not in html(client.get(f"/console/audit?from={yesterday}&to={yesterday}"))
    refused = client.get("/console/audit?action=DROP")
    assert refused.status_code == 422 and "action" in html(refused)


# -- reviews ---------------------------------------------------------------------------------------


def test_review_queue_case_page_and_decision(client, signed_in, make_user):
    amy = make_user()
    case = community_case([f"user:{amy.id}", "device:0123456789abcdef01234567"])
    _, csrf = signed_in("support")
    queue = client.get("/console/reviews?status=open")
    assert queue.status_code == 200 and f'data-case="{case.id}"' in html(queue)
    assert f'data-case="{case.id}"' not in html(client.get("/console/reviews?status=decided"))
    assert "4 accounts on one device" in html(client.get(f"/console/reviews/{case.id}"))
    missing = post(client, f"/console/reviews/{case.id}", {"outcome": "release", "reason": ""}, csrf)
    assert missing.status_code == 422 and "reason" in html(missing)
    wrong = post(client, f"/console/reviews/{case.id}", {"outcome": "forgive", "reason": "fine"}, csrf)
    assert wrong.status_code == 422
    assert client.post(f"/console/reviews/{case.id}", data={"outcome": "release", "reason": "fine"}).status_code == 400
    db.session.expire_all()
    assert db.session.get(ReviewCase, case.id).status == "open"
    done = post(client, f"/console/reviews/{case.id}", {"outcome": "release", "reason": "a shared office"}, csrf)
    assert done.status_code == 302
    assert "Decided: release" in html(client.get(done.headers["Location"]))
    db.session.expire_all()
    assert db.session.get(ReviewCase, case.id).status == "decided"
    assert client.get("/console/reviews/999999").status_code == 404


def test_a_large_case_is_a_proposal_until_a_second_operator_agrees(
    client, signed_in, make_user, make_product, make_campaign, pay
):
    order, *_ = paid_order(make_user, make_product, make_campaign, pay, price_fen=5_000_00)
    case = hold_for_review(order)
    first, csrf = signed_in("support")
    proposed = post(client, f"/console/reviews/{case.id}", {"outcome": "revoke", "reason": "a ring"}, csrf)
    assert proposed.status_code == 302
    shown = html(client.get(proposed.headers["Location"]))
    assert "Proposal recorded: revoke" in shown and 'id="proposal"' in shown
    again = post(client, f"/console/reviews/{case.id}", {"outcome": "revoke", "reason": "a ring"}, csrf)
    assert again.status_code == 403  # the same reviewer cannot approve their own proposal (the API's status)
    _, csrf = signed_in("admin")
    agreed = post(client, f"/console/reviews/{case.id}", {"outcome": "revoke", "reason": "agreed"}, csrf)
    assert agreed.status_code == 302
    db.session.expire_all()
    assert db.session.get(ReviewCase, case.id).status == "decided"


def test_a_proposal_is_rejected_on_the_console_and_the_case_opens_again(
    client, signed_in, make_user, make_product, make_campaign, pay
):
    order, *_ = paid_order(make_user, make_product, make_campaign, pay, price_fen=5_000_00)
    case = hold_for_review(order)
    _, csrf = signed_in("support")
    assert (
        post(client, f"/console/reviews/{case.id}", {"outcome": "revoke", "reason": "a ring"}, csrf).status_code == 302
    )
    page = html(client.get(f"/console/reviews/{case.id}"))
    assert 'id="reject-proposal-form"' in page
    _, csrf = signed_in("admin")
    url = f"/console/reviews/{case.id}/proposal/reject"
    no_reason = post(client, url, {"reason": ""}, csrf)
    assert no_reason.status_code == 422 and "reason" in html(no_reason)
    rejected = post(client, url, {"reason": "the trail is a family's"}, csrf)
    assert rejected.status_code == 302
    shown = html(client.get(rejected.headers["Location"]))
    assert "Proposal rejected" in shown and 'id="proposal"' not in shown and 'id="reject-proposal-form"' not in shown
    db.session.expire_all()
    assert db.session.get(ReviewCase, case.id).status == "open"
    again = post(client, url, {"reason": "twice"}, csrf)
    assert again.status_code == 409 and "no proposal" in html(again)


def test_reviews_are_the_platforms(client, signed_in, make_merchant):
    case = community_case(["device:0123456789abcdef01234567", "net:10.1.2.0/24"])
    _, csrf = signed_in("merchant_staff", make_merchant())
    assert client.get("/console/reviews").status_code == 403
    assert client.get(f"/console/reviews/{case.id}").status_code == 403
    assert (
        post(client, f"/console/reviews/{case.id}", {"outcome": "release", "reason": "fine"}, csrf).status_code == 403
    )
    assert post(client, f"/console/reviews/{case.id}/proposal/reject", {"reason": "mine"}, csrf).status_code == 403


# -- bans ------------------------------------------------------------------------------------------


def bans_count() -> int:
    db.session.expire_all()
    return db.session.execute(select(func.count()).select_from(Ban)).scalar_one()


def test_ban_lift_and_their_refusals(client, signed_in, make_user):
    amy = make_user()
    _, csrf = signed_in("support")
    missing = post(client, "/console/bans", {"subject": "user", "value": str(amy.id), "reason": ""}, csrf)
    assert missing.status_code == 422 and "reason" in html(missing) and bans_count() == 0
    both = {"subject": "user", "value": str(amy.id), "reason": "sybil ring", "days": "7", "ends_at": "2030-01-01T10:00"}
    refused = post(client, "/console/bans", both, csrf)
    assert refused.status_code == 422 and "not both" in html(refused) and bans_count() == 0
    assert client.post("/console/bans", data={**both, "days": ""}).status_code == 400 and bans_count() == 0
    made = post(client, "/console/bans", {**both, "days": ""}, csrf)
    assert made.status_code == 302 and bans_count() == 1
    ban = db.session.execute(select(Ban)).scalar_one()
    assert ban.ends_at.isoformat().startswith("2030-01-01T02:00")  # 10:00 Beijing
    listing = html(client.get("/console/bans?subject=user&active=true"))
    assert f'data-ban="{ban.id}"' in listing
    assert f'data-ban="{ban.id}"' not in html(client.get("/console/bans?subject=device"))
    no_reason = post(client, f"/console/bans/{ban.id}/lift", {"reason": ""}, csrf)
    assert no_reason.status_code == 422
    db.session.expire_all()
    assert db.session.get(Ban, ban.id).lifted_at is None
    lifted = post(client, f"/console/bans/{ban.id}/lift", {"reason": "appeal upheld"}, csrf)
    assert lifted.status_code == 302
    db.session.expire_all()
    assert db.session.get(Ban, ban.id).lift_reason == "appeal upheld"
    assert post(client, "/console/bans/999999/lift", {"reason": "no such ban"}, csrf).status_code == 404


def test_a_ban_two_reviewers_made_is_lifted_on_the_console_by_a_proposal_and_another_operators_approval(
    client, make_operator, make_user
):
    from tests.test_ban_lift_four_eyes import two_person_ban

    amy = make_user()
    ban_id = two_person_ban(client, (make_operator("support"), make_operator("admin")), [f"user:{amy.id}"])
    (_, first), (_, second) = make_operator("admin"), make_operator("admin")
    csrf = client_sign_in(client, first)
    assert "提议解除 Propose lift" in html(client.get("/console/bans"))
    proposed = post(client, f"/console/bans/{ban_id}/lift", {"reason": "appeal: a shared household"}, csrf)
    assert proposed.status_code == 302
    listing = html(client.get("/console/bans"))
    assert "解除待批准 Lift proposed" in listing and "批准解除 Approve lift" in listing
    db.session.expire_all()
    assert db.session.get(Ban, ban_id).lifted_at is None  # still in force
    again = post(client, f"/console/bans/{ban_id}/lift", {"reason": "once more"}, csrf)
    assert again.status_code == 409 and "another operator approves it" in html(again)
    own = post(client, f"/console/bans/{ban_id}/lift/approve", {"reason": "my own"}, csrf)
    assert own.status_code == 403 and db.session.get(Ban, ban_id).lifted_at is None
    csrf = client_sign_in(client, second)
    approved = post(client, f"/console/bans/{ban_id}/lift/approve", {"reason": "household checked"}, csrf)
    assert approved.status_code == 302
    db.session.expire_all()
    assert db.session.get(Ban, ban_id).lift_reason == "household checked"
    assert "已解除 Lifted (approved)" in html(client.get("/console/bans"))


def test_finance_reads_bans_but_may_not_ban(client, signed_in, make_user, make_merchant):
    amy = make_user()
    _, csrf = signed_in("finance")
    answer = client.get("/console/bans")
    assert answer.status_code == 200 and 'id="ban-form"' not in html(answer)
    refused = post(client, "/console/bans", {"subject": "user", "value": str(amy.id), "reason": "sybil ring"}, csrf)
    assert refused.status_code == 403 and bans_count() == 0
    signed_in("merchant_staff", make_merchant())
    assert client.get("/console/bans").status_code == 403


# -- in a browser ----------------------------------------------------------------------------------


def test_cancelling_a_payout_in_a_browser_and_every_page(live_server, page, make_operator, queued, make_user):  # noqa: F811
    payout = queued()  # unsent: it can be cancelled
    community_case([f"user:{make_user().id}", "net:10.9.8.0/24"])
    _, headers = make_operator("admin")
    payout_id, user_id = payout.id, payout.user_id  # read before the server runs: the test's session stays idle
    sign_in(page, live_server, token_of(headers))
    page.goto(live_server.url + "/console/payouts?status=pending")
    shot(page, "ops_payouts")
    page.click(f'tr[data-payout="{payout_id}"] a')
    page.wait_for_load_state()
    shot(page, "ops_payout")
    page.on("dialog", lambda dialog: dialog.accept())  # the cancel form asks first
    page.fill('form[action$="/cancel"] input[name=reason]', "the customer asked")
    page.click("#cancel")
    page.wait_for_load_state()
    assert page.locator("#payout-status").inner_text() == "cancelled"
    assert "Cancelled" in page.locator(".flash.ok").inner_text()
    for name, path in (
        ("ops_reconciliation", "/console/reconciliation"),
        ("ops_lookup", f"/console/lookup?kind=user&id={user_id}"),
        ("ops_audit", "/console/audit"),
        ("ops_reviews", "/console/reviews"),
        ("ops_bans", "/console/bans"),
    ):
        page.goto(live_server.url + path)
        assert page.locator("h1").count() == 1, path
        shot(page, name)
    page.goto(live_server.url + "/console/reviews")
    page.locator("#reviews tbody a").first.click()
    page.wait_for_load_state()
    shot(page, "ops_review")
    assert page.console_errors == []
    db.session.rollback()
    assert status_of(payout_id) == "cancelled"


def test_a_form_without_its_csrf_token_is_refused_in_a_browser(live_server, page, make_operator, needs_operator):  # noqa: F811
    payout_id = needs_operator(sent=False).id
    _, headers = make_operator("finance")
    sign_in(page, live_server, token_of(headers))
    page.goto(f"{live_server.url}/console/payouts/{payout_id}")
    page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())")
    page.fill('form[action$="/resend"] input[name=reason]', "try once more")
    with page.expect_response(lambda r: r.url.endswith("/resend")) as sent:
        page.click("#resend")
    assert sent.value.status == 400
    assert "security token" in page.content()
    shot(page, "ops_csrf_refused")
    db.session.rollback()
    assert status_of(payout_id) == "needs_operator"


def test_merchant_staff_get_404_for_another_merchants_trace_in_a_browser(live_server, page, make_operator, two_shops):  # noqa: F811
    mine, (order, *_), (other, *_) = two_shops
    _, headers = make_operator("merchant_staff", mine)
    order_id, other_id = order.id, other.id
    sign_in(page, live_server, token_of(headers))
    own = page.goto(f"{live_server.url}/console/lookup?kind=order&id={order_id}")
    assert own.status == 200 and page.locator("ol.timeline li").count() > 0
    shot(page, "ops_lookup_merchant")
    theirs = page.goto(f"{live_server.url}/console/lookup?kind=order&id={other_id}")
    assert theirs.status == 404
    shot(page, "ops_lookup_404")


def test_a_manual_payout_below_the_limit_is_not_shown_awaiting_approval(app, client, make_user, make_operator):
    """As the API says (``awaiting_approval``): it went out without one (review finding)."""
    _, headers = make_operator("admin")
    user = make_user(appid=app.config["WECHAT_APPID"])
    body = {"user_id": user.id, "amount_fen": 100, "reason": "goodwill gesture"}
    created = client.post("/admin/api/payouts", json=body, headers={"Idempotency-Key": uuid.uuid4().hex, **headers})
    payout_id = created.json["id"]
    client_sign_in(client, headers)
    assert "awaiting approval" not in html(client.get("/console/payouts?status="))
    page = html(client.get(f"/console/payouts/{payout_id}"))
    assert "awaiting a second operator" not in page and "sent without one" in page
