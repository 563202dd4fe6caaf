"""Rotating the data-at-rest key: DATA_ENCRYPTION_KEY_PREVIOUS and ``flask keys reencrypt`` (docs/architecture.md §18).

Every place that holds a value encrypted with the app's key is written under key A (the tests' own key), the app is
configured with B and previous A, the command runs, and an app with B alone reads everything back.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import Text, select, type_coerce

from config import DEV_SECRET, ConfigError, dev_data_key, load_config
from ledger import Leg, account, post_entry
from models import AccountKind, IdempotencyRecord, Payout, User, UserIdentity, db, utcnow
from models.challenge_posts import GroupWebhook
from payouts import enqueue_payout
from tests.conftest import TEST_SETTINGS, release_test_session

ROOT = Path(__file__).resolve().parent.parent
KEY_A = TEST_SETTINGS["DATA_ENCRYPTION_KEY"]
KEY_B = Fernet.generate_key().decode()
KEY_C = Fernet.generate_key().decode()  # configured nowhere
STRONG_SECRET = "Yq3v9-Tz8LkP2mW7xR4nB6cJ1hF5dS0gA_eU"


# -- configuration -------------------------------------------------------------------


def _problems(**values) -> str:
    with pytest.raises(ConfigError) as info:
        load_config({"WECHAT_MODE": "simulator", **values}, environ={})
    return str(info.value)


def test_previous_keys_are_read_comma_separated_from_the_environment():
    values = load_config(
        environ={
            "WECHAT_MODE": "simulator",
            "DATA_ENCRYPTION_KEY": KEY_B,
            "DATA_ENCRYPTION_KEY_PREVIOUS": f" {KEY_A} ,{KEY_C},",
        }
    )
    assert values["DATA_ENCRYPTION_KEY_PREVIOUS"] == (KEY_A, KEY_C)
    assert load_config(environ={"WECHAT_MODE": "simulator"})["DATA_ENCRYPTION_KEY_PREVIOUS"] is None


def test_a_previous_key_that_is_no_fernet_key_is_named_by_its_place_never_quoted():
    message = _problems(DATA_ENCRYPTION_KEY=KEY_B, DATA_ENCRYPTION_KEY_PREVIOUS=f"{KEY_A},not-a-key-at-all")
    assert "DATA_ENCRYPTION_KEY_PREVIOUS: key 2 must be a Fernet key" in message
    assert "not-a-key-at-all" not in message


def test_a_previous_key_equal_to_the_current_one_is_refused():
    message = _problems(DATA_ENCRYPTION_KEY=KEY_B, DATA_ENCRYPTION_KEY_PREVIOUS=[KEY_A, KEY_B])
    assert "DATA_ENCRYPTION_KEY_PREVIOUS holds the current DATA_ENCRYPTION_KEY: nothing was rotated" in message


def test_in_simulator_mode_the_derived_current_key_counts_as_the_current_one():
    derived = dev_data_key(DEV_SECRET)  # what app.py uses with neither key set
    assert "holds the current DATA_ENCRYPTION_KEY" in _problems(DATA_ENCRYPTION_KEY_PREVIOUS=derived)
    # moving away from the derived key to an explicit one is a rotation like any other
    load_config({"WECHAT_MODE": "simulator", "DATA_ENCRYPTION_KEY": KEY_B, "DATA_ENCRYPTION_KEY_PREVIOUS": derived})


def test_a_key_listed_twice_is_refused():
    assert "lists a key twice" in _problems(DATA_ENCRYPTION_KEY=KEY_B, DATA_ENCRYPTION_KEY_PREVIOUS=f"{KEY_A},{KEY_A}")


@pytest.mark.parametrize("derived_from", [DEV_SECRET, STRONG_SECRET])
def test_live_mode_refuses_a_previous_key_derived_from_a_secret_key(tmp_path, derived_from):
    live = {
        "SECRET_KEY": STRONG_SECRET,
        "DATA_ENCRYPTION_KEY": KEY_B,
        "DATA_ENCRYPTION_KEY_PREVIOUS": f"{KEY_A},{dev_data_key(derived_from)}",
        "WECHAT_APPID": "wx1234567890abcdef",
        "WECHAT_APP_SECRET": "app-secret",
        "WECHAT_MCHID": "1900000001",
        "WECHAT_MCH_PRIVATE_KEY_PATH": str(tmp_path / "apiclient_key.pem"),
        "WECHAT_MCH_CERT_SERIAL": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
        "WECHAT_APIV3_KEY": "0123456789abcdef0123456789abcdef",
        "WECHAT_PAY_PUBLIC_KEY_PATH": str(tmp_path / "pub_key.pem"),
        "WECHAT_PAY_PUBLIC_KEY_ID": "PUB_KEY_ID_0114232134912410000000000000",
        "PUBLIC_BASE_URL": "https://rebate.example.com",
        "REDIS_URL": "redis://cache:6379/0",
    }
    with pytest.raises(ConfigError) as info:
        load_config(environ=live)
    assert "DATA_ENCRYPTION_KEY_PREVIOUS holds a key derived from a SECRET_KEY" in str(info.value)
    load_config(environ={**live, "DATA_ENCRYPTION_KEY_PREVIOUS": KEY_A})  # an independent one is fine


def test_the_previous_keys_are_masked_in_the_start_up_log():
    from config import masked

    assert masked({"DATA_ENCRYPTION_KEY_PREVIOUS": (KEY_A,)})["DATA_ENCRYPTION_KEY_PREVIOUS"] == "***"


# -- stored values under key A -------------------------------------------------------


@contextmanager
def app_with(app_settings, current: str, previous=None):
    """Another app on the test's database, with these keys; its context pushed (the test's own is released)."""
    from app import create_app

    release_test_session()
    other = create_app({**app_settings, "DATA_ENCRYPTION_KEY": current, "DATA_ENCRYPTION_KEY_PREVIOUS": previous})
    with other.app_context():
        try:
            yield other
        finally:
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def stored(app, make_user):
    """One value in every place the app encrypts with its key, all under key A; their ids."""
    from models.base import fernet
    from web.idempotency import _sealed

    user = make_user(appid=app.config["WECHAT_APPID"])
    user.real_name, user.phone = "张三", "13800000000"
    identity = db.session.execute(select(UserIdentity).filter_by(user_id=user.id)).scalar_one()
    identity.session_key = "c2Vzc2lvbi1rZXk="
    webhook = GroupWebhook(transport="wecom", group_id="g-1", key="webhook-key-1", set_by=user.id)
    db.session.add(webhook)
    cash = account(AccountKind.USER_CASH, "user", user.id)
    post_entry(
        f"fund:{user.id}", "rebate", [Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -250_000), Leg(cash, 250_000)]
    )
    payout = enqueue_payout(
        number_prefix="", rail="wechat_change", user_id=user.id, amount_fen=250_000, source=cash, key="k", memo="t"
    )
    payout.request = {"openid": "o", "amount_fen": 250_000, "user_name_enc": fernet().encrypt("张三".encode()).decode()}
    now = utcnow()
    record = IdempotencyRecord(
        scope="operator:1",
        route="POST /admin/api/operators",
        key="idem-1",
        request_sha256="0" * 64,
        state="done",
        response_status=201,
        response_body=_sealed({"id": 7, "token": "op-secret-token"}),
        locked_at=now,
        expires_at=now,
    )
    db.session.add(record)
    db.session.commit()
    return {"user": user.id, "identity": identity.id, "webhook": webhook.id, "payout": payout.id, "record": record.id}


def read_everything(ids: dict) -> dict:
    """Every stored value, opened by the app in context as the app itself opens it."""
    from payouts.transfer_rail import _user_name
    from web.idempotency import _opened

    db.session.expire_all()
    user = db.session.get(User, ids["user"])
    return {
        "real_name": user.real_name,
        "phone": user.phone,
        "session_key": db.session.get(UserIdentity, ids["identity"]).session_key,
        "webhook": db.session.get(GroupWebhook, ids["webhook"]).key,
        "payee": _user_name(db.session.get(Payout, ids["payout"]).request),
        "token": _opened(db.session.get(IdempotencyRecord, ids["record"]).response_body)["token"],
    }


EVERYTHING = {
    "real_name": "张三",
    "phone": "13800000000",
    "session_key": "c2Vzc2lvbi1rZXk=",
    "webhook": "webhook-key-1",
    "payee": "张三",
    "token": "op-secret-token",
}


def raw(table, column: str, row_id: int) -> str:
    c = table.c[column]
    return db.session.execute(select(type_coerce(c, Text)).where(table.c.id == row_id)).scalar_one()


def reencrypt(app, *args: str):
    return app.test_cli_runner().invoke(args=["keys", "reencrypt", *args])


# -- reading and writing during a rotation -------------------------------------------


def test_before_this_a_new_key_could_not_read_anything_written_under_the_old_one(app_settings, stored):
    with app_with(app_settings, KEY_B), pytest.raises(ValueError, match="cannot be read with the configured key"):
        db.session.get(User, stored["user"]).real_name  # noqa: B018


def test_with_the_previous_key_everything_reads_and_a_write_uses_the_new_key(app_settings, stored):
    with app_with(app_settings, KEY_B, KEY_A):
        assert read_everything(stored) == EVERYTHING
        db.session.get(User, stored["user"]).phone = "13900000000"
        db.session.commit()
        written = raw(User.__table__, "phone", stored["user"])
    assert Fernet(KEY_B).decrypt(written.encode()) == b"13900000000"
    with pytest.raises(InvalidToken):
        Fernet(KEY_A).decrypt(written.encode())


# -- the command ----------------------------------------------------------------------


def test_after_the_command_the_previous_key_can_be_removed(app_settings, stored):
    # given: everything under A; the app moved to B with A as previous
    with app_with(app_settings, KEY_B, KEY_A) as rotating:
        # when
        result = reencrypt(rotating)
        # then: each place counted, and a second run finds nothing left
        assert result.exit_code == 0, result.output
        for place in ("users.real_name", "users.phone", "user_identities.session_key", "group_webhooks.key"):
            assert f"{place}: 1 re-encrypted, 0 already under the current key, 0 unreadable" in result.output
        assert "payouts.request: 1 re-encrypted" in result.output
        assert "idempotency_records.response_body: 1 re-encrypted" in result.output
        again = reencrypt(rotating)
        assert again.exit_code == 0, again.output
        assert "re-encrypted, " in again.output and " 1 re-encrypted" not in again.output
        assert "users.real_name: 0 re-encrypted, 1 already under the current key, 0 unreadable" in again.output
        assert "DATA_ENCRYPTION_KEY_PREVIOUS can be removed" in again.output
    # and: with B alone every value reads as it was
    with app_with(app_settings, KEY_B):
        assert read_everything(stored) == EVERYTHING


def test_the_command_refuses_to_run_without_a_previous_key(app_settings, stored):
    with app_with(app_settings, KEY_A) as same:
        result = reencrypt(same)
        assert result.exit_code == 1
        assert "DATA_ENCRYPTION_KEY_PREVIOUS is not set" in result.output
        assert raw(User.__table__, "real_name", stored["user"])  # nothing touched


def test_a_value_no_key_opens_is_reported_and_left_as_it_is(app_settings, stored, make_user):
    # given: one more person whose phone is under a key configured nowhere
    lost = make_user().id
    foreign = Fernet(KEY_C).encrypt(b"13700000000").decode()
    db.session.execute(
        User.__table__.update().where(User.__table__.c.id == lost).values(phone=type_coerce(foreign, Text))
    )
    db.session.commit()
    with app_with(app_settings, KEY_B, KEY_A) as rotating:
        # when
        result = reencrypt(rotating, "--batch-size", "1")
        # then: reported by table and id, the run went on, the value is untouched
        assert result.exit_code == 1
        assert f"unreadable: users id {lost} (phone)" in result.output
        assert "users.phone: 1 re-encrypted, 0 already under the current key, 1 unreadable" in result.output
        assert "group_webhooks.key: 1 re-encrypted" in result.output
        assert raw(User.__table__, "phone", lost) == foreign
        # and: reading it fails as before (never an empty value)
        with pytest.raises(ValueError, match="cannot be read with the configured key"):
            db.session.get(User, lost).phone  # noqa: B018
        db.session.rollback()
    with app_with(app_settings, KEY_B):
        assert read_everything(stored) == EVERYTHING


def test_each_batch_is_its_own_transaction_and_an_interrupted_run_is_finished_by_the_next(
    app_settings, stored, make_user, monkeypatch
):
    import web.keys_cli as keys_cli
    from models.base import transaction_open

    # given: more people than one batch
    more = [make_user() for _ in range(4)]
    for n, user in enumerate(more):
        user.real_name = f"name-{n}"
    db.session.commit()
    more = [u.id for u in more]
    batch, seen = keys_cli._batch, []

    def watched(place, after, size, keys):
        assert not transaction_open(), "a transaction was held across batches"
        seen.append(place.name)
        if len(seen) == 3:
            raise KeyboardInterrupt  # the operator's Ctrl-C between two batches
        return batch(place, after, size, keys)

    with app_with(app_settings, KEY_B, KEY_A) as rotating:
        monkeypatch.setattr(keys_cli, "_batch", watched)
        # when: interrupted after two batches of two people
        with pytest.raises(KeyboardInterrupt):
            keys_cli.reencrypt(size=2)
        assert not transaction_open()
        monkeypatch.setattr(keys_cli, "_batch", batch)
        # then: the second run finishes it, counting the two done already as current
        result = reencrypt(rotating, "--batch-size", "2")
        assert result.exit_code == 0, result.output
        assert "users.real_name: 1 re-encrypted, 4 already under the current key, 0 unreadable" in result.output
    with app_with(app_settings, KEY_B):
        assert read_everything(stored) == EVERYTHING
        assert [db.session.get(User, u).real_name for u in more] == [f"name-{n}" for n in range(4)]


def test_a_value_the_app_rewrote_meanwhile_is_not_overwritten(app_settings, stored, monkeypatch):
    import web.keys_cli as keys_cli

    rotated_value = keys_cli._rotated_value

    def app_writes_first(place, stored_value, keys):
        new = rotated_value(place, stored_value, keys)
        if place.name == "users.phone":  # a request saves a new phone between the read and the write
            user = db.session.get(User, stored["user"])
            user.phone = "13911111111"
            db.session.flush()
        return new

    with app_with(app_settings, KEY_B, KEY_A) as rotating:
        monkeypatch.setattr(keys_cli, "_rotated_value", app_writes_first)
        result = reencrypt(rotating)
        assert result.exit_code == 0, result.output
        assert "users.phone: 0 re-encrypted, 0 already under the current key, 1 changed meanwhile" in result.output
        assert "run it again" in result.output
        db.session.expire_all()
        assert db.session.get(User, stored["user"]).phone == "13911111111"


def test_every_place_that_encrypts_with_the_app_key_is_one_the_command_walks(app):
    """A new ``fernet().encrypt`` outside a column of ``EncryptedText`` needs its place in ``web.keys_cli``."""
    from web.keys_cli import places

    encrypting = {
        str(path.relative_to(ROOT))
        for folder in ("models", "web", "payouts", "jobs", "rebate", "risk", "notices", "ledger", "challenges")
        for path in (ROOT / folder).rglob("*.py")
        if re.search(r"fernet\(\)\s*\.\s*encrypt\(", path.read_text(encoding="utf-8"))
    }
    assert encrypting == {"models/base.py", "payouts/transfer_rail.py", "web/idempotency.py"}
    names = {p.name for p in places()}
    assert {"users.real_name", "users.phone", "user_identities.session_key", "group_webhooks.key"} <= names
    assert {"payouts.request", "idempotency_records.response_body"} <= names
