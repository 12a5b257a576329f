"""deployment secrets

Revision ID: c3f5a7b9d123
Revises: b2e4f6a8c012
Create Date: 2026-12-07 02:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maestro.db

revision: str = "c3f5a7b9d123"
down_revision: str | None = "b2e4f6a8c012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
