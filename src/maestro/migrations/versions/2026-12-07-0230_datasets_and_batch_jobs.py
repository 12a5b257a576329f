"""datasets and batch jobs

Revision ID: d4a6b8c0e234
Revises: c3f5a7b9d123
Create Date: 2026-12-07 02:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maestro.db

revision: str = "d4a6b8c0e234"
down_revision: str | None = "c3f5a7b9d123"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
