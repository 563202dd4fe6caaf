"""The operators' read of challenges: ``GET /admin/api/challenges`` and ``/admin/api/challenges/<id>``.

Platform roles read every challenge with its participants, day grid, prizes, settlement and ledger; merchant
staff read only what their merchant's campaign sponsors (anything else: 404) and see people as ids; bad
filters answer 422 naming the field and change nothing; no session key, no full openid or group id leaves.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from models import AuditLog, Challenge, ChallengeParticipant, LedgerEntry, Notice, UserIdentity, db, utcnow
from tests.challenge_console_helpers import WECOM_GROUP, play_week

URL = "/admin/api/challenges"


@pytest.fixture
def week(make_user, make_merchant, make_campaign, make_product, pay):
    return play_week(make_user, make_merchant, make_campaign, make_product, pay)


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")[1]


def ids(body: dict) -> list[int]:
    return [c["id"] for c in body["items"]]


def test_the_list_counts_by_status_and_pages_newest_first(client, admin, week):
    body = client.get(URL, headers=admin).get_json()
    assert body["counts"]["status"] == {"cancelled": 1, "open": 2, "settled": 3}
    assert body["total"] == 6
    everything = [week[k] for k in ("open", "theirs", "mine", "cancelled", "quiz", "settled")]
    assert ids(body) == everything  # newest first
    first = client.get(URL, query_string={"limit": 2}, headers=admin).get_json()
    second = client.get(URL, query_string={"limit": 2, "offset": 2}, headers=admin).get_json()
    assert ids(first) + ids(second) == everything[:4]
    row = next(c for c in body["items"] if c["id"] == week["settled"])
    assert row["kind"] == "steps" and row["title"] == "三天走路" and row["participants"] == 3
    assert (row["stake"], row["stake_unit"], row["group_transport"]) == (5_00, "fen", "wecom")
    assert row["group_id"] != WECOM_GROUP and row["group_id"].startswith(WECOM_GROUP[:3]) and "***" in row["group_id"]
    assert row["last_day"] == week["days"][1].isoformat() and row["settled_at"]


@pytest.mark.parametrize(
    ("query", "wanted"),
    [
        ({"status": "settled"}, ("mine", "quiz", "settled")),
        ({"status": "open"}, ("open", "theirs")),
        ({"kind": "reading"}, ("mine", "cancelled")),
        ({"kind": "quiz"}, ("quiz",)),
        ({"transport": "wecom"}, ("settled",)),
        ({"transport": "chattool"}, ("theirs",)),
        ({"transport": "none"}, ("open", "mine", "cancelled", "quiz")),
        ({"stake_source": "points"}, ("cancelled",)),
        ({"stake_source": "sponsor", "status": "settled"}, ("mine",)),
        ({"kind": "steps", "status": "cancelled"}, ()),
    ],
)
def test_filters(client, admin, week, query, wanted):
    body = client.get(URL, query_string=query, headers=admin).get_json()
    assert ids(body) == [week[k] for k in wanted]
    assert body["total"] == len(wanted)


def test_filters_by_person_campaign_and_creation_time(client, admin, week):
    bob = week["people"]["Bob"]
    assert ids(client.get(URL, query_string={"user_id": bob}, headers=admin).get_json()) == [
        week["cancelled"],
        week["quiz"],
        week["settled"],
    ]
    by_campaign = client.get(URL, query_string={"campaign_id": week["campaign"]}, headers=admin).get_json()
    assert ids(by_campaign) == [week["mine"]]
    since = (utcnow() - timedelta(hours=1)).isoformat()
    recent = client.get(URL, query_string={"since": since}, headers=admin).get_json()
    assert ids(recent) == [week["open"], week["theirs"]]
    assert recent["counts"]["status"] == {"open": 2}
    # the counts are over every filter but the status: the other statuses stay in sight
    settled = client.get(URL, query_string={"status": "settled", "kind": "steps"}, headers=admin).get_json()
    assert settled["counts"]["status"] == {"open": 2, "settled": 1} and ids(settled) == [week["settled"]]


def test_a_settled_step_challenge_in_full(client, admin, week):
    people = week["people"]
    alice, bob, carol = people["Alice"], people["Bob"], people["Carol"]
    day1, day2 = (d.isoformat() for d in week["days"])
    answer = client.get(f"{URL}/{week['settled']}", headers=admin)
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["challenge"]["status"] == "settled"
    assert body["days"] == [
        {"day": day1, "ended": True, "counted": True},
        {"day": day2, "ended": True, "counted": True},
    ]
    rows = {p["user_id"]: p for p in body["participants"]}
    assert {u: (p["name"], p["stake"], p["total"], p["result"], p["rank"]) for u, p in rows.items()} == {
        alice: ("Alice", 5_00, 21_000, "won", 1),
        bob: ("Bob", 5_00, 15_000, "lost", 2),
        carol: ("Carol", 5_00, 0, "lost", 3),
    }
    assert [(c["status"], c["value"], c["counts"]) for c in rows[alice]["days"]] == [
        ("arrived", 12_000, 12_000),
        ("arrived", 9_000, 9_000),
    ]
    # Carol's first day was over the plausibility cap (risk: zero), her second never came (zero at the deadline)
    flagged, missing = rows[carol]["days"]
    assert (flagged["status"], flagged["value"], flagged["counts"], flagged["flag"]) == (
        "flagged",
        120_000,
        0,
        "over_cap",
    )
    assert (missing["status"], missing["value"], missing["counts"], missing["uploaded_at"]) == ("missing", 0, 0, None)
    settlement = body["settlement"]
    assert settlement["decided"] and settlement["winners"] == [alice]
    assert settlement["outcome"]["winners"] == [alice] and settlement["missing_counts_as_zero"] is True

    # each loser's stake funded a packet issued by them to Alice; Bob's was spent, and Bob earned his share
    prizes = {p["payer_user_id"]: p for p in body["prizes"]}
    assert set(prizes) == {bob, carol}
    spent, unspent = prizes[bob], prizes[carol]
    assert (spent["payee_user_id"], spent["amount"], spent["unit"]) == (alice, 5_00, "fen")
    assert spent["packet"]["status"] == "used" and spent["packet"]["order_id"] == week["order"]
    assert (spent["packet"]["issuer_user_id"], spent["packet"]["owner_id"]) == (bob, alice)
    assert spent["packet"]["discount_fen"] == 5_00
    issuer = [r for r in spent["rebates"] if r["role"] == "issuer"]
    assert [(r["beneficiary_id"], r["amount_fen"], r["status"]) for r in issuer] == [(bob, 1_50, "awarded")]
    assert unspent["packet"]["status"] == "issued" and unspent["rebates"] == []
    assert (unspent["returned_fen"], unspent["closed"]) == (0, False)

    # the money the challenge itself moved, and what people were told
    keys = [e["key"] for e in body["ledger"]]
    assert {f"challenge:{week['settled']}:stake:{u}" for u in (alice, bob, carol)} <= set(keys)
    assert f"challenge:{week['settled']}:release:{alice}:settled" in keys
    reservation = next(e for e in body["ledger"] if e["key"].endswith(f":stake:{bob}"))
    assert sorted(p["amount"] for p in reservation["postings"]) == [-5_00, 5_00]
    assert {(n["user_id"], n["event"]) for n in body["notices"]} == {
        (u, "challenge_settled") for u in (alice, bob, carol)
    }
    assert body["trace"]["users"] == sorted([alice, bob, carol])
    assert week["bob_packet"] in body["trace"]["packets"] and body["trace"]["orders"] == [week["order"]]


def test_a_quiz_shows_its_attempts_and_no_day_grid(client, admin, week):
    body = client.get(f"{URL}/{week['quiz']}", headers=admin).get_json()
    assert body["days"] == [] and all(p["days"] == [] for p in body["participants"])
    alice, bob = week["people"]["Alice"], week["people"]["Bob"]
    assert [(a["user_id"], a["score"], bool(a["submitted_at"])) for a in body["quiz"]["attempts"]] == [
        (alice, 1, True),
        (bob, 0, True),
    ]
    assert body["quiz"]["questions"] == 1
    (prize,) = body["prizes"]
    assert (prize["payer_user_id"], prize["payee_user_id"]) == (alice, bob)  # the winner rewards the loser
    assert "answer" not in str(body["quiz"])


def test_an_open_challenge_waits_and_a_cancelled_one_says_why(client, admin, week):
    opened = client.get(f"{URL}/{week['open']}", headers=admin).get_json()
    assert {d["ended"] for d in opened["days"]} == {False}
    assert {c["status"] for p in opened["participants"] for c in p["days"]} == {"open"}
    assert opened["settlement"]["decided"] is False and opened["prizes"] == []
    cancelled = client.get(f"{URL}/{week['cancelled']}", headers=admin).get_json()
    assert cancelled["challenge"]["stake_unit"] == "point"
    assert "cancelled" in cancelled["settlement"]["outcome"]
    assert [e["key"].split(":")[2] for e in cancelled["ledger"]] == ["stake", "release"]


def test_the_sponsored_reading_challenge(client, admin, week):
    body = client.get(f"{URL}/{week['mine']}", headers=admin).get_json()
    dave, erin = week["people"]["Dave"], week["people"]["Erin"]
    rows = {p["user_id"]: p for p in body["participants"]}
    assert [(c["status"], c["counts"]) for c in rows[dave]["days"]] == [("arrived", 2)]
    assert [(c["status"], c["counts"]) for c in rows[erin]["days"]] == [("arrived", 1)]
    (prize,) = body["prizes"]
    assert (prize["payer_user_id"], prize["payee_user_id"], prize["amount"]) == (None, dave, 8_00)
    assert prize["campaign_id"] == week["campaign"] and prize["packet"]["status"] == "issued"
    assert body["ledger"] == []  # a sponsor's challenge stakes nothing


def test_merchant_staff_read_only_what_their_campaigns_sponsor(client, make_operator, week):
    from models import Merchant

    _, staff = make_operator("merchant_staff", db.session.get(Merchant, week["shop"]))
    body = client.get(URL, headers=staff).get_json()
    assert ids(body) == [week["mine"]] and body["counts"]["status"] == {"settled": 1}
    assert ids(client.get(URL, query_string={"user_id": week["people"]["Bob"]}, headers=staff).get_json()) == []
    detail = client.get(f"{URL}/{week['mine']}", headers=staff).get_json()
    assert {p["name"] for p in detail["participants"]} == {None}
    assert {tuple(p["openids"]) for p in detail["participants"]} == {()}
    assert detail["ledger"] is None and detail["notices"] is None
    assert len(detail["prizes"]) == 1 and detail["settlement"]["winners"] == [week["people"]["Dave"]]
    for other in ("settled", "quiz", "cancelled", "theirs", "open"):
        answer = client.get(f"{URL}/{week[other]}", headers=staff)
        assert answer.status_code == 404, other
        assert answer.get_json()["error"] == "not_found"
    _, theirs = make_operator("merchant_staff", db.session.get(Merchant, week["other"]))
    assert ids(client.get(URL, headers=theirs).get_json()) == [week["theirs"]]
    assert client.get(f"{URL}/{week['theirs']}", headers=theirs).get_json()["challenge"]["group_id"] is None


def test_staff_see_that_a_day_was_flagged_but_not_why(client, make_operator, make_user, make_merchant, make_campaign):
    from challenges import ChallengeSpec, create_challenge, join_challenge, record_steps, settle_challenge
    from challenges.days import day_start, today
    from tests.challenge_console_helpers import _sponsor

    shop, campaign = _sponsor(make_merchant, make_campaign)
    base = utcnow() - timedelta(days=5)
    day1 = today(base) + timedelta(days=1)
    a, b = make_user().id, make_user().id
    spec = ChallengeSpec(
        kind="steps", days=1, start_day=day1, stake_source="sponsor", sponsor_campaign_id=campaign.id, prize_fen=3_00
    )
    cid = create_challenge(a, spec, base).id
    join_challenge(cid, b, base)
    after = day_start(day1) + timedelta(days=1, hours=2)
    record_steps(a, [(day1, 200_000)], after)
    record_steps(b, [(day1, 4_000)], after)
    assert settle_challenge(cid, after)
    db.session.commit()
    _, staff = make_operator("merchant_staff", shop)
    cells = {p["user_id"]: p["days"][0] for p in client.get(f"{URL}/{cid}", headers=staff).get_json()["participants"]}
    assert (cells[a]["status"], cells[a]["value"], cells[a]["counts"], cells[a]["flag"]) == ("flagged", None, 0, None)
    assert (cells[b]["status"], cells[b]["value"]) == ("arrived", 4_000)
    _, admin = make_operator("admin")
    cells = {p["user_id"]: p["days"][0] for p in client.get(f"{URL}/{cid}", headers=admin).get_json()["participants"]}
    assert (cells[a]["value"], cells[a]["flag"]) == (200_000, "over_cap")


@pytest.mark.parametrize("role", ["finance", "support"])
def test_every_platform_role_reads(client, make_operator, week, role):
    _, headers = make_operator(role)
    assert len(ids(client.get(URL, headers=headers).get_json())) == 6
    assert client.get(f"{URL}/{week['settled']}", headers=headers).status_code == 200


def test_no_session_key_no_full_openid_and_no_group_id_leaves(client, admin, week):
    for identity in db.session.execute(select(UserIdentity)).scalars():
        identity.session_key = "c2Vzc2lvbi1rZXktc2VjcmV0"
    db.session.commit()
    openids = set(db.session.execute(select(UserIdentity.openid)).scalars())
    text = client.get(URL, headers=admin).get_data(as_text=True)
    for cid in (week["settled"], week["theirs"], week["quiz"]):
        text += client.get(f"{URL}/{cid}", headers=admin).get_data(as_text=True)
    assert "session_key" not in text and "c2Vzc2lvbi1rZXktc2VjcmV0" not in text
    assert not [o for o in openids if o in text]
    assert WECOM_GROUP not in text and "tGroupOpenid-abcdefgh" not in text
    body = client.get(f"{URL}/{week['settled']}", headers=admin).get_json()
    assert all(p["openids"] and all("***" in o for o in p["openids"]) for p in body["participants"])


def _state() -> tuple:
    counted = (Challenge, ChallengeParticipant, LedgerEntry, Notice, AuditLog)
    return tuple(db.session.execute(select(func.count()).select_from(m)).scalar_one() for m in counted)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "finished"}, "status"),
        ({"kind": "chess"}, "kind"),
        ({"transport": "telegram"}, "transport"),
        ({"stake_source": "cash"}, "stake_source"),
        ({"since": "2026-11-01"}, "since"),
        ({"since": "yesterday"}, "since"),
        ({"user_id": "0"}, "user_id"),
        ({"user_id": "abc"}, "user_id"),
        ({"user_id": str(2**31)}, "user_id"),
        ({"campaign_id": "-1"}, "campaign_id"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"group_id": "x"}, "group_id"),
    ],
)
def test_bad_filters_are_422_naming_the_field_and_change_nothing(client, admin, week, query, field):
    before = _state()
    answer = client.get(URL, query_string=query, headers=admin)
    assert answer.status_code == 422
    body = answer.get_json()
    assert body["error"] == "validation_error"
    assert field in [d["field"] for d in body["details"]]
    db.session.rollback()
    assert _state() == before


def test_unknown_challenges_are_404_and_callers_without_an_operator_token_are_refused(
    client, admin, week, make_user, user_headers
):
    assert client.get(f"{URL}/{2**31 - 1}", headers=admin).status_code == 404
    assert client.get(f"{URL}/{2**31}", headers=admin).status_code == 404
    assert client.get(URL).status_code == 401
    assert client.get(f"{URL}/{week['settled']}", headers=user_headers(make_user())).status_code == 401


def test_the_openapi_document_describes_both(client):
    doc = client.get("/openapi.json").get_json()
    listing = doc["paths"]["/admin/api/challenges"]["get"]
    names = {p["name"] for p in listing["parameters"]}
    assert {
        "status",
        "kind",
        "transport",
        "stake_source",
        "since",
        "user_id",
        "campaign_id",
        "limit",
        "offset",
    } <= names
    assert "challenges" in listing["tags"]
    assert "/admin/api/challenges/{challenge_id}" in doc["paths"]


def test_the_read_sends_no_write(week):
    from insights.challenges import ChallengeFilter, challenge_detail, list_challenges
    from tests.test_insights_read_only import WRITES, watched

    db.session.expire_all()
    with watched() as seen:
        listed = list_challenges(ChallengeFilter())
        details = [challenge_detail(db.session.get(Challenge, week[k]), utcnow()) for k in ("settled", "quiz", "mine")]
    assert listed["total"] == 6 and all(d["participants"] for d in details)
    assert not WRITES & set(seen["statements"]), seen["statements"]
    assert (seen["flushes"], seen["commits"]) == (0, 0)


def test_an_expired_packet_swept_back_to_its_payer_shows_what_came_back(client, admin, week):
    from challenges import sweep_prizes
    from models import ChallengePrize, RedPacket
    from rebate.packets import expire_due_packets

    carol = week["people"]["Carol"]
    prize = db.session.execute(
        select(ChallengePrize).where(
            ChallengePrize.challenge_id == week["settled"], ChallengePrize.payer_user_id == carol
        )
    ).scalar_one()
    expires_at = db.session.get(RedPacket, prize.packet_id).expires_at
    assert expire_due_packets(expires_at) >= 1  # the quiz's packet may end at the same minute
    assert sweep_prizes(expires_at) in (5_00, 5_00 + 1_00)
    db.session.commit()
    body = client.get(f"{URL}/{week['settled']}", headers=admin).get_json()
    swept = next(p for p in body["prizes"] if p["payer_user_id"] == carol)
    assert (swept["packet"]["status"], swept["returned_fen"], swept["closed"]) == ("expired", 5_00, True)
    key = f"challenge:{week['settled']}:release:{carol}:packet:{prize.packet_id}:unused"
    assert key in [e["key"] for e in body["ledger"]]
