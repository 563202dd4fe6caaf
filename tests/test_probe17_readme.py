"""Does the README tell the truth? Its promises checked against the app as the tests build it.

Two kinds of test here:

* discrepancies (``test_readme_discrepancy_…``): the README promises something the code does not do; each says
  which side is wrong in our judgement. They fail until one side is mended.
* pins (``test_readme_pin_…``): promises a newcomer or an operator relies on that hold today (the by-hand
  walkthrough, the CLI commands and Makefile targets it lists, Idempotency-Key, the public rules' versions, a worked
  example in fen), so that they keep holding.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select

from models import Campaign, Merchant, Payout, Refund, db
from risk.limits import ClaimLimits
from tests.test_simulator_e2e import app_settings, delivered  # noqa: F401 - fixtures: the simulator posts into the app
from tests.test_wechat_callbacks import no_network  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
RULES = {"roles": [{"role": "consumer", "rate_bps": 800, "form": "balance", "cap_fen": 10_00}]}


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")[1]


# --- discrepancies ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("written", ["1.0", "+1", " 1", "1_0"])
def test_readme_discrepancy_a_loosely_written_run_id_is_422_naming_it(client, admin, written):
    """README, API overview (errors): "a whole-number query parameter (`limit`, `offset`, an id) is written in digits
    with an optional minus: `1.0`, `1_0`, `+1` and ` 1` ... are 422 naming the field"; the same section names
    `GET /admin/api/reconciliation/mismatches?…&run_id=`.

    The code is wrong in our judgement: ``web.api._whole_number_fields`` finds only fields annotated ``int`` or
    ``int | None``; ``MismatchQuery.run_id`` is ``Annotated[int, Field(gt=0, le=MAX_ID)] | None``, so the check is
    skipped and pydantic's lax parsing reads ``1_0`` as run 10 and ``1.0``, ``+1``, `` 1`` as run 1 (200)."""
    answer = client.get("/admin/api/reconciliation/mismatches", query_string={"run_id": written}, headers=admin)

    assert answer.status_code == 422, answer.get_json()
    assert [d["field"] for d in answer.get_json()["details"]] == ["run_id"]


def test_readme_discrepancy_a_null_spike_auto_pause_in_a_campaign_patch_is_422(client, admin, make_campaign):
    """README, API overview (errors): "null changes a campaign's `ends_at` (no end), `max_packets` (no count limit)
    and `claim_limits` (the defaults) only; any other field sent as null is a 422".

    ``PATCH /admin/api/campaigns/<id> {"spike_auto_pause": null}`` answers 200 and changes nothing
    (``CampaignChanges.spike_auto_pause``: "null: unchanged"), while every other field refuses a null. Minor: in our
    judgement the code is the odd one out (its own rule, ``NEEDS_A_VALUE``, leaves this one field out); if the
    "null: unchanged" is wanted, the README's list must name it instead."""
    campaign = make_campaign(RULES, spike_auto_pause=True)

    answer = client.patch(
        f"/admin/api/campaigns/{campaign.id}",
        json={"spike_auto_pause": None, "reason": "probe the nulls"},
        headers=admin,
    )

    assert answer.status_code == 422, answer.get_json()


# --- pins: the by-hand walkthrough ------------------------------------------------------------------------------


def test_readme_pin_the_by_hand_walkthrough_gives_alice_her_4_yuan(app, client, delivered, no_network):  # noqa: F811
    """README, "By hand, the first half": each step's request and the answer field the shell reads, as written."""
    # ADMIN=$(flask seed-demo | sed -n 's/.*admin token (1 day): //p')
    seeded = app.test_cli_runner().invoke(args=["seed-demo"])
    assert seeded.exit_code == 0, seeded.output
    [token] = [
        line.split("admin token (1 day): ", 1)[1] for line in seeded.stdout.splitlines() if "admin token" in line
    ]
    admin = {"Authorization": f"Bearer {token}"}
    # NEWCOMER=... /admin/api/campaigns?limit=500 ... c["trigger"].get("kind") == "claim_code"
    listed = client.get("/admin/api/campaigns?limit=500", headers=admin)
    assert listed.status_code == 200, listed.get_json()
    newcomer = next(c for c in listed.json["items"] if c["trigger"].get("kind") == "claim_code")
    # "the seeded newcomer campaign has no per-address limits of its own" (The two commands)
    limits = ClaimLimits.parse(db.session.get(Campaign, newcomer["id"]).claim_limits)
    assert (limits.per_ip_per_day, limits.min_interval_seconds) == (None, None)  # per device and per IP
    db.session.rollback()
    # CODE=... /packets/batch {"count":1,"reason":"by hand"} → d["codes"][0]
    batch = client.post(
        f"/admin/api/campaigns/{newcomer['id']}/packets/batch", json={"count": 1, "reason": "by hand"}, headers=admin
    )
    assert batch.status_code == 201, batch.get_json()
    code = batch.json["codes"][0]
    # ALICE=... /api/v1/auth/login {"code": "code-alice-…"} → d["token"]
    alice = {
        "Authorization": f"Bearer {client.post('/api/v1/auth/login', json={'code': 'code-alice-17'}).json['token']}"
    }
    # PKT=... /api/v1/red-packets/claim {"code"} → d["id"]
    claimed = client.post("/api/v1/red-packets/claim", json={"code": code}, headers=alice)
    assert claimed.status_code == 201, claimed.get_json()
    # ORDER=... /api/v1/orders {"lines":[{"product_id":1,"quantity":1}],"red_packet_id":$PKT}: 50.00, 10.00 off, 40.00
    order = client.post(
        "/api/v1/orders",
        json={"lines": [{"product_id": 1, "quantity": 1}], "red_packet_id": claimed.json["id"]},
        headers=alice,
    )
    assert order.status_code == 201, order.get_json()
    assert (order.json["total_fen"], order.json["discount_fen"], order.json["payable_fen"]) == (50_00, 10_00, 40_00)
    # curl -X POST "$(… d["payment"]["simulator_checkout_url"])" -H 'Accept: application/json'
    checkout = urlsplit(order.json["payment"]["simulator_checkout_url"]).path
    assert client.post(checkout, headers={"Accept": "application/json"}).status_code == 200
    delivered()
    # until … grep -q '"status":"paid"'; then the order shows the 4.00 rebate and why
    paid = client.get(f"/api/v1/orders/{order.json['id']}", headers=alice)
    assert '"status":"paid"' in paid.get_data(as_text=True)
    [rebate] = paid.json["rebates"]
    assert rebate["amount_fen"] == 4_00 and rebate["reasons"] == ["8% of 50.00 yuan (order_total) = 4.00 yuan"]
    # curl /api/v1/me/wallet → cash_fen 400
    assert client.get("/api/v1/me/wallet", headers=alice).json["cash_fen"] == 4_00


# --- pins: the command line and the Makefile --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "options"),
    [
        (["db", "upgrade"], []),
        (["seed-demo"], []),
        (["operators", "create"], ["--username", "--display-name", "--role", "--merchant-id"]),
        (["operators", "confirm"], ["--username", "--reason"]),
        (["ledger", "check"], []),
        (["ledger", "rebuild-marks"], []),
        (["jobs", "run"], []),
        (["jobs", "run-once"], []),
        (["jobs", "reconcile"], ["--date"]),
        (["insights", "rebuild"], ["--from", "--to"]),
        (["risk", "simulate"], ["--seed", "--database-url", "--json", "--honest", "--farm", "--rings", "--sybils"]),
    ],
)
def test_readme_pin_every_flask_command_it_names_exists_with_its_options(app, words, options):
    """The `flask …` commands the README names (The two commands, Deployment, Risk, Reports, Benchmarks)."""
    assert f"flask {' '.join(words)}" in README
    result = app.test_cli_runner().invoke(args=[*words, "--help"])
    assert result.exit_code == 0, result.output
    for option in options:
        assert re.search(rf"(^|[\s,]){re.escape(option)}\b", result.output), (words, option, result.output)


def test_readme_pin_flask_operators_create_root_makes_a_working_first_admin(app, client):
    """README: "`flask operators create --username root` makes the first admin" (its token works at once)."""
    result = app.test_cli_runner().invoke(args=["operators", "create", "--username", "root"])

    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    answer = client.get("/admin/api/operators", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.get_json()
    assert [o["role"] for o in answer.json["items"] if o["username"] == "root"] == ["admin"]


def test_readme_pin_the_makefile_has_every_target_the_readme_names():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z]+):", makefile, re.M))
    named = set(re.findall(r"`make ([a-z]+)`", README)) | {"run", "test"}
    assert named <= targets, named - targets
    assert {"run", "test", "demo", "reset", "lint", "format", "bench", "jobs"} <= named


# --- pins: Idempotency-Key ----------------------------------------------------------------------------------------


def test_readme_pin_an_idempotency_key_replays_its_answer_and_refuses_another_body(client, admin):
    """README: "same body → stored answer, other body → 422"."""
    headers = {**admin, "Idempotency-Key": "shop-17"}
    body = {"name": "Tea House", "reason": "a new shop signs up"}

    first = client.post("/admin/api/merchants", json=body, headers=headers)
    again = client.post("/admin/api/merchants", json=body, headers=headers)
    other = client.post("/admin/api/merchants", json={**body, "name": "Coffee House"}, headers=headers)

    assert first.status_code == 201, first.get_json()
    assert (again.status_code, again.get_json()) == (201, first.get_json())
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert (other.status_code, other.get_json()["error"]) == (422, "idempotency_key_reused")
    db.session.rollback()
    assert db.session.execute(select(func.count()).select_from(Merchant)).scalar_one() == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/api/orders/1/refunds", {"amount_fen": 1_00, "reason": "the customer asked"}),
        ("/admin/api/payouts", {"user_id": 1, "amount_fen": 1_00, "reason": "a goodwill gesture"}),
    ],
)
def test_readme_pin_refunds_and_manual_payouts_require_an_idempotency_key(client, admin, path, body):
    """README: "Refunds and manual payouts require an `Idempotency-Key`"."""
    answer = client.post(path, json=body, headers=admin)

    assert (answer.status_code, answer.get_json()["error"]) == (422, "idempotency_key_required")
    db.session.rollback()
    assert db.session.execute(select(func.count()).select_from(Refund)).scalar_one() == 0
    assert db.session.execute(select(func.count()).select_from(Payout)).scalar_one() == 0


# --- pins: public rules, ops, a worked example ----------------------------------------------------------------------


def test_readme_pin_the_public_rules_versions_and_drafts(client, make_campaign):
    """README: "422 for a `v` that is no positive whole number, 404 for one the campaign never had ... a draft is
    404"."""
    campaign = make_campaign(RULES)
    draft = make_campaign(RULES, status="draft")

    assert client.get(f"/api/v1/campaigns/{campaign.id}/rules?v=1").status_code == 200
    for bad in ("0", "-1", "abc", "1.0"):
        assert client.get(f"/api/v1/campaigns/{campaign.id}/rules?v={bad}").status_code == 422, bad
    assert client.get(f"/api/v1/campaigns/{campaign.id}/rules?v=2").status_code == 404
    assert client.get(f"/api/v1/campaigns/{draft.id}/rules").status_code == 404
    assert client.get(f"/c/{draft.id}").status_code == 404


def test_readme_pin_livez_and_openapi(client):
    """README: "`/livez` (204, touches nothing)", "`/openapi.json` (OpenAPI 3.1 ...)"."""
    livez = client.get("/livez")
    assert (livez.status_code, livez.get_data()) == (204, b"")
    assert client.get("/openapi.json").json["openapi"].startswith("3.1")


def test_readme_pin_the_coupon_refund_base_worked_example():
    """README, Exactly once: "(`money.left_after_refunds`: 100 charged, 80 paid, 50 refunded leaves a base of 40)"."""
    from money import left_after_refunds

    assert left_after_refunds(80, 100, 50) == 40
    assert "100 charged, 80 paid, 50 refunded leaves a base of 40" in README
