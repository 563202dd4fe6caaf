"""The migrations build exactly the schema the models describe, up and down, on the test's database."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from app import create_app
from models import db
from tests.conftest import TEST_SETTINGS, on_postgres


def _diff() -> list:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, db.metadata)


def test_migrations_match_the_models_and_go_down_and_up_again(tmp_path, pg_schema):
    from flask_migrate import downgrade, upgrade

    url = pg_schema if on_postgres() else f"sqlite:///{tmp_path / 'migrated.db'}"
    app = create_app({**TEST_SETTINGS, "DATABASE_URL": url})
    with app.app_context():
        if not on_postgres():  # PostgreSQL's schema was already built by running the migrations
            upgrade()
        assert _diff() == []
        if not on_postgres():
            downgrade(revision="base")
            upgrade()
            assert _diff() == []
        db.session.remove()
        db.engine.dispose()


def test_username_keys_of_existing_operators_never_fail_the_upgrade(tmp_path):
    """0030 keys the operators already there; a name that already collides keeps its operator, keyed apart,
    and from then on the database refuses a new one whatever the app's check saw."""
    from flask_migrate import upgrade
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    app = create_app({**TEST_SETTINGS, "DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}"})
    with app.app_context():
        upgrade(revision="0029_manual_payout_index")
        with db.engine.begin() as conn:
            for name in ("Bob", "bob", "ＢＯＢ", "alice"):  # made before the app checked case
                conn.execute(
                    text(
                        "INSERT INTO operators (username, display_name, role, active, created_at) "
                        "VALUES (:n, 'x', 'support', 1, '2026-12-01 00:00:00')"
                    ),
                    {"n": name},
                )
        upgrade()
        with db.engine.begin() as conn:
            keys = dict(conn.execute(text("SELECT username, username_key FROM operators")).all())
        assert keys == {"Bob": "bob", "bob": "bob#2", "ＢＯＢ": "bob#3", "alice": "alice"}
        from models import Operator

        db.session.add(Operator(username="BOB", display_name="x", role="support"))
        try:
            db.session.flush()
            raise AssertionError("a fourth Bob was stored")
        except IntegrityError:
            db.session.rollback()
        db.session.remove()
        db.engine.dispose()


def test_every_revision_id_fits_alembic_version():
    """``alembic_version.version_num`` is VARCHAR(32): PostgreSQL refuses a longer id, SQLite would not tell."""
    from alembic.script import ScriptDirectory

    from app import MIGRATIONS_DIR

    script = ScriptDirectory(MIGRATIONS_DIR)
    too_long = [rev.revision for rev in script.walk_revisions() if len(rev.revision) > 32]
    assert too_long == []
