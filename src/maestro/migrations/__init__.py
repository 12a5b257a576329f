"""Alembic migrations, one linear history, run with ``maestro db upgrade`` (and
automatically by ``maestro serve`` on the embedded database). Alembic is imported only
when there is something to migrate: a start on an up-to-date database reads one row."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from maestro.db import MODEL_MODULES, ensure_sqlite_directory, import_models, sqlite_file

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "MODEL_MODULES",
    "alembic_config",
    "current_revision",
    "head_revision",
    "import_models",
    "upgrade",
    "upgrade_if_behind",
]

MIGRATIONS_DIR = Path(__file__).parent
_REVISION_LINE = re.compile(r'^(revision|down_revision): [^=]+= (?:"([0-9a-f]+)"|None)$', re.MULTILINE)


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option(
        "file_template", "%%(year)d-%%(month).2d-%%(day).2d-%%(hour).2d%%(minute).2d_%%(slug)s"
    )
    # Passed as an attribute, not an ini option: URLs may contain '%'.
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    from alembic import command

    ensure_sqlite_directory(database_url)
    command.upgrade(alembic_config(database_url), revision)


def head_revision() -> str | None:
    """The newest revision, read from the migration files' ``revision`` and
    ``down_revision`` lines without loading alembic; None unless the history has
    exactly one head (alembic then decides, and says what is wrong)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        for name, value in _REVISION_LINE.findall(path.read_text(encoding="utf-8")):
            if value:
                (revisions if name == "revision" else parents).add(value)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _stored_revision(database_url: str) -> str | None:
    """The revision recorded in ``alembic_version``, or None where there is none yet
    (no database file, no table) or it cannot be read."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    path = sqlite_file(database_url)
    if path is not None and not os.path.exists(path):
        return None
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()


def upgrade_if_behind(database_url: str) -> bool:
    """Migrate to head unless the database is there already; whether it migrated."""
    head = head_revision()
    if head is not None and _stored_revision(database_url) == head:
        return False
    upgrade(database_url)
    return True


def current_revision(database_url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    path = sqlite_file(database_url)
    if path is not None and not os.path.exists(path):
        return None  # a question about a database never creates one
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
