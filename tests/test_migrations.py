from __future__ import annotations

import re

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from maestro.db import Base
from maestro.migrations import MIGRATIONS_DIR, alembic_config, current_revision


def test_history_is_linear_and_named_by_date() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-\d{4}_[a-z0-9_]+\.py", path.name), path.name


def test_database_is_at_head(database_url: str) -> None:
    script = ScriptDirectory.from_config(alembic_config(database_url))
    assert current_revision(database_url) == script.get_current_head()


def test_migrations_match_the_models(database_url: str) -> None:
    """A model change without its migration fails here, on SQLite and PostgreSQL."""
    engine = create_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
        tables = set(inspect(connection).get_table_names())
    engine.dispose()
    assert differences == []
    assert set(Base.metadata.tables) <= tables
