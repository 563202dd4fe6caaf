"""``notices.enqueue``: one notice per event key, written in the caller's transaction."""

import pytest

from models import Notice, db
from notices import Draft, NoticeError, NoticeEvent, enqueue, enqueue_many


def test_a_notice_is_written_once_per_key(app, make_user):
    user = make_user()
    facts = {"packet_id": 1, "amount_fen": 500, "issuer": "Noodle House", "expires_at": "2026-12-01T00:00:00Z"}
    assert enqueue(user.id, NoticeEvent.PACKET_RECEIVED, "packet:1:received", facts) is True
    assert enqueue(user.id, NoticeEvent.PACKET_RECEIVED, "packet:1:received", facts) is False
    db.session.commit()
    rows = db.session.query(Notice).all()
    assert [(n.user_id, n.event, n.status, n.facts["amount_fen"]) for n in rows] == [
        (user.id, "packet_received", "pending", 500)
    ]


def test_many_in_one_call_skip_the_keys_already_written(app, make_user):
    user = make_user()
    landed = {"amount_fen": 100, "form": "balance"}
    enqueue(user.id, NoticeEvent.REBATE_LANDED, "rebate:1:landed", landed)
    written = enqueue_many([Draft(user.id, NoticeEvent.REBATE_LANDED, f"rebate:{i}:landed", landed) for i in (1, 2, 3)])
    assert written == 2
    db.session.commit()
    assert db.session.query(Notice).count() == 3


def test_a_notice_missing_a_fact_or_with_a_bad_key_is_refused_and_writes_nothing(app, make_user):
    user = make_user()
    with pytest.raises(NoticeError, match="amount_fen"):
        enqueue(user.id, NoticeEvent.REBATE_LANDED, "rebate:9:landed", {"form": "balance"})
    with pytest.raises(NoticeError, match="key"):
        enqueue(user.id, NoticeEvent.REBATE_LANDED, "x" * 161, {"form": "balance", "amount_fen": 1})
    with pytest.raises(ValueError):
        enqueue(user.id, "no_such_event", "k", {})
    db.session.rollback()
    assert db.session.query(Notice).count() == 0
