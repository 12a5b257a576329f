"""model isolation

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
    pass


def downgrade() -> None:
    pass
