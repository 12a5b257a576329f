"""identity hardening

Revision ID: a1d3e5c7b901
Revises: 69a023c44d7c
Create Date: 2026-12-07 02:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maestro.db

revision: str = "a1d3e5c7b901"
down_revision: str | None = "69a023c44d7c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
