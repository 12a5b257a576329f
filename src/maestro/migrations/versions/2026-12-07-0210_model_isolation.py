"""model isolation

Every model version keeps the result of its load check: the file loaded, warmed up and
tried in an isolated process, with what it cost in memory (``serving.isolation``).
Versions uploaded before have no result and are checked when they are next loaded.

Revision ID: b2e4f6a8c012
Revises: a1d3e5c7b901
Create Date: 2026-12-07 02:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maestro.db

revision: str = "b2e4f6a8c012"
down_revision: str | None = "a1d3e5c7b901"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("load_check", maestro.db.JSONType, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("load_check")
