"""More requests sent several times at once (tests/test_double_taps.py's companions), each answering as one would.

On SQLite requests write one at a time (``BEGIN IMMEDIATE``); on PostgreSQL they overlap, and two of these flows had
a check followed by a write with nothing deciding between the twins:

* a chat binding code asked for several times at once by one speaker: each voided the codes it could see and added
  its own, so twins that could not see each other's new codes all stayed live (only the newest may be);
* the first sign-ins of one person through the mini-program and the official account at once (one unionid): both
  made a person for it, and the second answered 500 from the unique unionid instead of joining the first; and a
  known person's mini-program sign-in noting a unionid that the official account's first sign-in had just taken
  answered 500 the same way.

The third was already safe, and its tests say so: an audience run started twice at once with one
``Idempotency-Key`` (an operator's double click, in the API or the console's form) runs once; the key lets one
request through and answers the others 409, or the first one's answer once it is stored.
"""

from __future__ import annotations

import threading
from collections import Counter
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

from challenges.bindings import code_hash
from models import AudienceRun, ChatBindingCode, RedPacket, User, UserIdentity, db
from tests.concurrency import together, wait_until_a_backend_waits_on_a_lock
from tests.conftest import on_postgres
from tests.console_helpers import post as console_post
from tests.console_helpers import sign_in as console_sign_in
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture
from web import login
from web.wecom_bot import binding_settings, bot_settings
from wechat import wecom

TWINS = 8
RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 5_00}]}


# -- a chat binding code ------------------------------------------------------------------------------------


def test_a_binding_code_asked_for_at_once_leaves_only_the_newest_live(app, make_user, user_headers):
    settings = bot_settings()
    built = [
        wecom.build_callback(settings, wecom.text_message(settings.bot_id, "alice", "绑定", msgid=f"twin-{i}"))
        for i in range(TWINS)
    ]

    def ask(i: int) -> tuple[int, str | None]:
        r = app.test_client().post("/wechat/wecom/bot", query_string=built[i].args, data=built[i].body)
        if r.status_code != 200:
            return r.status_code, None
        said = wecom.open_reply(settings, r.get_json())["stream"]["content"]
        return r.status_code, said.split("：", 1)[1].split("\n", 1)[0]

    got = together(TWINS, ask, app=app)
    assert [status for status, _ in got] == [200] * TWINS, got
    db.session.rollback()
    codes = db.session.execute(select(ChatBindingCode).order_by(ChatBindingCode.id)).scalars().all()
    assert len(codes) == TWINS  # every twin was given a code of its own …
    live = [c for c in codes if c.used_at is None]
    assert [c.id for c in live] == [codes[-1].id]  # … and only the newest of them is live
    shown = {code_hash(binding_settings(), code): code for _, code in got}
    assert set(shown) == {c.code_hash for c in codes}
    alice = make_user()
    bound = app.test_client().post(
        "/api/v1/me/chat-bindings", json={"code": shown[live[0].code_hash]}, headers=user_headers(alice)
    )
    assert bound.status_code == 201, bound.get_json()
    voided = next(code for digest, code in shown.items() if digest != live[0].code_hash)
    again = app.test_client().post("/api/v1/me/chat-bindings", json={"code": voided}, headers=user_headers(alice))
    assert (again.status_code, again.get_json()["error"]) == (422, "wrong_code")


# -- first sign-ins of one person ---------------------------------------------------------------------------

MINI_PROGRAM, OFFICIAL_ACCOUNT = "mini_program", "official_account"


def first_through(monkeypatch, first: str) -> None:
    """On PostgreSQL, ``first``'s sign-in writes what it writes and keeps its transaction open until the other
    sign-in waits on it (a row or unique key it wrote): the overlap a race may or may not hit, every time."""
    written, real = threading.Event(), login.sign_in

    def in_turn(appid, openid, unionid, channel, *args, **kwargs):
        if not on_postgres():
            return real(appid, openid, unionid, channel, *args, **kwargs)
        if channel != first:
            written.wait(10)
            return real(appid, openid, unionid, channel, *args, **kwargs)
        user = real(appid, openid, unionid, channel, *args, **kwargs)
        written.set()
        with db.engine.connect() as probe:
            wait_until_a_backend_waits_on_a_lock(probe)
        return user

    monkeypatch.setattr(login, "sign_in", in_turn)


def both_sign_ins_at_once(app, name: str) -> list[int]:
    """``name`` signs in through the official account's web OAuth and the mini-program at the same moment."""
    browser = app.test_client()
    location = browser.get("/oauth/authorize", query_string={"next": "/me"}).headers["Location"]
    state = parse_qs(urlsplit(location.split("#")[0]).query)["state"][0]
    code = simulator(app).issue_oauth_code(name)

    def sign_in(i: int) -> tuple[int, str]:
        if i:
            r = app.test_client().post("/api/v1/auth/login", json={"code": f"code-{name}"})
        else:
            r = browser.get("/oauth/callback", query_string={"code": code, "state": state})
        return r.status_code, str((r.get_json(silent=True) or {}).get("error", ""))

    got = together(2, sign_in, app=app)
    db.session.rollback()
    return got


@pytest.mark.parametrize("first", [OFFICIAL_ACCOUNT, MINI_PROGRAM])
def test_one_persons_first_sign_ins_through_both_apps_at_once_make_one_person(
    app,
    no_network,  # noqa: F811
    monkeypatch,
    first,
):
    first_through(monkeypatch, first)
    got = both_sign_ins_at_once(app, "twin")
    assert [status for status, _ in got] == [302, 200], got
    [person] = db.session.execute(select(User)).scalars().all()  # one person, no twin
    assert person.unionid == "sim-union-twin"
    identities = db.session.execute(select(UserIdentity.user_id, UserIdentity.appid)).tuples().all()
    assert sorted(identities) == sorted(
        (person.id, a) for a in (app.config["WECHAT_APPID"], app.config["WECHAT_OA_APPID"])
    )


@pytest.mark.parametrize("first", [OFFICIAL_ACCOUNT, MINI_PROGRAM])
def test_a_known_persons_unionid_named_by_both_apps_at_once_never_answers_500(
    app,
    no_network,  # noqa: F811
    monkeypatch,
    first,
):
    """Known through the mini-program before it gave a unionid; now both apps name it at the same moment: the
    mini-program's sign-in notes it on the known person, the official account's first sign-in looks for a person
    with it (none yet: it makes one). Whichever writes first keeps it, as had they come one after the other."""
    known = User()
    db.session.add(known)
    db.session.flush()
    db.session.add(UserIdentity(user_id=known.id, appid=app.config["WECHAT_APPID"], openid="sim-openid-twin"))
    db.session.commit()
    first_through(monkeypatch, first)
    got = both_sign_ins_at_once(app, "twin")
    assert [status for status, _ in got] == [302, 200], got
    assert db.session.scalar(select(func.count()).where(User.unionid == "sim-union-twin")) == 1
    assert db.session.scalar(select(func.count()).select_from(UserIdentity)) == 2
    if on_postgres():  # in this order for sure
        people = 2 if first == OFFICIAL_ACCOUNT else 1  # the official account's person, or the known one for both
        assert db.session.scalar(select(func.count()).select_from(User)) == people


# -- an audience run ----------------------------------------------------------------------------------------


def audience_and_campaign(app, make_user, make_campaign, headers) -> tuple[int, int, list[int]]:
    people = [make_user().id for _ in range(5)]
    campaign = make_campaign(RULES, packet_amount_fen=5_00, budget_limit_fen=1_000_00)
    audience = app.test_client().post(
        "/admin/api/audiences", json={"name": "all", "definition": {"kind": "never_used_packet"}}, headers=headers
    )
    assert audience.status_code == 201, audience.get_json()
    return audience.get_json()["id"], campaign.id, people


def issued_once_each(people: list[int]) -> bool:
    db.session.rollback()
    owners = db.session.execute(select(RedPacket.owner_id).where(RedPacket.source == "audience")).scalars().all()
    return sorted(owners) == sorted(people)


def test_an_audience_run_started_twice_at_once_with_one_key_runs_once(app, make_user, make_campaign, make_operator):
    _, admin = make_operator("admin")
    audience_id, campaign_id, people = audience_and_campaign(app, make_user, make_campaign, admin)
    headers = {**admin, "Idempotency-Key": "run-twice"}
    sent = {"campaign_id": campaign_id, "holdout_bps": 0}

    def start(_: int) -> tuple[int, dict]:
        r = app.test_client().post(f"/admin/api/audiences/{audience_id}/runs", json=sent, headers=headers)
        return r.status_code, r.get_json()

    got = together(TWINS, start, app=app)
    assert set(Counter(status for status, _ in got)) <= {201, 409}, got
    runs = db.session.execute(select(AudienceRun.id)).scalars().all()
    assert len(runs) == 1
    assert {body["id"] for status, body in got if status == 201} == set(runs)  # the first run, or its replay
    assert {body["error"] for status, body in got if status == 409} <= {"idempotency_in_progress"}
    assert issued_once_each(people)


def test_an_audience_runs_console_form_sent_twice_at_once_runs_once(app, make_user, make_campaign, make_operator):
    _, admin = make_operator("admin")
    audience_id, campaign_id, people = audience_and_campaign(app, make_user, make_campaign, admin)
    browsers = [app.test_client() for _ in range(TWINS)]  # one operator's double click: the form's one key
    csrfs = [console_sign_in(browser, admin) for browser in browsers]
    form = {"campaign_id": str(campaign_id), "holdout_bps": "0", "form_key": "run-form-1"}

    def click(i: int) -> int:
        return console_post(browsers[i], f"/console/audiences/{audience_id}/runs", form, csrfs[i]).status_code

    got = together(TWINS, click, app=app)
    # The run's page (the first click, or its answer replayed), or the form again saying the first click is still
    # being worked: 200, or 429 when that page's own read of the audience's count waits its turn (one at a time).
    assert set(got) <= {302, 200, 429} and 302 in got, got
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(AudienceRun)) == 1
    assert issued_once_each(people)
