"""One resolver of an openid WeChat pushes about to a person (``models.messages.person_of_openid``)."""

from __future__ import annotations

from models import OaFollower, UserIdentity, db, utcnow
from models.messages import following_openid, person_of_openid

OA = "wx-oa-app"


def follower(openid: str, unionid: str | None = None, user_id: int | None = None) -> None:
    db.session.add(
        OaFollower(appid=OA, openid=openid, unionid=unionid, user_id=user_id, following=True, changed_at=utcnow())
    )
    db.session.commit()


def test_an_openid_is_the_person_who_signed_in_with_it_under_that_app(make_user):
    # given: a person signed in to the mini-program with an openid
    alice = make_user()
    openid = db.session.query(UserIdentity).filter_by(user_id=alice.id).one().openid

    # then: under that app, or any, it is theirs; under another app it is nobody's
    assert person_of_openid(openid, "wx-test-app") == alice.id
    assert person_of_openid(openid) == alice.id
    assert person_of_openid(openid, OA) is None


def test_a_follower_is_their_linked_person_else_the_person_with_their_unionid(make_user):
    # given: a follower linked to Bob, and one who followed before Carol signed in (same unionid, not linked)
    bob, carol = make_user(), make_user(unionid="union-carol")
    follower("oa-bob", user_id=bob.id)
    follower("oa-carol", unionid="union-carol")

    # then: each resolves to their person, and is the inverse of the person's following openid
    assert person_of_openid("oa-bob", OA) == bob.id
    assert person_of_openid("oa-carol", OA) == carol.id
    assert following_openid(carol.id, OA) == "oa-carol"
    assert following_openid(bob.id, OA) == "oa-bob"


def test_an_unknown_or_empty_openid_is_nobody(make_user):
    make_user()
    follower("oa-stranger", unionid="union-nobody-signed-in-with")
    assert person_of_openid("oa-stranger", OA) is None
    assert person_of_openid("never-seen", OA) is None
    assert person_of_openid("", OA) is None
