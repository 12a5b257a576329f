"""request cost

Revision ID: e5b7c9d1f345
Revises: d4a6b8c0e234
Create Date: 2026-12-07 02:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maestro.db

revision: str = "e5b7c9d1f345"
down_revision: str | None = "d4a6b8c0e234"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
