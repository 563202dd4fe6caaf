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
