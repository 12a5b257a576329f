"""Alembic migrations, one linear history, run with ``maestro db upgrade`` (and
automatically by ``maestro serve`` on the embedded database)."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config

from maestro.db import MODEL_MODULES, ensure_sqlite_directory, import_models, sqlite_file

__all__ = ["MODEL_MODULES", "alembic_config", "current_revision", "import_models", "upgrade"]

MIGRATIONS_DIR = Path(__file__).parent


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option(
        "file_template", "%%(year)d-%%(month).2d-%%(day).2d-%%(hour).2d%%(minute).2d_%%(slug)s"
    )
    # Passed as an attribute, not an ini option: URLs may contain '%'.
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    ensure_sqlite_directory(database_url)
    command.upgrade(alembic_config(database_url), revision)


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
