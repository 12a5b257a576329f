from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from maestro.db import Base
from maestro.migrations import (
    MIGRATIONS_DIR,
    alembic_config,
    current_revision,
    head_revision,
    upgrade,
    upgrade_if_behind,
)


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


def test_the_head_is_read_from_the_files_as_alembic_reads_it() -> None:
    assert head_revision() == ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _upgrade_if_behind_in_a_fresh_process(database_url: str) -> tuple[str, str]:
    """(whether it migrated, whether alembic was loaded), from a new interpreter."""
    statement = (
        "import sys; from maestro.migrations import upgrade_if_behind; "
        f"migrated = upgrade_if_behind({database_url!r}); "
        "print(migrated, 'alembic' in sys.modules)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", statement], capture_output=True, text=True, check=True, timeout=120
    )
    migrated, loaded = completed.stdout.split()
    return migrated, loaded


def test_an_up_to_date_database_is_started_without_loading_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'maestro.db'}"
    assert _upgrade_if_behind_in_a_fresh_process(url) == ("True", "True")  # a new database
    assert current_revision(url) == head_revision()
    assert _upgrade_if_behind_in_a_fresh_process(url) == ("False", "False")


def test_a_database_behind_the_head_is_migrated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'maestro.db'}"
    script = ScriptDirectory.from_config(alembic_config(url))
    previous = script.get_revision(script.get_current_head()).down_revision
    upgrade(url, previous)
    assert upgrade_if_behind(url) is True
    assert current_revision(url) == head_revision()
