"""user_identities: one identity per person and app, unique (user_id, appid).

WeChat gives a person one openid per appid. Sign-in never made a second one on purpose, but an answer naming another
openid of the same app with a person's unionid (WeChat never sends one; a wrong answer, a replayed or mocked one,
would) was attached to that person as a second identity there, and which openid a payment, a payout or a notice then
used was whichever row the database read first. Sign-in now refuses that answer (409 ``identity_conflict``), and this
constraint holds it against any other writer too.

Rows that already break it STOP the upgrade (a RuntimeError naming each person, app and identity ids): nothing is
deduplicated here, because which of two openids is the person's real one cannot be decided by a migration (the one
their payments, payouts and subscriptions were made with, which the other tables keep as text, not as a reference to
a row here): deleting the wrong one would send their money or messages to an openid that is not theirs. Resolve each
by hand (look the openids up in ``orders``/``payouts``, delete the identity that is not theirs) and run it again;
find them with::

    SELECT user_id, appid, count(*) FROM user_identities GROUP BY user_id, appid HAVING count(*) > 1;

The check takes no lock (sign-in refuses a second identity already, so none should appear meanwhile; one that did
would fail the constraint's build, and the upgrade with it, changing nothing). Building the unique index holds the
table's lock for the build (one row per person and app: seconds on millions), as the other index migrations do; on
PostgreSQL the upgrade waits at most ``LOCK_TIMEOUT`` for that lock rather than queueing every sign-in and payout
lookup behind a long transaction: it fails then, changing nothing, and is run again at a quieter time.

Revision ID: 0047_identity_user_appid
Revises: 0046_order_ip_net
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0047_identity_user_appid"
down_revision = "0046_order_ip_net"
branch_labels = None
depends_on = None

SHOWN = 20  # duplicates named in the error; the query in this file's docstring finds every one
LOCK_TIMEOUT = "10s"  # PostgreSQL: the longest wait for the table's lock before the build (then: fail, run again)


def upgrade():
    bind = op.get_bind()
    twice = bind.execute(
        sa.text(
            "SELECT user_id, appid, min(id), max(id), count(*) FROM user_identities "
            "GROUP BY user_id, appid HAVING count(*) > 1 ORDER BY user_id, appid"
        )
    ).all()
    if twice:
        named = "; ".join(
            f"user {uid} under appid {appid} (identities {first}, {last}{', …' if n > 2 else ''})"
            for uid, appid, first, last, n in twice[:SHOWN]
        )
        more = f" and {len(twice) - SHOWN} more" if len(twice) > SHOWN else ""
        raise RuntimeError(
            f"0047: {len(twice)} person(s) have two or more identities under one appid: {named}{more}. Nothing was "
            "changed. Keep the identity whose openid the person's payments and payouts use, delete the others, "
            "and upgrade again (see migrations/versions/0047_identity_user_appid.py)."
        )
    if bind.dialect.name == "postgresql":
        op.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    with op.batch_alter_table("user_identities") as batch:
        batch.create_unique_constraint(batch.f("uq_user_identities_user_id_appid"), ["user_id", "appid"])


def downgrade():
    with op.batch_alter_table("user_identities") as batch:
        batch.drop_constraint(batch.f("uq_user_identities_user_id_appid"), type_="unique")
